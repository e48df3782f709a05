//! The holes of issue 14, each tried the way an attacker, a flaky machine or an impatient user
//! would try it, through the `pi-image` binary: planted symlinks, signals and kills, crafted
//! profiles, overlays, bases, `.bmap` files and chunk stores. Each test failed before its fix.
//! Judged by the file system itself, sha256sum, xz, python3 and mtools.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixture_raw, fixture_xz, pi_image, pi_image_ok, repo, run, s, sha256};

/// `pi-image` with `args` in `cwd`, started in the background.
fn spawn(cwd: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pi-image"))
        .args(args)
        .current_dir(cwd)
        .env_remove("SOURCE_DATE_EPOCH")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Send `sig` to `child`.
fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill on a process we started and have not waited for.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// Wait (at most 60 s) until `dir` holds an entry whose name `wanted` accepts.
fn wait_for(dir: &Path, wanted: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if wanted(&name) {
                    return name;
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing turned up in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The names in `dir`, sorted (empty if it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Temp files and directories (`.<name>....tmp`) anywhere under `dir`.
fn temps_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
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

fn demo_profile() -> PathBuf {
    repo().join("profiles/cluster.toml")
}

/// (11) 3,000 symlinks planted at the temp names the next processes would have used: the build
/// writes neither the decompressed base nor the image through them.
#[test]
fn hole_11_planted_temp_symlinks_are_never_written_through() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .map(|t| t.trim().parse().unwrap())
        .unwrap_or(32768);
    let last: u32 = fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .map(|t| t.trim().parse().unwrap())
        .unwrap_or_else(|_| std::process::id());
    for i in 1..=3000 {
        let pid = (last + i) % pid_max;
        for name in ["base.raw", "pi1.img"] {
            symlink(&victim, out.join(format!(".{name}.{pid}.tmp"))).unwrap();
        }
    }
    pi_image_ok(
        &repo(),
        &[
            "--profile",
            s(&demo_profile()),
            "build",
            "--node",
            "pi1",
            "--base",
            s(&fixture_xz()),
            "--out",
            s(&out),
        ],
    );
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    let img = fs::symlink_metadata(out.join("pi1.img")).unwrap();
    assert!(img.file_type().is_file());
    assert_eq!(img.len(), fs::metadata(fixture_raw()).unwrap().len());
}

/// (12) SIGTERM and SIGINT: every temp removed, exit status 143 and 130.
#[test]
fn hole_12_sigterm_and_sigint_remove_the_temps_and_exit_143_and_130() {
    for (sig, status) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let child = spawn(
            &repo(),
            &[
                "build",
                "--node",
                "pi1",
                "--base",
                s(&fixture_xz()),
                "--out",
                s(&out),
            ],
        );
        wait_for(&out, |n| n.starts_with(".base.raw."));
        signal(&child, sig);
        let done = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(status), "{err}");
        assert!(err.contains("interrupted"), "{err}");
        assert_eq!(names(&out), Vec::<String>::new(), "left in out/");
    }
}

/// (12) A SIGKILLed build leaves its temps; the next run removes them (their owner is gone).
#[test]
fn hole_12_the_next_run_sweeps_what_a_killed_run_left() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let xz = fixture_xz();
    let args = ["build", "--node", "pi1", "--base", s(&xz), "--out", s(&out)];
    let mut child = spawn(&repo(), &args);
    wait_for(&out, |n| n.starts_with(".base.raw."));
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    assert!(
        !temps_under(&out).is_empty(),
        "the kill left nothing to sweep"
    );
    pi_image_ok(&repo(), &args);
    // The image and its build record (issue 12), no temp anywhere below.
    assert_eq!(names(&out), [".pi-image", "pi1.img"]);
    assert_eq!(temps_under(&out), Vec::<PathBuf>::new());
}

