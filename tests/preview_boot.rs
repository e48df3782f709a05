//! `pi-image preview` booting real node images under QEMU (`make test-boot`; ignored by plain
//! `cargo test`, as each boot takes minutes of TCG on 2 cores).
//!
//! The base is the bootable test base (`tests/fixtures/make-bootable-base.sh --cached`: a real
//! Debian arm64 kernel, systemd, cloud-init and sshd, laid out as Ubuntu 20.04.5's image). The
//! profile has an SD node (stock U-Boot path: vmlinuz + initrd.img) and an SSD node with
//! `decompress_kernel` (kernel=vmlinux), both with a key made here by ssh-keygen.
//!
//! - pi3 (sd): checked over ssh with the key (`--identity`), then `--ssh` runs commands from
//!   stdin in the session.
//! - pi5 (ssd): no private key at hand (HOME without .ssh): hostname, keys and cloud-init's
//!   result come from the guest's disk after it powered off; `--json`.
//! - pi7, whose profile adds `init=/sbin/no-such-init` to the command line, given by path (what
//!   it should show then comes from its own cloud-init files): the initramfs finds no init and
//!   powers off, and the preview must fail for that reason, quickly.
//!
//! Besides pi-image's own verdict, each test reads the console log itself (the guest's
//! `<host> login:` prompt, cloud-init's ci-info rows, its "Authorized keys" fingerprint table
//! compared with `ssh-keygen -l` of the test key) and checks the image with sha256sum.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use base64::Engine;
use common::{repo, run};

struct Setup {
    _dir: common::ProcessDir,
    dir: PathBuf,
    profile: PathBuf,
    key: PathBuf,
    out: PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let script = repo().join("tests/fixtures/make-bootable-base.sh");
        let out = Command::new(&script).arg("--cached").output().unwrap();
        assert!(
            out.status.success(),
            "make-bootable-base.sh --cached: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let base = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let tmp = common::process_tempdir();
        let dir = tmp.path().to_owned();
        let key = dir.join("key");
        let (ok, _, err) = run(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "preview-test",
                "-f",
                key.to_str().unwrap(),
            ],
        );
        assert!(ok, "ssh-keygen: {err}");
        let profile = dir.join("cluster.toml");
        std::fs::write(
            &profile,
            format!(
                r#"[cluster]
name = "previewtest"
base = "{base}"

[defaults]
domain = "cluster.lan"
gateway = "192.168.1.1"
dns = ["192.168.1.2"]
search = ["cluster.lan"]
user = "ubuntu"
ssh_keys = ["key.pub"]
timezone = "Etc/UTC"

[[nodes]]
name = "pi3"
address = "192.168.1.13/24"
target = "sd"

[[nodes]]
name = "pi5"
address = "192.168.1.15/24"
target = "ssd"
decompress_kernel = true

[[nodes]]
name = "pi7"
address = "192.168.1.17/24"
cmdline = ["init=/sbin/no-such-init"]
"#
            ),
        )
        .unwrap();
        Setup {
            out: dir.join("out"),
            _dir: tmp,
            dir,
            profile,
            key,
        }
    })
}

