//! Shared helpers for the integration tests: the bundled base image, running pi-image, and the
//! independent tools (sfdisk, fsck.fat, e2fsck, mtools, a YAML parser) that judge its output.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The committed replica of Ubuntu 20.04.5's raspi image.
pub fn fixture_xz() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ubuntu-20.04.5-replica.img.xz")
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fixture decompressed once per test process into a temp dir (kept for the process).
pub fn fixture_raw() -> PathBuf {
    static RAW: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    RAW.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("base.img");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "xz -dc '{}' > '{}'",
                fixture_xz().display(),
                raw.display()
            ))
            .status()
            .unwrap();
        assert!(out.success(), "xz -dc of the fixture failed");
        (dir, raw)
    })
    .1
    .clone()
}

/// Run pi-image with `args` in `cwd`.
pub fn pi_image(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pi-image"))
        .args(args)
        .current_dir(cwd)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap()
}

/// Run pi-image with `args` in `cwd` and assert it succeeded.
pub fn pi_image_ok(cwd: &Path, args: &[&str]) -> Output {
    let out = pi_image(cwd, args);
    assert!(
        out.status.success(),
        "pi-image {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a command, returning (success, stdout, stderr).
pub fn run(cmd: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e} (install it: see .ci/run)"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run a prepared command and assert it succeeded; returns its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (see .ci/run)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Copy `len` bytes at `offset` of `image` into a new file `dest` (for tools that take a
/// filesystem image, not a disk image with an offset).
pub fn extract(image: &Path, offset: u64, len: u64, dest: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut src = std::fs::File::open(image).unwrap();
    src.seek(SeekFrom::Start(offset)).unwrap();
    let mut dst = std::fs::File::create(dest).unwrap();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        src.read_exact(&mut buf[..n]).unwrap();
        dst.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

/// A python3 that has PyYAML: the one on PATH, else Debian's.
pub fn python_with_yaml() -> String {
    for py in ["python3", "/usr/bin/python3"] {
        if Command::new(py)
            .args(["-c", "import yaml"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
        {
            return py.to_string();
        }
    }
    panic!("no python3 with PyYAML found (apt-get install python3-yaml)");
}

/// Parse YAML text with PyYAML (an independent parser) and evaluate the Python expression
/// `expr` on the document `d` (`json` is imported); returns what it prints (`str()` of the
/// result).
pub fn yaml_eval(text: &str, expr: &str) -> String {
    use std::io::Write;
    let py = python_with_yaml();
    let script =
        format!("import sys, json, yaml\nd = yaml.safe_load(sys.stdin.read())\nprint({expr})");
    let mut child = Command::new(py)
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyYAML on:\n{text}\nfailed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}
