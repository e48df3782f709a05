//! Loading overlay trees: defaults, manifests, and everything that must be refused.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use pi_image::build::overlay::{self, OverlayAttrs, OverlayError, OverlayKind};
use pi_image::image::ext4::{self, Need};

fn write(root: &Path, rel: &str, body: &str, mode: u32) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, body).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A small rootfs overlay like k8s-prep, plus an executable and links.
fn sample() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    write(
        &root,
        "etc/modules-load.d/k8s.conf",
        "overlay\nbr_netfilter\n",
        0o600,
    );
    write(
        &root,
        "etc/sudoers.d/k8s",
        "ubuntu ALL=(ALL) NOPASSWD:ALL\n",
        0o644,
    );
    write(&root, "etc-b/x", "", 0o644);
    write(&root, "usr/local/bin/k8s-setup", "#!/bin/sh\n", 0o700);
    fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
    symlink("/dev/null", root.join("etc/systemd/system/swap.target")).unwrap();
    symlink(
        "../../usr/local/bin/k8s-setup",
        root.join("etc/systemd/setup"),
    )
    .unwrap();
    dir
}

fn refused(result: Result<Vec<overlay::OverlayEntry>, OverlayError>, names: &[&str]) {
    let err = result.expect_err("loaded an overlay that must be refused");
    let msg = err.to_string();
    for n in names {
        assert!(msg.contains(n), "'{msg}' does not mention {n}");
    }
}

#[test]
fn overlay_defaults_and_order() {
    let dir = sample();
    let entries = overlay::load(&dir.path().join("rootfs"), None).unwrap();
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "etc",
            "etc/modules-load.d",
            "etc/modules-load.d/k8s.conf",
            "etc/sudoers.d",
            "etc/sudoers.d/k8s",
            "etc/systemd",
            "etc/systemd/setup",
            "etc/systemd/system",
            "etc/systemd/system/swap.target",
            "etc-b",
            "etc-b/x",
            "usr",
            "usr/local",
            "usr/local/bin",
            "usr/local/bin/k8s-setup",
        ]
    );
    let get = |p: &str| entries.iter().find(|e| e.path == p).unwrap();
    let root = |mode| OverlayAttrs {
        mode,
        uid: 0,
        gid: 0,
    };
    assert_eq!(get("etc").attrs, root(0o755));
    assert_eq!(get("etc/modules-load.d/k8s.conf").attrs, root(0o644));
    assert_eq!(get("usr/local/bin/k8s-setup").attrs, root(0o755));
    assert_eq!(
        get("etc/modules-load.d/k8s.conf").kind,
        OverlayKind::File {
            source: dir.path().join("rootfs/etc/modules-load.d/k8s.conf"),
            size: 21
        }
    );
    assert_eq!(
        get("etc/systemd/system/swap.target").kind,
        OverlayKind::Symlink {
            target: "/dev/null".into()
        }
    );
    assert_eq!(
        get("etc/systemd/setup").kind,
        OverlayKind::Symlink {
            target: "../../usr/local/bin/k8s-setup".into()
        }
    );

    let expected: u64 = entries
        .iter()
        .map(|e| match &e.kind {
            OverlayKind::Dir => ext4::bytes_needed(Need::Dir, 4096),
            OverlayKind::File { size, .. } => ext4::bytes_needed(Need::File(*size), 4096),
            OverlayKind::Symlink { target } => {
                ext4::bytes_needed(Need::Symlink(target.len()), 4096)
            }
        })
        .sum();
    assert_eq!(overlay::total_bytes(&entries), expected);
    assert_eq!(get("etc").attrs.with_mtime(7).mtime, 7);
}

#[test]
fn overlay_manifest_sets_modes_and_owners() {
    let dir = sample();
    let manifest = dir.path().join("rootfs.toml");
    fs::write(
        &manifest,
        "[\"etc/sudoers.d/k8s\"]\nmode = \"0440\"\nowner = \"root:root\"\n\n\
         [\"usr/local/bin/k8s-setup\"]\nmode = \"4750\"\nowner = \"0:27\"\n\n\
         [\"etc/sudoers.d\"]\nmode = \"0750\"\n\n\
         [\"etc/systemd/setup\"]\nowner = \"1000:1000\"\n",
    )
    .unwrap();
    let entries = overlay::load(&dir.path().join("rootfs"), Some(&manifest)).unwrap();
    let get = |p: &str| entries.iter().find(|e| e.path == p).unwrap().attrs;
    assert_eq!(
        get("etc/sudoers.d/k8s"),
        OverlayAttrs {
            mode: 0o440,
            uid: 0,
            gid: 0
        }
    );
    assert_eq!(
        get("usr/local/bin/k8s-setup"),
        OverlayAttrs {
            mode: 0o4750,
            uid: 0,
            gid: 27
        }
    );
    assert_eq!(
        get("etc/sudoers.d"),
        OverlayAttrs {
            mode: 0o750,
            uid: 0,
            gid: 0
        }
    );
    assert_eq!(
        get("etc/systemd/setup"),
        OverlayAttrs {
            mode: 0o777,
            uid: 1000,
            gid: 1000
        }
    );
    assert_eq!(
        get("etc/modules-load.d/k8s.conf"),
        OverlayAttrs {
            mode: 0o644,
            uid: 0,
            gid: 0
        }
    );
}