/// (12) A killed `flash --node` (which builds the node into `--out` first) leaves temps there;
/// the next one sweeps them and writes the node, and `cache clean` leaves only the cache's
/// skeleton. (Node images no longer live in the cache: issue 12 builds them into `--out`.)
#[test]
fn hole_12_a_killed_flash_node_is_swept_by_the_next_and_cache_clean_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    let target = tmp.path().join("copy.img");
    let xz = fixture_xz();
    let args = [
        "--cache-dir",
        s(&cache),
        "flash",
        "--node",
        "pi1",
        s(&target),
        "--base",
        s(&xz),
        "--out",
        s(&out),
        "--to-file",
    ];
    let mut child = spawn(&repo(), &args);
    wait_for(&out, |n| n.starts_with(".base.raw."));
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    assert!(
        !temps_under(&out).is_empty(),
        "the kill left nothing to sweep"
    );
    pi_image_ok(&repo(), &args);
    assert_eq!(names(&out), [".pi-image", "pi1.img"]);
    assert_eq!(temps_under(&out), Vec::<PathBuf>::new());
    assert!(
        Command::new("cmp")
            .args([out.join("pi1.img"), target.clone()])
            .status()
            .unwrap()
            .success()
    );
    pi_image_ok(&repo(), &["--cache-dir", s(&cache), "cache", "clean"]);
    assert_eq!(names(&cache), ["lock", "partial"]);
    assert_eq!(names(&cache.join("partial")), Vec::<String>::new());
}

/// The demo key, for profiles made here.
fn demo_key() -> String {
    fs::read_to_string(repo().join("profiles/keys/demo.pub"))
        .unwrap()
        .trim()
        .to_string()
}

/// A work directory with `profile.toml`: one node `pi1` built from the fixture, overlays in
/// `overlays/`, and `node` added to the node's table.
fn project(node: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("overlays")).unwrap();
    fs::write(
        dir.path().join("profile.toml"),
        format!(
            "[cluster]\nname = \"t\"\nbase = \"{}\"\noverlays_dir = \"overlays\"\n\n[[nodes]]\nname = \"pi1\"\n{node}\n",
            fixture_xz().display()
        ),
    )
    .unwrap();
    dir
}

/// `pi-image --profile <dir>/profile.toml ARGS` in `dir`.
fn in_project(dir: &Path, args: &[&str]) -> std::process::Output {
    let profile = dir.join("profile.toml");
    let mut all = vec!["--profile", s(&profile)];
    all.extend_from_slice(args);
    pi_image(dir, &all)
}

/// Assert that `out` failed with every one of `wants` in its stderr.
fn refused(out: std::process::Output, wants: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted; stderr: {err}");
    for w in wants {
        assert!(err.contains(w), "'{w}' missing in: {err}");
    }
}

/// The text of `file` in the boot partition of `img`, by mtools.
fn boot_file(img: &Path, file: &str) -> String {
    let start = common::sfdisk_partitions(img)[0].0;
    let (ok, out, err) = run(
        "mtype",
        &["-i", &format!("{}@@{start}", s(img)), &format!("::{file}")],
    );
    assert!(ok, "mtype {file}: {err}");
    out
}

/// (6) A newline inside an inline key would add `authorized_keys` lines of its own.
#[test]
fn hole_06_a_newline_in_an_ssh_key_is_refused() {
    let key = demo_key();
    let dir = project(&format!(
        "ssh_keys = [\"{key}\\ncommand=\\\"/bin/sh\\\" {key}\"]"
    ));
    refused(
        in_project(dir.path(), &["nodes"]),
        &["nodes[0].ssh_keys", "control character"],
    );
    // Options written into the key itself, inline or in a key file, are refused too.
    let dir = project(&format!("ssh_keys = [\"command=\\\"/bin/sh\\\" {key}\"]"));
    refused(
        in_project(dir.path(), &["nodes"]),
        &["authorized_keys options", "options = [...]"],
    );
    let dir = project("ssh_keys = [\"k.pub\"]");
    fs::write(dir.path().join("k.pub"), format!("no-pty {key}\n")).unwrap();
    refused(
        in_project(dir.path(), &["nodes"]),
        &["k.pub:1:1", "options"],
    );
}

