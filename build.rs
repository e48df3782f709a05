//! Compiles the libext2fs shim of `src/image/ext4/mod.rs` and links libext2fs (found through pkg-config).

fn main() {
    println!("cargo:rerun-if-changed=src/image/ext4/shim.c");
    // 1.46 is where ext2fs_link learnt to add entries to hash-indexed directories.
    let probe = |name: &str, version: &str| match pkg_config::Config::new()
        .atleast_version(version)
        .probe(name)
    {
        Ok(lib) => lib,
        // Panicking is how a build script reports failure; say what to install.
        Err(e) => panic!(
            "{name} not found ({e}); install it, e.g. `apt-get install libext2fs-dev pkg-config`"
        ),
    };
    let ext2fs = probe("ext2fs", "1.46");
    // The shim calls com_err's error_message() directly, so link it explicitly.
    probe("com_err", "1.42");
    cc::Build::new()
        .file("src/image/ext4/shim.c")
        .includes(&ext2fs.include_paths)
        .warnings(true)
        .extra_warnings(true)
        .compile("pi_ext4_shim");
}
