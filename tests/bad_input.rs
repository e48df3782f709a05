//! Broken profiles and images: each must fail with a non-zero exit, a message naming the file and
//! the field, and no output file.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{fixture_raw, pi_image};

const GOOD: &str = r#"
[cluster]
name = "testcluster"
base = "ubuntu-20.04.5"

[defaults]
domain = "cluster.lan"
gateway = "192.168.1.1"
dns = ["192.168.1.1"]
ssh_keys = ["keys/demo.pub"]
target = "ssd"
kubernetes = true

[defaults.overclock]
arm_freq = 2000
over_voltage = 6

[[nodes]]
name = "pi1"
address = "192.168.1.11/24"
target = "sd"

[[nodes]]
name = "pi2"
address = "192.168.1.12/24"
"#;

/// A scenario: how to break the good profile (or the base), and what the error must say.
struct Case {
    name: &'static str,
    /// (from, to) replacement in the profile text; from = "" appends `to`.
    edit: (&'static str, &'static str),
    /// Extra arguments replacing the default `--base <fixture>`.
    base: Base,
    /// Substrings the error message must contain.
    expect: &'static [&'static str],
}

enum Base {
    Fixture,
    None,
    Missing,
    Garbage,
    Truncated,
    NoRoot,
    NeedsRecovery,
    /// The fixture, with an overlay `bad` made by this function in `overlays/`.
    Overlay(fn(&Path)),
}

const USE_BAD_OVERLAY: (&str, &str) = (
    "kubernetes = true",
    "kubernetes = true\noverlays = [\"bad\"]",
);

fn boot_symlink(o: &Path) {
    fs::create_dir_all(o.join("boot")).unwrap();
    std::os::unix::fs::symlink("config.txt", o.join("boot/link.txt")).unwrap();
}

fn escaping_symlink(o: &Path) {
    fs::create_dir_all(o.join("rootfs/etc")).unwrap();
    std::os::unix::fs::symlink("../../../../etc/shadow", o.join("rootfs/etc/shadow-copy")).unwrap();
}

fn too_big(o: &Path) {
    fs::create_dir_all(o.join("rootfs/opt")).unwrap();
    let f = fs::File::create(o.join("rootfs/opt/huge.bin")).unwrap();
    f.set_len(200 << 20).unwrap();
}

fn bad_manifest(o: &Path) {
    fs::create_dir_all(o.join("rootfs/etc")).unwrap();
    fs::write(o.join("rootfs/etc/x.conf"), "x").unwrap();
    fs::write(o.join("rootfs.toml"), "[\"etc/x.conf\"]\nmdoe = \"0600\"\n").unwrap();
}

fn empty_overlay(o: &Path) {
    fs::create_dir_all(o.join("docs")).unwrap();
}

