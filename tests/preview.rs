//! `pi-image preview` refusals that need no boot: no QEMU, a kernel QEMU cannot run, a private
//! key that is not the node's. Each must fail with a clear message, leave no scratch copy and
//! not change the image (sha256sum before and after). The boots themselves are in
//! tests/preview_boot.rs (`make test-boot`).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{demo_images, repo, run};

fn sha256(path: &Path) -> String {
    let (ok, out, err) = run("sha256sum", &[path.to_str().unwrap()]);
    assert!(ok, "sha256sum: {err}");
    out.split_whitespace().next().unwrap().to_owned()
}

/// A copy of the demo node pi1 (built from the replica, whose kernel is a placeholder) in its
/// own directory, so that leftovers of a preview can be seen.
fn pi1_copy(dir: &Path) -> std::path::PathBuf {
    let image = dir.join("pi1.img");
    fs::copy(demo_images().join("pi1.img"), &image).unwrap();
    image
}

fn preview(image: &Path, extra: &[&str], path_env: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pi-image"));
    cmd.arg("preview")
        .arg(image)
        .args(extra)
        .current_dir(repo());
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Nothing but the image (no scratch directory, no console log) is left in `dir`.
fn only_the_image(dir: &Path) {
    let names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["pi1.img"]);
}

fn have_qemu() -> bool {
    let found = Command::new("qemu-system-aarch64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "SKIPPED: qemu-system-aarch64 is not installed (apt-get install qemu-system-arm)"
        );
    }
    found
}

#[test]
fn without_qemu_the_error_names_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let image = pi1_copy(dir.path());
    let before = sha256(&image);
    let empty = tempfile::tempdir().unwrap();
    let (ok, err) = preview(&image, &[], Some(empty.path().to_str().unwrap()));
    assert!(!ok);
    assert!(
        err.contains("qemu-system-aarch64 not found on PATH")
            && err.contains("apt-get install qemu-system-arm"),
        "{err}"
    );
    assert_eq!(sha256(&image), before);
    only_the_image(dir.path());
}

#[test]
fn a_placeholder_kernel_is_refused_before_booting() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = pi1_copy(dir.path());
    let before = sha256(&image);
    let (ok, err) = preview(&image, &[], None);
    assert!(!ok);
    assert!(
        err.contains(
            "vmlinuz on the boot partition has an arm64 Image header but no 'Linux version' banner"
        ) && err.contains("QEMU cannot boot it"),
        "{err}"
    );
    assert_eq!(sha256(&image), before);
    only_the_image(dir.path());
}

#[test]
fn an_identity_that_is_not_the_nodes_key_is_refused() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = pi1_copy(dir.path());
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("other");
    let (ok, _, err) = run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()],
    );
    assert!(ok, "ssh-keygen: {err}");
    let (ok, err) = preview(&image, &["--identity", key.to_str().unwrap()], None);
    assert!(!ok);
    assert!(
        err.contains("--identity") && err.contains("is none of the keys the node should have"),
        "{err}"
    );
    only_the_image(dir.path());
    // --ssh needs a key of the node's: none is at hand with an empty HOME.
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pi-image"))
        .args(["preview", image.to_str().unwrap(), "--ssh"])
        .env("HOME", home.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--ssh needs the private key"), "{err}");
    only_the_image(dir.path());
}
