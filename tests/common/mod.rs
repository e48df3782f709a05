//! Shared helpers for the integration tests: the bundled base image, running pi-image, and the
//! independent tools (sfdisk, fsck.fat, e2fsck, mtools, a YAML parser) that judge its output.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, Once, OnceLock, PoisonError};

/// The committed replica of Ubuntu 20.04.5's raspi image.
pub fn fixture_xz() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ubuntu-20.04.5-replica.img.xz")
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A temp dir for a fixture kept in a `static` for the whole test process ([`process_tempdir`]).
#[derive(Debug)]
pub struct ProcessDir(PathBuf);

impl ProcessDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// A temp dir for a fixture kept in a `static`. Statics are never dropped, so a `TempDir` in one
/// stayed behind (gigabytes a run); this one is removed when the process exits, however the test
/// harness ends it (returning from main, or `exit` after a failure).
pub fn process_tempdir() -> ProcessDir {
    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static AT_EXIT: Once = Once::new();
    extern "C" fn remove_dirs() {
        for dir in DIRS.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    AT_EXIT.call_once(|| {
        // SAFETY: registers a function without arguments that only removes directories.
        assert_eq!(unsafe { libc::atexit(remove_dirs) }, 0, "atexit failed");
    });
    let dir = tempfile::tempdir().unwrap().keep();
    DIRS.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(dir.clone());
    ProcessDir(dir)
}

/// The fixture decompressed once per test process into a temp dir (kept for the process).
pub fn fixture_raw() -> PathBuf {
    static RAW: OnceLock<(ProcessDir, PathBuf)> = OnceLock::new();
    RAW.get_or_init(|| {
        let dir = process_tempdir();
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

/// Run `cmd` with `input` on its stdin; its output.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (see scripts/deps.txt)"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Run the Python statements `code` on the JSON document `json`, parsed by python3's json
/// module as `d` (`sys.argv[1:]` = `args`), asserting they succeed; returns what they print.
pub fn python_json(json: &[u8], code: &str, args: &[&str]) -> String {
    let out = run_with_stdin(
        Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import json, sys\nd = json.load(sys.stdin)\n{code}"
            ))
            .args(args),
        json,
    );
    assert!(
        out.status.success(),
        "python3 on {}:\n{}",
        String::from_utf8_lossy(json),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Parse YAML text with PyYAML (an independent parser) and evaluate the Python expression
/// `expr` on the document `d` (`json` is imported); returns what it prints (`str()` of the
/// result).
pub fn yaml_eval(text: &str, expr: &str) -> String {
    let py = python_with_yaml();
    let script =
        format!("import sys, json, yaml\nd = yaml.safe_load(sys.stdin.read())\nprint({expr})");
    let out = run_with_stdin(Command::new(py).args(["-c", &script]), text.as_bytes());
    assert!(
        out.status.success(),
        "PyYAML on:\n{text}\nfailed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Nodes of the demo profile (`profiles/cluster.toml`) built once per test process from the
/// compressed fixture: `dir/<node>.img` for pi1 and pi3, and `dir/gpt/pi3.img` with a GPT.
pub fn demo_images() -> &'static Path {
    static OUT: OnceLock<(ProcessDir, PathBuf)> = OnceLock::new();
    &OUT.get_or_init(|| {
        let dir = process_tempdir();
        let out = dir.path().join("out");
        let xz = fixture_xz();
        pi_image_ok(
            &repo(),
            &[
                "build", "--node", "pi1", "--node", "pi3", "--base",
                xz.to_str().unwrap(), "--out", out.to_str().unwrap(),
            ],
        );
        let profile = dir.path().join("gpt.toml");
        std::fs::write(
            &profile,
            format!(
                "[cluster]\nname = \"testcluster\"\nbase = \"{}\"\n\n[defaults]\ntarget = \"ssd\"\npartition_table = \"gpt\"\n\n[[nodes]]\nname = \"pi3\"\n",
                xz.display()
            ),
        )
        .unwrap();
        let gpt = out.join("gpt");
        pi_image_ok(
            &repo(),
            &[
                "--profile", profile.to_str().unwrap(), "build", "--all", "--out",
                gpt.to_str().unwrap(),
            ],
        );
        (dir, out)
    })
    .1
}

/// Fill `path` with `len` bytes of pseudo-random garbage (what a used card holds).
pub fn garbage_file(path: &Path, len: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = (buf.len() as u64).min(left) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// The block ranges of a `.bmap` file as byte ranges, parsed by Python's XML parser (not ours).
pub fn bmap_ranges(bmap: &Path) -> Vec<(u64, u64)> {
    let script = r#"
import sys, xml.etree.ElementTree as ET
r = ET.parse(sys.argv[1]).getroot()
bs = int(r.find('BlockSize').text); size = int(r.find('ImageSize').text)
for e in r.find('BlockMap').findall('Range'):
    t = e.text.strip().split('-')
    a, b = int(t[0]), int(t[-1])
    print(a * bs, min((b + 1) * bs, size))
"#;
    let (ok, out, err) = run("python3", &["-c", script, bmap.to_str().unwrap()]);
    assert!(ok, "python3 could not parse {}: {err}", bmap.display());
    out.lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

/// `cmp` byte ranges `ranges` of files `a` and `b` (same offsets), asserting they are equal.
pub fn cmp_ranges(a: &Path, b: &Path, ranges: &[(u64, u64)]) {
    for &(start, end) in ranges {
        let skip = format!("{start}:{start}");
        let n = (end - start).to_string();
        let (ok, out, err) = run(
            "cmp",
            &[
                "-i",
                &skip,
                "-n",
                &n,
                a.to_str().unwrap(),
                b.to_str().unwrap(),
            ],
        );
        assert!(
            ok,
            "cmp {start}..{end} of {} and {}: {out}{err}",
            a.display(),
            b.display()
        );
    }
}

/// (start, size) in bytes of each partition of `img`, from `sfdisk --dump`.
pub fn sfdisk_partitions(img: &Path) -> Vec<(u64, u64)> {
    let (ok, out, err) = run("sfdisk", &["--dump", img.to_str().unwrap()]);
    assert!(ok, "sfdisk --dump {}: {err}", img.display());
    let field = |line: &str, key: &str| -> u64 {
        let rest = &line[line.find(key).unwrap() + key.len()..];
        rest.trim_start_matches([' ', '='])
            .split(|c: char| c == ',' || c.is_whitespace())
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 512
    };
    out.lines()
        .filter(|l| l.contains("start="))
        .map(|l| (field(l, "start="), field(l, "size=")))
        .collect()
}

/// Judge the FAT and ext4 filesystems of the disk image `img` (partitions 1 and 2) with
/// `fsck.fat -n` and `e2fsck -fn`, on copies extracted into `tmp`.
pub fn fsck_partitions(img: &Path, tmp: &Path) {
    let parts = sfdisk_partitions(img);
    assert!(parts.len() >= 2, "{}: {parts:?}", img.display());
    let boot = tmp.join("boot.part");
    let root = tmp.join("root.part");
    extract(img, parts[0].0, parts[0].1, &boot);
    extract(img, parts[1].0, parts[1].1, &root);
    let (ok, out, err) = run("fsck.fat", &["-n", boot.to_str().unwrap()]);
    assert!(ok, "fsck.fat -n on {}: {out}{err}", img.display());
    let (ok, out, err) = run("e2fsck", &["-fn", root.to_str().unwrap()]);
    assert!(ok, "e2fsck -fn on {}: {out}{err}", img.display());
    std::fs::remove_file(boot).unwrap();
    std::fs::remove_file(root).unwrap();
}

/// A path as the `&str` a command-line argument needs.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The sha256 of a file, by `sha256sum` (not our own hashing).
pub fn sha256(p: &Path) -> String {
    let (ok, out, err) = run("sha256sum", &[s(p)]);
    assert!(ok, "{err}");
    out.split_whitespace().next().unwrap().to_owned()
}

/// pi-image with `args` in `cwd`, started in the background (stdout dropped, stderr piped).
pub fn spawn<S: AsRef<std::ffi::OsStr>>(cwd: &Path, args: &[S]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_pi-image"))
        .args(args)
        .current_dir(cwd)
        .env_remove("SOURCE_DATE_EPOCH")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Temp files and directories of ours (`.<name>....tmp`) anywhere under `dir`.
pub fn temps_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            out.push(p.clone());
        }
        if e.file_type().unwrap().is_dir() {
            out.extend(temps_under(&p));
        }
    }
    out
}

/// The byte ranges of `0..len` that sorted, non-overlapping `ranges` leave out.
pub fn gaps(ranges: &[(u64, u64)], len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for &(start, end) in ranges {
        if start > pos {
            out.push((pos, start));
        }
        pos = end;
    }
    if pos < len {
        out.push((pos, len));
    }
    out
}

/// splitmix64: a small seeded generator for the kill trials and the fuzzer.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A fraction in `[0, 1)`.
    pub fn fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