#[test]
fn overlay_manifest_errors_name_file_and_key() {
    let dir = sample();
    let root = dir.path().join("rootfs");
    let manifest = dir.path().join("rootfs.toml");
    let cases: &[(&str, &[&str])] = &[
        (
            "[\"etc/sudoers.d/k8s\"]\nmode = \"0440\"\ngroup = \"root\"\n",
            &["etc/sudoers.d/k8s", "unknown field `group`"],
        ),
        (
            "[\"etc/nosuch\"]\nmode = \"0440\"\n",
            &["etc/nosuch", "matches no file"],
        ),
        (
            "[\"/etc/sudoers.d/k8s\"]\nmode = \"0440\"\n",
            &["/etc/sudoers.d/k8s", "matches no file"],
        ),
        (
            "[\"etc/../etc/sudoers.d/k8s\"]\nmode = \"0440\"\n",
            &["etc/../etc/sudoers.d/k8s", "matches no file"],
        ),
        (
            "[\"etc/sudoers.d/k8s\"]\nmode = \"0948\"\n",
            &["etc/sudoers.d/k8s", "0948"],
        ),
        (
            "[\"etc/sudoers.d/k8s\"]\nmode = 440\n",
            &["etc/sudoers.d/k8s", "mode must be a string"],
        ),
        (
            "[\"etc/sudoers.d/k8s\"]\nowner = \"ubuntu:ubuntu\"\n",
            &["etc/sudoers.d/k8s", "ubuntu:ubuntu"],
        ),
        (
            "[\"etc/systemd/system/swap.target\"]\nmode = \"0644\"\n",
            &["swap.target", "symlink"],
        ),
        (
            "\"etc/sudoers.d/k8s\" = \"0440\"\n",
            &["etc/sudoers.d/k8s", "expected a table"],
        ),
        ("[\"etc/sudoers.d/k8s\"\nmode = 1\n", &["line 1"]),
    ];
    for (text, names) in cases {
        fs::write(&manifest, text).unwrap();
        let mut all = vec!["rootfs.toml"];
        all.extend_from_slice(names);
        refused(overlay::load(&root, Some(&manifest)), &all);
    }
    refused(
        overlay::load(&root, Some(&dir.path().join("missing.toml"))),
        &["missing.toml"],
    );
}

#[test]
fn overlay_refusals_name_the_path() {
    // A relative symlink climbing out of the tree.
    let dir = sample();
    let root = dir.path().join("rootfs");
    symlink("../../../etc/shadow", root.join("etc/systemd/escape")).unwrap();
    refused(
        overlay::load(&root, None),
        &["etc/systemd/escape", "outside the overlay"],
    );

    let dir = sample();
    let root = dir.path().join("rootfs");
    symlink("..", root.join("up")).unwrap();
    refused(
        overlay::load(&root, None),
        &["rootfs/up", "outside the overlay"],
    );

    // A FIFO and a socket.
    let dir = sample();
    let root = dir.path().join("rootfs");
    let st = std::process::Command::new("mkfifo")
        .arg(root.join("etc/pipe"))
        .status()
        .unwrap();
    assert!(st.success());
    refused(overlay::load(&root, None), &["etc/pipe", "FIFO"]);

    let dir = sample();
    let root = dir.path().join("rootfs");
    let _listener = std::os::unix::net::UnixListener::bind(root.join("etc/sock")).unwrap();
    refused(overlay::load(&root, None), &["etc/sock", "socket"]);

    // A name that is not UTF-8.
    let dir = sample();
    let root = dir.path().join("rootfs");
    let name: &std::ffi::OsStr = std::os::unix::ffi::OsStrExt::from_bytes(b"caf\xe9.conf");
    fs::write(root.join("etc").join(name), "").unwrap();
    refused(overlay::load(&root, None), &["rootfs/etc/caf", "UTF-8"]);

    // Not there / not a directory.
    refused(overlay::load(&dir.path().join("nosuch"), None), &["nosuch"]);
    refused(
        overlay::load(&root.join("etc/sudoers.d/k8s"), None),
        &["k8s", "not a directory"],
    );
}

#[test]
fn overlay_bundled_k8s_prep_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("overlays/k8s-prep/rootfs");
    let entries = overlay::load(&root, None).unwrap();
    let swap = entries
        .iter()
        .find(|e| e.path == "etc/systemd/system/swap.target")
        .unwrap();
    assert_eq!(
        swap.kind,
        OverlayKind::Symlink {
            target: "/dev/null".into()
        }
    );
    assert!(overlay::total_bytes(&entries) > 0);
}