/// (6) Options are taken from the explicit `{ key, options }` form only, each checked.
#[test]
fn hole_06_key_options_only_from_the_explicit_form() {
    let key = demo_key();
    let dir = project(&format!(
        "ssh_keys = [{{ key = \"{key}\", options = [\"from=\\\"10.0.0.0/8\\\"\", \"no-pty\"] }}]"
    ));
    let out = dir.path().join("out");
    let done = in_project(dir.path(), &["build", "--node", "pi1", "--out", s(&out)]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let user_data = boot_file(&out.join("pi1.img"), "user-data");
    assert_eq!(
        common::yaml_eval(&user_data, "d['ssh_authorized_keys']"),
        format!("['from=\"10.0.0.0/8\",no-pty {key}']")
    );
    for bad in [
        "command=\\\"/bin/sh\\\\\\\"x\\\"",
        "from=10.0.0.0/8",
        "shell=\\\"x\\\"",
    ] {
        let dir = project(&format!(
            "ssh_keys = [{{ key = \"{key}\", options = [\"{bad}\"] }}]"
        ));
        refused(
            in_project(dir.path(), &["nodes"]),
            &["nodes[0].ssh_keys", "is not an authorized_keys option"],
        );
    }
}

/// (7) Quotes and control characters in cmdline tokens, control characters in config.txt.
#[test]
fn hole_07_quotes_nul_and_control_characters_in_boot_settings_are_refused() {
    for (node, field) in [
        ("cmdline = [\"a=\\\"b\"]", "nodes[0].cmdline"),
        ("cmdline = [\"a\\u0000b\"]", "nodes[0].cmdline"),
        (
            "[nodes.config_txt.all]\ndtparam = \"audio=on\\u0000x\"",
            "nodes[0].config_txt.all.dtparam",
        ),
        (
            "[nodes.config_txt.all]\ndtparam = \"audio=on\\u001bx\"",
            "nodes[0].config_txt.all.dtparam",
        ),
    ] {
        let dir = project(node);
        refused(in_project(dir.path(), &["nodes"]), &[field]);
    }
}

/// (8) A boot overlay file named like a generated cloud-init file, in any case.
#[test]
fn hole_08_boot_overlays_cannot_replace_generated_files() {
    for name in ["USER-DATA", "meta-data", "Network-Config", "cmdline.txt"] {
        let dir = project("overlays = [\"o\"]");
        let boot = dir.path().join("overlays/o/boot");
        fs::create_dir_all(&boot).unwrap();
        fs::write(boot.join(name), "#cloud-config\n").unwrap();
        let out = dir.path().join("out");
        refused(
            in_project(dir.path(), &["build", "--node", "pi1", "--out", s(&out)]),
            &[name, "generates", "user_data"],
        );
        assert!(!out.join("pi1.img").exists());
    }
}

/// (9) Plain-text passwords in the extra user-data.
#[test]
fn hole_09_plain_text_passwords_in_user_data_are_refused() {
    for (table, path) in [
        (
            "[nodes.user_data.chpasswd]\nlist = [\"ubuntu:hunter2\"]",
            "chpasswd.list[0]",
        ),
        (
            "[[nodes.user_data.users]]\nname = \"bob\"\nplain_text_passwd = \"hunter2\"",
            "users[0].plain_text_passwd",
        ),
        (
            "[[nodes.user_data.users]]\nname = \"bob\"\npasswd = \"hunter2\"",
            "users[0].passwd",
        ),
    ] {
        let dir = project(table);
        refused(
            in_project(dir.path(), &["nodes"]),
            &["nodes[0].user_data", path, "plain-text password"],
        );
    }
}

/// (10) An owner of 4294967295 is -1: "leave unchanged", never a real owner.
#[test]
fn hole_10_owner_minus_one_in_a_manifest_is_refused() {
    for owner in ["4294967295:0", "0:4294967295"] {
        let dir = project("overlays = [\"o\"]");
        let o = dir.path().join("overlays/o");
        fs::create_dir_all(o.join("rootfs/etc")).unwrap();
        fs::write(o.join("rootfs/etc/x.conf"), "x\n").unwrap();
        fs::write(
            o.join("rootfs.toml"),
            format!("[\"etc/x.conf\"]\nowner = \"{owner}\"\n"),
        )
        .unwrap();
        let out = dir.path().join("out");
        refused(
            in_project(dir.path(), &["build", "--node", "pi1", "--out", s(&out)]),
            &["rootfs.toml", "etc/x.conf", "4294967294"],
        );
    }
}

/// The sha256 of what `xz -dc` makes of `file`, by xz and sha256sum.
fn xz_raw_sha256(file: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("xz -dc '{}' | sha256sum", file.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `extract_sha256` of `url` in an os_list.json, read by python3's json.
fn extract_sha256(os_list: &Path, url: &str) -> String {
    let script = format!(
        "import json,sys\nfor e in json.load(open(sys.argv[1]))['os_list']:\n    if e['url'] == '{url}': print(e['extract_sha256'])"
    );
    let (ok, out, err) = run("python3", &["-c", &script, s(os_list)]);
    assert!(ok, "{err}");
    out.trim().to_string()
}

/// (3) A chunk file replaced in the store (here by another valid chunk) is found, compressed
/// again with a warning, and the artifact decompresses to its published sha256.
#[test]
fn hole_03_a_replaced_chunk_is_not_published() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let build = |out: &str| {
        let out = tmp.path().join(out);
        let done = pi_image_ok(
            &repo(),
            &[
                "--cache-dir",
                s(&cache),
                "build",
                "--node",
                "pi1",
                "--compress",
                "xz",
                "--level",
                "1",
                "--base",
                s(&fixture_xz()),
                "--out",
                s(&out),
            ],
        );
        (out, String::from_utf8_lossy(&done.stderr).into_owned())
    };
    let (first, _) = build("d1");
    let store = cache.join("chunks/xz-1");
    let mut chunks: Vec<PathBuf> = fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    chunks.sort_by_key(|p| fs::metadata(p).unwrap().len());
    let (small, large) = (&chunks[0], &chunks[chunks.len() - 1]);
    assert_ne!(sha256(small), sha256(large));
    fs::copy(large, small).unwrap();
    let (second, warnings) = build("d2");
    assert!(
        warnings.contains("compressing it again") && warnings.contains(s(small)),
        "{warnings}"
    );
    for out in [&first, &second] {
        let published = extract_sha256(&out.join("os_list.json"), "pi1.img.xz");
        assert_eq!(xz_raw_sha256(&out.join("pi1.img.xz")), published);
    }
    assert_eq!(
        sha256(&first.join("pi1.img.xz")),
        sha256(&second.join("pi1.img.xz"))
    );
}

/// (13) A release run that fails at its second node leaves a directory that still checks: the
/// first node's new files are listed with their new sums.
#[test]
fn hole_13_a_failed_release_run_leaves_dist_checking() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let big = d.join("overlays/big/rootfs/var");
    fs::create_dir_all(&big).unwrap();
    let write_profile = |pi1: &str, pi2: &str| {
        fs::write(
            d.join("profile.toml"),
            format!(
                "[cluster]\nname = \"t\"\nbase = \"{}\"\noverlays_dir = \"overlays\"\n\n\
                 [[nodes]]\nname = \"pi1\"\n{pi1}\n\n[[nodes]]\nname = \"pi2\"\n{pi2}\n",
                fixture_xz().display()
            ),
        )
        .unwrap();
    };
    let release = |d: &Path| {
        in_project(
            d,
            &[
                "--cache-dir",
                "cache",
                "build",
                "--all",
                "--compress",
                "xz",
                "--level",
                "1",
                "--out",
                "dist",
            ],
        )
    };
    let check = |d: &Path| {
        let out = Command::new("sha256sum")
            .args(["-c", "SHA256SUMS"])
            .current_dir(d.join("dist"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for name in ["pi1.img.xz", "pi2.img.xz"] {
            let published = extract_sha256(&d.join("dist/os_list.json"), name);
            assert_eq!(
                xz_raw_sha256(&d.join("dist").join(name)),
                published,
                "{name}"
            );
        }
    };
    write_profile("", "");
    let done = release(d);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    check(d);
    let before = sha256(&d.join("dist/pi1.img.xz"));
    // pi1 changes; pi2 now fails (an overlay that cannot fit) after pi1 was written.
    fs::File::create(big.join("huge"))
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    write_profile("cmdline = [\"loglevel=3\"]", "overlays = [\"big\"]");
    refused(release(d), &["node pi2", "bytes missing"]);
    assert_ne!(
        sha256(&d.join("dist/pi1.img.xz")),
        before,
        "pi1 was not rebuilt"
    );
    check(d);
    assert!(temps_under(&d.join("dist")).is_empty());
}

/// (4) One range of a `.bmap` without a checksum does not switch off the others: a byte
/// changed in another range is still found (and the unchecked ranges are counted).
#[test]
fn hole_04_a_range_without_checksum_does_not_disable_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("x.img");
    fs::copy(common::demo_images().join("pi1.img"), &img).unwrap();
    pi_image_ok(&repo(), &["bmap", s(&img)]);
    let bmap = tmp.path().join("x.img.bmap");
    // Drop the first range's checksum and fix the file's own checksum, as an editor would.
    let script = r#"
import hashlib, re, sys
p = sys.argv[1]
t = open(p).read()
t = re.sub(r'<Range chksum="[0-9a-f]+">', '<Range>', t, count=1)
old = re.search(r'<BmapFileChecksum> ([0-9a-f]{64}) </BmapFileChecksum>', t).group(1)
t = t.replace(old, '0' * 64, 1)
t = t.replace('0' * 64, hashlib.sha256(t.encode()).hexdigest(), 1)
open(p, 'w').write(t)
"#;
    let (ok, _, err) = run("python3", &["-c", script, s(&bmap)]);
    assert!(ok, "{err}");
    // Change a byte of the root filesystem's superblock (in a later range).
    let offset = common::sfdisk_partitions(&img)[1].0 + 1024 + 100;
    let mut data = fs::read(&img).unwrap();
    data[offset as usize] ^= 1;
    fs::write(&img, &data).unwrap();
    drop(data);
    let target = tmp.path().join("card.img");
    refused(
        pi_image(&repo(), &["flash", s(&img), s(&target), "--to-file"]),
        &[
            "1 of",
            "ranges have no checksum",
            "do not match their sha256 checksum",
        ],
    );
}

/// Run `pi-image args` in the repository, killing it after 60 s: (finished in time, output).
fn within_60s(args: &[&str]) -> (bool, std::process::Output) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pi-image"))
        .args(args)
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            return (false, child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (true, child.wait_with_output().unwrap())
}

/// (14) config.txt files that include the next one twice, forty deep: `inspect` would read
/// 2^40 files; it stops at the bounds and says so.
#[test]
fn hole_14_doubling_include_chains_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("x.img");
    fs::copy(common::demo_images().join("pi1.img"), &img).unwrap();
    let start = common::sfdisk_partitions(&img)[0].0;
    let target = format!("{}@@{start}", s(&img));
    let put = |name: &str, text: String| {
        let file = tmp.path().join(name);
        fs::write(&file, text).unwrap();
        let (ok, _, err) = run(
            "mcopy",
            &["-o", "-i", &target, s(&file), &format!("::{name}")],
        );
        assert!(ok, "mcopy {name}: {err}");
    };
    for i in 0..40 {
        put(
            &format!("f{i}.txt"),
            format!("k{i}=1\ninclude f{0}.txt\ninclude f{0}.txt\n", i + 1),
        );
    }
    put("config.txt", "include f0.txt\n".into());
    let (in_time, out) = within_60s(&["inspect", s(&img)]);
    assert!(in_time, "inspect did not finish within 60 s");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("more than 16 files deep") && text.contains("includes in all"),
        "{text}"
    );
}