fn cases() -> Vec<Case> {
    use Base::*;
    let c = |name, edit, base, expect| Case {
        name,
        edit,
        base,
        expect,
    };
    vec![
        c(
            "unknown top-level table",
            ("", "\n[nodez]\nx = 1\n"),
            Fixture,
            &["p.toml:", "unknown field `nodez`"],
        ),
        c(
            "typo in a node field",
            (
                "address = \"192.168.1.12/24\"",
                "adress = \"192.168.1.12/24\"",
            ),
            Fixture,
            &["p.toml:", "unknown field `adress`"],
        ),
        c(
            "hostname with underscore",
            ("name = \"pi2\"", "name = \"pi2\"\nhostname = \"pi_2\""),
            Fixture,
            &["p.toml:", "nodes[1].hostname", "pi_2"],
        ),
        c(
            "address octet out of range",
            ("192.168.1.12/24", "192.168.1.300/24"),
            Fixture,
            &["p.toml:", "nodes[1].address", "CIDR"],
        ),
        c(
            "address without prefix",
            ("192.168.1.12/24", "192.168.1.12"),
            Fixture,
            &["p.toml:", "nodes[1].address"],
        ),
        c(
            "network address as host",
            ("192.168.1.12/24", "192.168.1.0/24"),
            Fixture,
            &["nodes[1].address", "network or broadcast"],
        ),
        c(
            "gateway outside the subnet",
            ("gateway = \"192.168.1.1\"", "gateway = \"10.0.0.1\""),
            Fixture,
            &["p.toml:", "defaults.gateway", "outside the node's subnet"],
        ),
        c(
            "duplicate hostname",
            ("name = \"pi2\"", "name = \"pi2\"\nhostname = \"pi1\""),
            Fixture,
            &["p.toml:", "nodes[1].hostname", "already used by nodes[0]"],
        ),
        c(
            "duplicate address",
            ("192.168.1.12/24", "192.168.1.11/24"),
            Fixture,
            &["p.toml:", "nodes[1].address", "already used"],
        ),
        c(
            "duplicate node name",
            ("name = \"pi2\"", "name = \"pi1\""),
            Fixture,
            &["p.toml:", "nodes[1].name", "already used"],
        ),
        c(
            "ssh key with broken base64",
            (
                "ssh_keys = [\"keys/demo.pub\"]",
                "ssh_keys = [\"ssh-ed25519 AAAA!!notbase64 me\"]",
            ),
            Fixture,
            &["p.toml:", "defaults.ssh_keys", "base64"],
        ),
        c(
            "ssh key type mismatch",
            (
                "ssh_keys = [\"keys/demo.pub\"]",
                "ssh_keys = [\"keys/mismatch.pub\"]",
            ),
            Fixture,
            &["mismatch.pub:1:", "ssh_keys", "holds a 'ssh-ed25519' key"],
        ),
        c(
            "missing key file",
            ("keys/demo.pub", "keys/nope.pub"),
            Fixture,
            &["p.toml:", "defaults.ssh_keys", "nope.pub"],
        ),
        c(
            "plain password",
            (
                "kubernetes = true",
                "kubernetes = true\npassword_hash = \"hunter2\"",
            ),
            Fixture,
            &["p.toml:", "defaults.password_hash", "SHA-512"],
        ),
        c(
            "config value with newline",
            (
                "",
                "\n[defaults.config_txt.all]\ngpu_mem = \"16\\nevil=1\"\n",
            ),
            Fixture,
            &["p.toml:", "config_txt.all.gpu_mem", "newline"],
        ),
        c(
            "unknown target",
            ("target = \"ssd\"", "target = \"usb\""),
            Fixture,
            &["p.toml:", "unknown variant `usb`"],
        ),
        c(
            "decompress_kernel on an sd node",
            (
                "target = \"sd\"",
                "target = \"sd\"\ndecompress_kernel = true",
            ),
            Fixture,
            &["p.toml:", "nodes[0].decompress_kernel", "ssd"],
        ),
        c(
            "unknown overlay",
            (
                "kubernetes = true",
                "kubernetes = true\noverlays = [\"nosuch\"]",
            ),
            Fixture,
            &["p.toml:", "defaults.overlays", "nosuch"],
        ),
        c(
            "overclock out of range",
            ("arm_freq = 2000", "arm_freq = 5000"),
            Fixture,
            &["p.toml:", "overclock.arm_freq", "out of range"],
        ),
        c(
            "cmdline token with a space",
            (
                "name = \"pi2\"",
                "name = \"pi2\"\ncmdline = [\"quiet splash\"]",
            ),
            Fixture,
            &["p.toml:", "nodes[1].cmdline"],
        ),
        c(
            "dns not an address",
            ("dns = [\"192.168.1.1\"]", "dns = [\"dns.example\"]"),
            Fixture,
            &["p.toml:", "defaults.dns", "not an IP address"],
        ),
        c(
            "bad timezone",
            (
                "kubernetes = true",
                "kubernetes = true\ntimezone = \"../etc/passwd\"",
            ),
            Fixture,
            &["p.toml:", "defaults.timezone"],
        ),
        c(
            "TOML syntax error",
            ("name = \"pi2\"", "name = \"pi2"),
            Fixture,
            &["p.toml:", "(syntax)"],
        ),
        c(
            "nodes table misspelt",
            ("[[nodes]]", "[[ignored]]"),
            Fixture,
            &["p.toml:", "unknown field `ignored`"],
        ),
        c(
            "URL base not cached, --offline",
            ("", ""),
            None,
            &[
                "ubuntu-20.04.5-preinstalled-server-arm64+raspi.img.xz",
                "not in the cache",
                "--offline",
            ],
        ),
        c(
            "URL base with nothing to verify it",
            (
                "base = \"ubuntu-20.04.5\"",
                "base = \"http://127.0.0.1:9/x.img.xz\"",
            ),
            None,
            &[
                "p.toml:4:8",
                "cluster.base",
                "nothing to verify",
                "base_sha256",
            ],
        ),
        c(
            "base_sha256 not a sha256",
            (
                "base = \"ubuntu-20.04.5\"",
                "base = \"ubuntu-20.04.5\"\nbase_sha256 = \"abc\"",
            ),
            None,
            &["p.toml:5:15", "cluster.base_sha256", "64 hex digits"],
        ),
        c(
            "base_sha256sums not a URL",
            (
                "base = \"ubuntu-20.04.5\"",
                "base = \"ubuntu-20.04.5\"\nbase_sha256sums = \"SHA256SUMS\"",
            ),
            None,
            &[
                "p.toml:5:19",
                "cluster.base_sha256sums",
                "not an http(s) URL",
            ],
        ),
        c(
            "base_sha256 on a local file",
            (
                "base = \"ubuntu-20.04.5\"",
                "base = \"local.img\"\nbase_sha256sums = \"http://127.0.0.1:9/SHA256SUMS\"",
            ),
            None,
            &[
                "p.toml:5:19",
                "cluster.base_sha256sums",
                "only applies to a URL base",
            ],
        ),
        c(
            "base_signing_key not a file",
            (
                "base = \"ubuntu-20.04.5\"",
                "base = \"ubuntu-20.04.5\"\nbase_signing_key = \"nokey.asc\"",
            ),
            None,
            &["p.toml:5:20", "cluster.base_signing_key", "not a file"],
        ),
        c(
            "base_signing_key without SHA256SUMS",
            (
                "base = \"ubuntu-20.04.5\"",
                "base = \"http://127.0.0.1:9/x.img\"\nbase_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nbase_signing_key = \"p.toml\"",
            ),
            None,
            &[
                "p.toml:6:20",
                "cluster.base_signing_key",
                "no base_sha256sums",
            ],
        ),
        c("missing base image", ("", ""), Missing, &["nosuch.img"]),
        c(
            "base image that is not a disk image",
            ("", ""),
            Garbage,
            &["garbage.img", "no valid partition table"],
        ),
        c(
            "truncated base image",
            ("", ""),
            Truncated,
            &["truncated.img", "truncated"],
        ),
        c(
            "base image without an ext4 root",
            ("", ""),
            NoRoot,
            &["noroot.img", "no root partition"],
        ),
        c(
            "root filesystem needing journal recovery",
            ("", ""),
            NeedsRecovery,
            &["recovery.img", "recovery"],
        ),
        c(
            "symlink in a boot overlay",
            USE_BAD_OVERLAY,
            Overlay(boot_symlink),
            &["bad/boot", "link.txt", "symlinks"],
        ),
        c(
            "rootfs symlink escaping the overlay",
            USE_BAD_OVERLAY,
            Overlay(escaping_symlink),
            &["shadow-copy"],
        ),
        c(
            "rootfs overlay too big for the filesystem",
            USE_BAD_OVERLAY,
            Overlay(too_big),
            &["node pi1", "bytes missing"],
        ),
        c(
            "typo in an overlay manifest",
            USE_BAD_OVERLAY,
            Overlay(bad_manifest),
            &["rootfs.toml", "mdoe"],
        ),
        c(
            "overlay with neither boot/ nor rootfs/",
            USE_BAD_OVERLAY,
            Overlay(empty_overlay),
            &["overlays/bad", "neither a boot/ nor a rootfs/"],
        ),
    ]
}