/// Run pi-image with `args` (stdin from `input`), returning (success, stdout, stderr, seconds).
fn pi_image(args: &[&str], input: &str, home: Option<&Path>) -> (bool, String, String, f64) {
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pi-image"));
    cmd.args(args)
        .current_dir(&setup().dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(home) = home {
        cmd.env("HOME", home);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("pi-image {args:?}:\n{stdout}{stderr}");
    (
        out.status.success(),
        stdout,
        stderr,
        started.elapsed().as_secs_f64(),
    )
}

fn sha256(path: &Path) -> String {
    let (ok, out, err) = run("sha256sum", &[path.to_str().unwrap()]);
    assert!(ok, "sha256sum: {err}");
    out.split_whitespace().next().unwrap().to_owned()
}

/// The console log with CRs and ANSI colour removed.
fn console_log(path: &Path) -> String {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = String::from_utf8_lossy(&raw).replace('\r', "");
    let mut out = String::new();
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, c) if c.is_ascii_alphabetic() => in_escape = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// What the guest itself printed: its login prompt, its address in cloud-init's table, and the
/// test key's fingerprint (hex, as cloud-init prints it) in its "Authorized keys" table.
fn guest_said(log: &str, host: &str, address: &str) {
    assert!(
        log.lines()
            .any(|l| l.starts_with(&format!("{host} login:"))),
        "no '{host} login:' prompt on the console"
    );
    assert!(
        log.lines().any(
            |l| l.contains("ci-info: |  eth0  | True |") && l.contains(&format!(" {address} "))
        ),
        "no ci-info row for eth0 with {address}"
    );
    assert!(
        log.contains("Cloud-init v. ") && log.contains(" finished at "),
        "cloud-init never finished"
    );
    let (ok, fp, err) = run(
        "ssh-keygen",
        &[
            "-l",
            "-E",
            "sha256",
            "-f",
            &format!("{}.pub", setup().key.display()),
        ],
    );
    assert!(ok, "ssh-keygen -l: {err}");
    let b64 = fp
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.strip_prefix("SHA256:"))
        .unwrap();
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(b64)
        .unwrap();
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hex = hex.join(":");
    assert!(
        log.lines()
            .any(|l| l.contains("ci-info: | ssh-ed25519 |") && l.contains(&hex)),
        "the test key ({hex}) is not in cloud-init's Authorized keys table"
    );
}

#[test]
#[ignore = "boots QEMU for minutes: make test-boot"]
fn sd_node_checked_over_ssh_then_an_ssh_session() {
    let s = setup();
    let args = [
        "--profile",
        s.profile.to_str().unwrap(),
        "preview",
        "pi3",
        "--out",
        s.out.to_str().unwrap(),
        "--identity",
        s.key.to_str().unwrap(),
        "--ssh",
    ];
    let (ok, stdout, stderr, secs) = pi_image(&args, "echo session-ran-on-$(hostname)\n", None);
    assert!(ok, "{stderr}");
    for line in [
        "pi3      ok    root       vda2  [console]",
        "pi3      ok    hostname   pi3  [ssh]",
        "pi3      ok    address    192.168.1.13/24 on eth0  [ssh]",
        "pi3      ok    route      default via 192.168.1.1 dev eth0  [ssh]",
        "pi3      ok    keys       all 1 in ubuntu's authorized_keys (1 key(s) there)  [ssh]",
    ] {
        assert!(stdout.lines().any(|l| l == line), "no line {line:?}");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("pi3      ok    cloud-init datasource DataSourceNoCloud"))
    );
    assert!(stdout.contains("PASS: came up as profile node pi3 says"));
    assert!(
        stdout.contains("session-ran-on-pi3"),
        "the --ssh session did not run"
    );
    let finished = stdout
        .lines()
        .find(|l| l.contains("cloud-init finished") && l.contains("after QEMU started"))
        .unwrap();
    eprintln!("TIMING pi3 (sd): {finished}; whole command {secs:.1} s");
    guest_said(
        &console_log(&s.out.join("pi3.console.log")),
        "pi3",
        "192.168.1.13",
    );
    let leftovers: Vec<_> = std::fs::read_dir(&s.out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".pi-image-preview"))
        .collect();
    assert!(leftovers.is_empty(), "scratch left behind: {leftovers:?}");
}