/// (14) A GPT entry whose start + length overflows: a clear error, not "Invalid argument" or a
/// panic.
#[test]
fn hole_14_a_gpt_entry_past_the_largest_offset_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("gpt.img");
    fs::copy(common::demo_images().join("gpt/pi3.img"), &img).unwrap();
    // Entry 1 from LBA 2^54 to 2^55: both fit, their byte sum does not. CRCs recomputed.
    let script = r#"
import struct, sys, zlib
f = open(sys.argv[1], 'r+b')
f.seek(512); h = bytearray(f.read(512))
size, = struct.unpack_from('<I', h, 12)
lba, n, esz = struct.unpack_from('<QII', h, 72)
f.seek(lba * 512); e = bytearray(f.read(n * esz))
struct.pack_into('<QQ', e, 32, 1 << 54, 1 << 55)
struct.pack_into('<I', h, 88, zlib.crc32(bytes(e)))
struct.pack_into('<I', h, 16, 0)
struct.pack_into('<I', h, 16, zlib.crc32(bytes(h[:size])))
f.seek(lba * 512); f.write(e)
f.seek(512); f.write(h)
"#;
    let (ok, _, err) = run("python3", &["-c", script, s(&img)]);
    assert!(ok, "{err}");
    let out = pi_image(&repo(), &["inspect", s(&img)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("partition 1") && err.contains("past the largest possible offset"),
        "{err}"
    );
}