fn setup(dir: &Path, profile: &str) {
    fs::create_dir_all(dir.join("profiles/keys")).unwrap();
    fs::create_dir_all(dir.join("overlays")).unwrap();
    fs::copy(
        common::repo().join("profiles/keys/demo.pub"),
        dir.join("profiles/keys/demo.pub"),
    )
    .unwrap();
    // A key whose declared type (ssh-rsa) differs from the type inside its data (ssh-ed25519).
    let demo = fs::read_to_string(dir.join("profiles/keys/demo.pub")).unwrap();
    fs::write(
        dir.join("profiles/keys/mismatch.pub"),
        demo.replacen("ssh-ed25519", "ssh-rsa", 1),
    )
    .unwrap();
    fs::write(dir.join("profiles/p.toml"), profile).unwrap();
}

fn sparse_copy(from: &Path, to: &Path) -> fs::File {
    let ok = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(ok.success());
    fs::OpenOptions::new().write(true).open(to).unwrap()
}

fn make_base(dir: &Path, base: &Base) -> Option<String> {
    let raw = fixture_raw();
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    match base {
        Base::Fixture => Some(raw.to_string_lossy().into_owned()),
        Base::Overlay(make) => {
            let o = dir.join("overlays/bad");
            fs::create_dir_all(&o).unwrap();
            make(&o);
            Some(raw.to_string_lossy().into_owned())
        }
        Base::NeedsRecovery => {
            let copy = dir.join("recovery.img");
            sparse_copy(&raw, &copy);
            // Mark the root filesystem as having an unreplayed journal, with e2fsprogs' debugfs.
            let root = dir.join("root.ext4");
            let (start, len) = (
                526_336u64 * 512,
                fs::metadata(&copy).unwrap().len() - 526_336 * 512,
            );
            common::extract(&copy, start, len, &root);
            let (ok, _, err) = common::run(
                "debugfs",
                &["-w", "-R", "feature needs_recovery", root.to_str().unwrap()],
            );
            assert!(ok, "{err}");
            let sb = fs::read(&root).unwrap();
            let f = fs::OpenOptions::new().write(true).open(&copy).unwrap();
            f.write_all_at(&sb[..1 << 20], start).unwrap();
            Some(path("recovery.img"))
        }
        Base::None => None,
        Base::Missing => Some(path("nosuch.img")),
        Base::Garbage => {
            fs::write(dir.join("garbage.img"), vec![0x5au8; 1 << 20]).unwrap();
            Some(path("garbage.img"))
        }
        Base::Truncated => {
            // Cut off in the middle of the root partition.
            let copy = sparse_copy(&raw, &dir.join("truncated.img"));
            copy.set_len(300 << 20).unwrap();
            Some(path("truncated.img"))
        }
        Base::NoRoot => {
            // The fixture with the ext4 magic of partition 2 wiped: a FAT-only disk.
            let copy = sparse_copy(&raw, &dir.join("noroot.img"));
            copy.write_all_at(&[0, 0], 526_336 * 512 + 1024 + 0x38)
                .unwrap();
            Some(path("noroot.img"))
        }
    }
}