#[test]
#[ignore = "boots QEMU for minutes: make test-boot"]
fn ssd_node_without_a_private_key_read_from_its_disk() {
    let s = setup();
    let home = tempfile::tempdir().unwrap();
    let args = [
        "--profile",
        s.profile.to_str().unwrap(),
        "preview",
        "pi5",
        "--out",
        s.out.to_str().unwrap(),
        "--json",
    ];
    let (ok, stdout, stderr, secs) = pi_image(&args, "", Some(home.path()));
    assert!(ok, "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["ok"], true);
    let node = &doc["nodes"][0];
    assert_eq!(node["node"], "pi5");
    assert!(
        node["kernel"]
            .as_str()
            .unwrap()
            .starts_with("vmlinux (arm64 Linux"),
        "{}",
        node["kernel"]
    );
    let checks: Vec<(String, bool, String)> = node["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["ok"].as_bool().unwrap(),
                c["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("root", "console"),
        ("cloud-init", "disk"),
        ("hostname", "disk"),
        ("address", "console"),
        ("route", "console"),
        ("keys", "disk"),
    ];
    assert_eq!(
        checks,
        want.map(|(n, s)| (n.to_owned(), true, s.to_owned()))
    );
    let finished = node["finished_seconds"].as_f64().unwrap();
    let qemu = node["qemu_started_seconds"].as_f64().unwrap();
    eprintln!(
        "TIMING pi5 (ssd, vmlinux): cloud-init finished {:.1} s after QEMU started, {finished:.1} s after the command started; whole command {secs:.1} s",
        finished - qemu
    );
    guest_said(
        &console_log(&s.out.join("pi5.console.log")),
        "pi5",
        "192.168.1.15",
    );
    // The guest powered off cleanly: systemd's shutdown is in the log.
    let log = console_log(&s.out.join("pi5.console.log"));
    assert!(
        log.contains("reboot: Power down"),
        "no clean power-off in the console log"
    );
}

#[test]
#[ignore = "boots QEMU for minutes: make test-boot"]
fn a_node_whose_init_is_missing_fails_for_that_reason() {
    let s = setup();
    let out = s.dir.join("broken");
    let (ok, _, stderr, _) = pi_image(
        &[
            "--profile",
            s.profile.to_str().unwrap(),
            "build",
            "--node",
            "pi7",
            "--out",
            out.to_str().unwrap(),
        ],
        "",
        None,
    );
    assert!(ok, "{stderr}");
    // By path: what it should show comes from the image's own cloud-init files.
    let image = out.join("pi7.img");
    let before = sha256(&image);
    let (ok, stdout, stderr, secs) = pi_image(&["preview", image.to_str().unwrap()], "", None);
    assert!(!ok, "a node without its init passed:\n{stdout}");
    assert!(
        stderr.contains("pi7: QEMU exited before cloud-init finished")
            && stderr.contains("last stage seen: root file system mounted")
            && stderr.contains(&format!(
                "(console log: {})",
                out.join("pi7.console.log").display()
            )),
        "{stderr}"
    );
    assert!(stdout.contains("FAIL: QEMU exited before cloud-init finished"));
    eprintln!("TIMING pi7 (no init): failed after {secs:.1} s");
    assert!(secs < 300.0, "took {secs:.0} s");
    assert_eq!(sha256(&image), before, "the image was changed");
    let log = console_log(&out.join("pi7.console.log"));
    assert!(
        log.contains("pi-image initramfs: /sbin/no-such-init not found on /dev/vda2"),
        "the initramfs did not say why:\n{log}"
    );
    assert!(!log.contains("systemd["), "systemd ran without an init?");
}

#[test]
#[ignore = "boots QEMU for minutes: make test-boot"]
fn all_nodes_two_at_a_time_as_json() {
    let s = setup();
    // Two nodes that fail within seconds: this is about --all, --jobs and --json.
    let profile = s.dir.join("broken.toml");
    let text = std::fs::read_to_string(&s.profile).unwrap();
    let base_line = text.lines().find(|l| l.starts_with("base = ")).unwrap();
    std::fs::write(
        &profile,
        format!(
            "[cluster]\nname = \"previewtest\"\n{base_line}\n\n[defaults]\ngateway = \"192.168.1.1\"\nssh_keys = [\"key.pub\"]\ncmdline = [\"init=/sbin/no-such-init\"]\n\n[[nodes]]\nname = \"n1\"\naddress = \"192.168.1.21/24\"\n\n[[nodes]]\nname = \"n2\"\naddress = \"192.168.1.22/24\"\n"
        ),
    )
    .unwrap();
    let out = s.dir.join("all");
    let (ok, stdout, stderr, secs) = pi_image(
        &[
            "--profile",
            profile.to_str().unwrap(),
            "preview",
            "--all",
            "--jobs",
            "2",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ],
        "",
        None,
    );
    assert!(!ok);
    assert!(
        stderr.contains(": QEMU exited before cloud-init finished"),
        "{stderr}"
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["ok"], false);
    let nodes = doc["nodes"].as_array().unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(names, ["n1", "n2"]);
    for n in nodes {
        assert!(
            n["failure"]
                .as_str()
                .unwrap()
                .starts_with("QEMU exited before cloud-init finished")
        );
        assert_eq!(n["finished_seconds"], serde_json::Value::Null);
        let root = &n["stages"][1];
        assert_eq!(
            (root["stage"].as_str(), root["detail"].as_str()),
            (Some("root"), Some("vda2"))
        );
        assert!(
            out.join(format!("{}.console.log", n["node"].as_str().unwrap()))
                .is_file()
        );
    }
    eprintln!("TIMING --all --jobs 2 (two failing nodes): {secs:.1} s");
}
