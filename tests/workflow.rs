//! The user's two commands as written, `pi-image build --node pi3` then `pi-image flash DEVICE`,
//! and `pi-image flash DEVICE --node pi3` rebuilding `out/pi3.img` exactly when one of its inputs
//! changed. Each test works in a copy of the repository's profiles/ and overlays/, so the
//! default `--profile` and `--out` are used as a user would. Judged by cmp, sha256sum and
//! python3's json.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixture_raw, fixture_xz, garbage_file, repo, run, run_ok, s, sha256};

/// A directory with copies of profiles/ and overlays/, where pi-image runs.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["profiles", "overlays"] {
        run_ok(
            Command::new("cp")
                .arg("-r")
                .arg(repo().join(sub))
                .arg(dir.path()),
        );
    }
    dir
}

/// Run pi-image in `cwd` with `stdin` as its input.
fn pi_image_in(cwd: &Path, args: &[&str], stdin: &str) -> Output {
    common::run_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_pi-image"))
            .args(args)
            .current_dir(cwd)
            .env_remove("SOURCE_DATE_EPOCH"),
        stdin.as_bytes(),
    )
}

fn ok(cwd: &Path, args: &[&str]) -> Output {
    let out = pi_image_in(cwd, args, "");
    assert!(
        out.status.success(),
        "pi-image {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A loop device over `file`, detached on drop; `None` (after saying why) where losetup cannot.
struct Loop(PathBuf);

impl Loop {
    fn attach(file: &Path) -> Option<Loop> {
        match Command::new("losetup")
            .args(["-f", "--show", s(file)])
            .output()
        {
            Ok(o) if o.status.success() => Some(Loop(PathBuf::from(
                String::from_utf8_lossy(&o.stdout).trim(),
            ))),
            Ok(o) => {
                eprintln!(
                    "SKIPPED (loop device): losetup cannot attach here: {}; writing to a file with --to-file instead",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!(
                    "SKIPPED (loop device): no losetup ({e}); writing to a file with --to-file instead"
                );
                None
            }
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn build_node_then_flash_device_writes_that_image() {
    let ws = workspace();
    let dir = ws.path();
    let base = fixture_xz();
    ok(dir, &["build", "--node", "pi3", "--base", s(&base)]);
    let image = dir.join("out/pi3.img");
    let size = fs::metadata(&image).unwrap().len();
    // A zeroed disk: flash writes what matters, the rest already reads as the image's zeros.
    let disk = dir.join("disk");
    fs::File::create(&disk)
        .unwrap()
        .set_len(size + (8 << 20))
        .unwrap();
    let attached = Loop::attach(&disk);
    let device = match &attached {
        Some(l) => {
            // The exact second command, answered at its prompt.
            let out = pi_image_in(dir, &["flash", s(&l.0)], "yes\n");
            let err = stderr(&out);
            assert!(out.status.success(), "{err}");
            // The one-screen prompt names the node, the image and its sha256, and the device.
            for want in [
                "node    pi3: pi3.cluster.lan, 192.168.1.13/24, boots from a USB SSD".to_string(),
                format!("image   out/pi3.img ({}", common_human(size)),
                format!("sha256  {}", sha256(&image)),
                format!("device  {}: ", l.0.display()),
                ", loop".to_string(),
                "Type 'yes' to continue".to_string(),
            ] {
                assert!(err.contains(&want), "prompt lacks {want:?}:\n{err}");
            }
            l.0.clone()
        }
        None => {
            ok(dir, &["flash", s(&disk), "--to-file"]);
            disk.clone()
        }
    };
    let n = size.to_string();
    let (same, o, e) = run("cmp", &["-n", &n, s(&image), s(&device)]);
    assert!(same, "cmp {} {}: {o}{e}", image.display(), device.display());
}

/// `devices::human` as the prompt prints sizes (GiB from 1 GiB up, else MiB).
fn common_human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// (inode, mtime in ns) of a file: changes when it is rebuilt (written and renamed into place).
fn identity(p: &Path) -> (u64, i64) {
    let m = fs::metadata(p).unwrap();
    (m.ino(), m.mtime() * 1_000_000_000 + m.mtime_nsec())
}

#[test]
fn flash_node_rebuilds_exactly_when_an_input_changed() {
    let ws = workspace();
    let dir = ws.path();
    let base = dir.join("base.img.xz");
    fs::copy(fixture_xz(), &base).unwrap();
    let card = dir.join("card.img");
    let image = dir.join("out/pi3.img");
    // Flash pi3 to the card file; returns pi-image's stderr. The card must then equal out/pi3.img.
    let flash = |extra: &[&str]| -> String {
        let mut args = vec!["flash", s(&card), "--node", "pi3", "--to-file"];
        args.extend_from_slice(extra);
        if !extra.contains(&"--base") {
            args.extend(["--base", s(&base)]);
        }
        let err = stderr(&ok(dir, &args));
        run_ok(Command::new("cmp").arg(&image).arg(&card));
        err
    };
    let built = |err: &str, why: &str| {
        assert!(
            err.contains("pi-image: building pi3 first: ") && err.contains(why),
            "expected a rebuild because {why:?}:\n{err}"
        );
    };
    let not_built = |err: &str, before: (u64, i64)| {
        assert!(!err.contains("building"), "rebuilt needlessly:\n{err}");
        assert_eq!(identity(&image), before, "out/pi3.img was rewritten");
    };

    built(&flash(&[]), "out/pi3.img has not been built");
    // Nothing changed: written again from the same out/pi3.img.
    let first = identity(&image);
    not_built(&flash(&[]), first);
    // A newer mtime on the base alone is no change (its hash is taken again and agrees), and
    // the new stamp is recorded so the next run need not hash it again.
    run_ok(Command::new("touch").arg(&base));
    not_built(&flash(&[]), first);
    let record = fs::read(dir.join("out/.pi-image/build.json")).unwrap();
    let stamp = python_eval(
        &record,
        "d['images']['pi3']['base_file']['stamp']['mtime_ns'] == \
         __import__('os').stat(sys.argv[1]).st_mtime_ns",
        &[s(&base)],
    );
    assert_eq!(stamp, "True", "the base's new stamp was not recorded");

    // The profile: pi3's address.
    let profile = dir.join("profiles/cluster.toml");
    let text = fs::read_to_string(&profile).unwrap();
    fs::write(&profile, text.replace("192.168.1.13/24", "192.168.1.23/24")).unwrap();
    built(&flash(&[]), "profile changed since out/pi3.img was built");
    let inspect = ok(dir, &["inspect", "out/pi3.img", "--json"]);
    let config = python_eval(&inspect.stdout, "d['files']['network-config']", &[]);
    assert!(config.contains("192.168.1.23/24"), "{config}");
    let second = identity(&image);
    not_built(&flash(&[]), second);

    // An SSH key file the profile names (the profile's text is unchanged).
    let key = dir.join("profiles/keys/demo.pub");
    let k = fs::read_to_string(&key).unwrap();
    fs::write(&key, k.replace("demo@pi-image", "other@pi-image")).unwrap();
    built(&flash(&[]), "SSH keys changed");

    // A file of an overlay.
    let conf = dir.join("overlays/k8s-prep/rootfs/etc/modules-load.d/k8s.conf");
    let c = fs::read_to_string(&conf).unwrap();
    fs::write(&conf, format!("{c}nf_conntrack\n")).unwrap();
    built(&flash(&[]), "overlays changed");

    // Another base (the same image, uncompressed: other bytes, same result).
    let raw = fixture_raw();
    built(&flash(&["--base", s(&raw)]), "base image changed");
    let third = identity(&image);
    not_built(&flash(&["--base", s(&raw)]), third);

    // The image itself, edited after it was built (its record no longer holds).
    let mut bytes = fs::read(&image).unwrap();
    bytes[4096] ^= 0xff;
    fs::write(&image, &bytes).unwrap();
    drop(bytes);
    built(
        &flash(&["--base", s(&raw)]),
        "out/pi3.img was modified after it was built",
    );

    // SOURCE_DATE_EPOCH.
    let out = Command::new(env!("CARGO_BIN_EXE_pi-image"))
        .args([
            "flash",
            s(&card),
            "--node",
            "pi3",
            "--to-file",
            "--base",
            s(&raw),
        ])
        .current_dir(dir)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    built(&stderr(&out), "SOURCE_DATE_EPOCH changed");

    // The record agrees with independent tools: python3 reads it, sha256sum hashes the files.
    let record = fs::read(dir.join("out/.pi-image/build.json")).unwrap();
    let check = python_eval(
        &record,
        "(d['images']['pi3']['written']['sha256'], d['images']['pi3']['inputs']['base_sha256'], \
         d['images']['pi3']['inputs']['profile_sha256'], d['images']['pi3']['file'], \
         [o['name'] for o in d['images']['pi3']['inputs']['overlays']])",
        &[],
    );
    assert_eq!(
        check,
        format!(
            "('{}', '{}', '{}', 'pi3.img', ['k8s-prep'])",
            sha256(&image),
            sha256(&raw),
            sha256(&profile)
        )
    );
}

/// Evaluate the Python expression `expr` on the JSON document `json` (as `d`, parsed by
/// python3's json module; `sys.argv[1:]` = `args`); returns what it prints.
fn python_eval(json: &[u8], expr: &str, args: &[&str]) -> String {
    common::python_json(json, &format!("print({expr})"), args)
}

#[test]
fn flash_device_alone_needs_exactly_one_node_from_the_last_build() {
    let ws = workspace();
    let dir = ws.path();
    let base = fixture_xz();
    let card = dir.join("card.img");
    garbage_file(&card, 1 << 20);
    let before = sha256(&card);
    let fails = |args: &[&str], wants: &[&str]| {
        let out = pi_image_in(dir, args, "");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        for want in wants {
            assert!(err.contains(want), "{args:?}: lacks {want:?}:\n{err}");
        }
    };

    fails(
        &["flash", s(&card), "--to-file"],
        &[
            "no image built into out yet: run `pi-image build --node NAME` first",
            "(nodes in profiles/cluster.toml: pi1, pi2, pi3, pi4, pi5)",
        ],
    );
    ok(
        dir,
        &[
            "build",
            "--node",
            "pi1",
            "--node",
            "pi3",
            "--base",
            s(&base),
        ],
    );
    let c = s(&card);
    fails(
        &["flash", c, "--to-file"],
        &[
            &format!("the last build into out wrote 2 nodes; say which one goes to {c}:"),
            &format!("  pi-image flash {c} --node pi1\n  pi-image flash {c} --node pi3"),
        ],
    );
    assert_eq!(sha256(&card), before, "a refused flash wrote something");

    // One node: written; what the last build wrote is what counts, not what else is in out/.
    ok(dir, &["build", "--node", "pi3", "--base", s(&base)]);
    fs::remove_file(&card).unwrap();
    ok(dir, &["flash", c, "--to-file"]);
    run_ok(Command::new("cmp").arg(dir.join("out/pi3.img")).arg(&card));

    // An image changed after the build is refused, naming the fix.
    garbage_file(&card, 1 << 20);
    let image = dir.join("out/pi3.img");
    let mut bytes = fs::read(&image).unwrap();
    bytes[100] ^= 1;
    fs::write(&image, &bytes).unwrap();
    fails(
        &["flash", c, "--to-file"],
        &[
            "out/pi3.img: changed since pi-image built it",
            "build it again: pi-image build --node pi3",
        ],
    );
    assert_eq!(sha256(&card), before, "a refused flash wrote something");
}

#[test]
fn flash_argument_forms_that_cannot_work_say_what_to_type() {
    let ws = workspace();
    let dir = ws.path();
    let cases: [(&[&str], &str); 4] = [
        (
            &["flash", "--node", "pi3"],
            "where should node pi3 go? Give the device: pi-image flash DEVICE --node pi3 (`pi-image devices` lists the disks)",
        ),
        (
            &[
                "flash", "/dev/sdx", "--node", "pi2", "--node", "pi4", "/dev/sdy",
            ],
            "give each node its disk (--node pi2 /dev/sdb --node pi4 /dev/sdc), or one --node NODE with its DEVICE(s)",
        ),
        (
            &["flash"],
            "give the DEVICE to write (`pi-image devices` lists them)",
        ),
        (
            &[
                "flash",
                "/dev/no-such-disk",
                "--node",
                "pi3",
                "--base",
                "no-such-base.img",
            ],
            "no-such-base.img: base image not found",
        ),
    ];
    for (args, want) in cases {
        let out = pi_image_in(dir, args, "");
        let err = stderr(&out);
        assert!(
            out.status.code() == Some(1) && err.contains(want),
            "{args:?}: {err}"
        );
    }
    assert!(!dir.join("out/pi3.img").exists());
}