#[test]
fn broken_profiles_and_images_fail_clearly_and_write_nothing() {
    let cases = cases();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for case in &cases {
        let tmp = tempfile::tempdir().unwrap();
        let profile = match case.edit {
            ("", to) => format!("{GOOD}{to}"),
            (from, to) => {
                assert!(
                    GOOD.contains(from),
                    "{}: '{from}' not in the good profile",
                    case.name
                );
                GOOD.replacen(from, to, 1)
            }
        };
        setup(tmp.path(), &profile);
        let base = make_base(tmp.path(), &case.base);
        let mut args = vec![
            "--profile",
            "profiles/p.toml",
            "build",
            "--all",
            "--out",
            "out",
        ];
        // Never the user's cache, and never the network: a case without --base may only look
        // in an empty cache.
        args.extend(["--cache-dir", "cache"]);
        match &base {
            Some(b) => args.extend(["--base", b.as_str()]),
            None => args.push("--offline"),
        }
        let out = pi_image(tmp.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let out_dir = tmp.path().join("out");
        let leftovers: Vec<_> = fs::read_dir(&out_dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        eprintln!("{:<45} {}", case.name, stderr.trim());
        let mut problems = Vec::new();
        if out.status.success() || out.status.code() != Some(1) {
            problems.push(format!("exit status {:?}", out.status.code()));
        }
        for want in case.expect {
            if !stderr.contains(want) {
                problems.push(format!("message lacks {want:?}"));
            }
        }
        if !leftovers.is_empty() {
            problems.push(format!("left files in out/: {leftovers:?}"));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n    stderr: {}",
                case.name,
                problems.join("; "),
                stderr.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_good_profile_builds() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path(), GOOD);
    let raw = fixture_raw();
    let out = pi_image(
        tmp.path(),
        &[
            "--profile",
            "profiles/p.toml",
            "build",
            "--all",
            "--out",
            "out",
            "--base",
            raw.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tmp.path().join("out/pi1.img").is_file() && tmp.path().join("out/pi2.img").is_file());
}

#[test]
fn unknown_node_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path(), GOOD);
    let raw = fixture_raw();
    let out = pi_image(
        tmp.path(),
        &[
            "--profile",
            "profiles/p.toml",
            "build",
            "--node",
            "pi9",
            "--out",
            "out",
            "--base",
            raw.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no node named 'pi9'") && stderr.contains("pi1, pi2"),
        "{stderr}"
    );
    assert!(!tmp.path().join("out").exists());
}
