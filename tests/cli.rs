//! The conventions of a CLI people script: `--json` documents (read by python3's json, checked
//! against sha256sum, sfdisk, PyYAML and python's tomllib), exit statuses, shell completions
//! (run by bash, checked by `zsh -n` and `fish --no-execute`), man pages (groff with warnings
//! on), `make install`, and one real example under every subcommand's `--help`.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use clap::CommandFactory;

use common::{
    demo_images, fixture_xz, pi_image, pi_image_ok, python_json, repo, run, run_ok, s, sha256,
};

fn stdout(out: &Output) -> &[u8] {
    &out.stdout
}

#[test]
fn nodes_json_matches_the_profile_as_python_reads_it() {
    let out = pi_image_ok(&repo(), &["nodes", "--json"]);
    // tomllib (Python 3.11+) reads the profile itself: names, addresses, targets, overlays.
    let code = r#"
import tomllib
p = tomllib.load(open(sys.argv[1], 'rb'))
assert d['profile'] == 'profiles/cluster.toml' and d['cluster'] == p['cluster']['name'], d
assert [n['name'] for n in d['nodes']] == [n['name'] for n in p['nodes']], d
for n, t in zip(d['nodes'], p['nodes']):
    assert n['address'] == t['address'], n
    assert n['target'] == t.get('target', p['defaults']['target']), n
    assert n['fqdn'] == n['hostname'] + '.' + p['defaults']['domain'], n
    assert n['gateway'] == p['defaults']['gateway'], n
    assert n['overlays'] == p['defaults']['overlays'], n
    assert n['partition_table'] == 'mbr', n
print(len(d['nodes']))
"#;
    let profile = repo().join("profiles/cluster.toml");
    assert_eq!(python_json(stdout(&out), code, &[s(&profile)]), "5");
}

#[test]
fn inspect_json_agrees_with_sfdisk_and_pyyaml() {
    let img = demo_images().join("pi3.img");
    let out = pi_image_ok(&repo(), &["inspect", s(&img), "--json", "--model", "pi3"]);
    let parts = common::sfdisk_partitions(&img);
    let code = r#"
import yaml
assert d['image'] == sys.argv[1] and d['size'] == int(sys.argv[2]), d['size']
assert d['partition_table'] == 'mbr' and d['disk_id'].startswith('0x'), d
got = [[p['start'], p['size']] for p in d['partitions']]
assert got == json.loads(sys.argv[3]), (got, sys.argv[3])
assert [(p['filesystem'], p['label']) for p in d['partitions']] == [('fat', 'system-boot'), ('ext4', 'writable')], d['partitions']
assert d['release'] == 'Ubuntu 20.04 (focal)' and d['release_problem'] is None, d
assert d['model'] == 'pi3' and 'arm_64bit' in d['config_txt'], d['config_txt']
assert yaml.safe_load(d['files']['user-data'])['hostname'] == 'pi3', d['files']['user-data']
assert 'root=PARTUUID=' in d['files']['cmdline.txt'], d['files']
assert set(d['files']) == {'cmdline.txt', 'user-data', 'network-config', 'meta-data'}, d['files'].keys()
print('ok')
"#;
    let size = fs::metadata(&img).unwrap().len().to_string();
    let expected = format!(
        "[{}]",
        parts
            .iter()
            .map(|(a, b)| format!("[{a}, {b}]"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(
        python_json(stdout(&out), code, &[s(&img), &size, &expected]),
        "ok"
    );
}

#[test]
fn cache_list_json_lists_each_entry_with_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = pi_image_ok(
        &repo(),
        &["--cache-dir", s(&cache), "cache", "list", "--json"],
    );
    assert_eq!(python_json(stdout(&out), "print(d['images'])", &[]), "[]");
    // An entry as a fetch leaves it: the raw image and its metadata, keyed by the sha256.
    let key = "ab".repeat(32);
    fs::write(cache.join(format!("{key}.img")), b"raw").unwrap();
    fs::write(
        cache.join(format!("{key}.toml")),
        format!(
            "source_url = \"https://example.invalid/x.img.xz\"\nrelease = \"Ubuntu 20.04.5\"\n\
             format = \"xz\"\ncompressed_sha256 = \"{key}\"\ncompressed_size = 10\n\
             raw_sha256 = \"{}\"\nraw_size = 3\n\
             fetched_at = \"2024-01-01T00:00:00Z\"\nlast_used = \"2024-01-02T00:00:00Z\"\n\
             [verification]\nmethod = \"signed-sha256sums\"\n\
             sums_url = \"https://example.invalid/SHA256SUMS\"\nkey_fingerprint = \"{}\"\n",
            "cd".repeat(32),
            "AB12".repeat(10)
        ),
    )
    .unwrap();
    let out = pi_image_ok(
        &repo(),
        &["--cache-dir", s(&cache), "cache", "list", "--json"],
    );
    let code = r#"
assert d['cache_dir'] == sys.argv[1], d
[e] = d['images']
assert e['image'] == sys.argv[1] + '/' + sys.argv[2] + '.img', e
assert e['compressed_sha256'] == sys.argv[2] and e['raw_size'] == 3, e
assert e['source_url'] == 'https://example.invalid/x.img.xz' and 'verified_by' not in e, e
assert e['verification'] == {'method': 'signed-sha256sums', 'sums_url': 'https://example.invalid/SHA256SUMS', 'key_fingerprint': 'AB12' * 10}, e
assert e['release'] == 'Ubuntu 20.04.5' and e['last_used'] == '2024-01-02T00:00:00Z', e
print('ok')
"#;
    assert_eq!(python_json(stdout(&out), code, &[s(&cache), &key]), "ok");
}

#[test]
fn build_flash_and_verify_json_agree_with_sha256sum() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let built = pi_image_ok(
        &repo(),
        &[
            "build",
            "--node",
            "pi1",
            "--base",
            s(&fixture_xz()),
            "--out",
            s(&out_dir),
            "--json",
        ],
    );
    let image = out_dir.join("pi1.img");
    let code = r#"
[i] = d['images']
assert d['out_dir'] == sys.argv[1] and d['compress'] is None, d
assert i['node'] == 'pi1' and i['path'] == sys.argv[2], i
assert i['sha256'] == sys.argv[3] and i['size'] == int(sys.argv[4]), i
assert i['target'] == 'sd' and i['release'] == 'Ubuntu 20.04 (focal)', i
assert i['raw_size'] is None and d['sha256sums'] is None and d['os_list'] is None, d
print('ok')
"#;
    let size = fs::metadata(&image).unwrap().len().to_string();
    let sha = sha256(&image);
    assert_eq!(
        python_json(stdout(&built), code, &[s(&out_dir), s(&image), &sha, &size]),
        "ok"
    );

    // Release artifacts: the compressed file's and the raw image's hashes.
    let dist = dir.path().join("dist");
    let built = pi_image_ok(
        &repo(),
        &[
            "--cache-dir",
            s(&dir.path().join("cache")),
            "build",
            "--node",
            "pi1",
            "--base",
            s(&fixture_xz()),
            "--out",
            s(&dist),
            "--compress",
            "gz",
            "--json",
        ],
    );
    let gz = dist.join("pi1.img.gz");
    let code = r#"
[i] = d['images']
assert d['compress'] == 'gz' and i['path'] == sys.argv[1] and i['sha256'] == sys.argv[2], d
assert i['raw_sha256'] == sys.argv[3] and i['raw_size'] == int(sys.argv[4]), i
assert d['sha256sums'].endswith('/SHA256SUMS') and d['os_list'].endswith('/os_list.json'), d
print('ok')
"#;
    assert_eq!(
        python_json(stdout(&built), code, &[s(&gz), &sha256(&gz), &sha, &size]),
        "ok"
    );

    // flash --json: one entry per target; the image's sha256 comes from the build record.
    let card = dir.path().join("card.img");
    let flashed = pi_image_ok(
        &repo(),
        &["flash", s(&image), s(&card), "--to-file", "--json"],
    );
    let code = r#"
[t] = d['targets']
assert t['device'] == sys.argv[1] and t['image'] == sys.argv[2], t
assert t['node'] == 'pi1' and t['image_sha256'] == sys.argv[3], t
assert t['result'] == 'ok' and t['error'] is None and t['bytes_written'] > 0, t
assert t['write_seconds'] >= 0 and t['verify_seconds'] > 0, t
print('ok')
"#;
    assert_eq!(
        python_json(stdout(&flashed), code, &[s(&card), s(&image), &sha]),
        "ok"
    );

    // verify --json: a match, then (one byte flipped) a difference, with exit status 3.
    let verified = pi_image_ok(&repo(), &["verify", s(&image), s(&card), "--json"]);
    let code = "assert d['result'] == 'match' and d['first_difference'] is None and d['bytes_checked'] > 0, d\nprint('ok')";
    assert_eq!(python_json(stdout(&verified), code, &[]), "ok");
    let offset = common::sfdisk_partitions(&image)[1].0 + 1024 + 100;
    let mut bytes = fs::read(&card).unwrap();
    bytes[offset as usize] ^= 0x5a;
    fs::write(&card, &bytes).unwrap();
    let differs = pi_image(&repo(), &["verify", s(&image), s(&card), "--json"]);
    assert_eq!(differs.status.code(), Some(3));
    let code = "assert d['result'] == 'differs' and d['bytes_checked'] is None, d\nprint(d['first_difference'])";
    assert_eq!(python_json(stdout(&differs), code, &[]), offset.to_string());
    assert!(
        String::from_utf8_lossy(&differs.stderr)
            .contains(&format!("first bad byte at offset {offset}"))
    );
}

#[test]
fn exit_statuses_are_0_1_2_and_3_for_a_difference() {
    let code = |args: &[&str]| pi_image(&repo(), args).status.code();
    assert_eq!(code(&["nodes"]), Some(0));
    assert_eq!(code(&["flash", "--help"]), Some(0));
    assert_eq!(code(&["inspect", "/no/such/image.img"]), Some(1));
    assert_eq!(
        code(&["--profile", "/no/such/profile.toml", "nodes"]),
        Some(1)
    );
    assert_eq!(code(&["build"]), Some(2), "neither --node nor --all");
    assert_eq!(code(&["flash", "--no-such-option"]), Some(2));
    assert_eq!(code(&["completions", "tcsh"]), Some(2));
    assert_eq!(code(&[]), Some(2));
    // 3: verify found a difference (an image against a file of other bytes).
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.img");
    let img = demo_images().join("pi1.img");
    common::garbage_file(&other, fs::metadata(&img).unwrap().len());
    assert_eq!(code(&["verify", s(&img), s(&other)]), Some(3));
    // A missing device is an error, not a difference.
    assert_eq!(code(&["verify", s(&img), "/no/such/disk"]), Some(1));
    let help = String::from_utf8_lossy(&pi_image_ok(&repo(), &["--help"]).stdout).into_owned();
    assert!(
        help.contains(
            "Exit status: 0 success, 1 error, 2 usage error (bad arguments), 3 `verify` found a difference."
        ),
        "{help}"
    );
}

/// The example line (`  $ pi-image ...`) of a command's after-help, as arguments: the shell
/// words up to a redirection or pipe, without the leading `sudo`.
fn example_args(cmd: &clap::Command) -> Vec<String> {
    let help = cmd
        .get_after_help()
        .unwrap_or_else(|| panic!("{} has no after_help example", cmd.get_name()))
        .to_string();
    let line = help
        .lines()
        .find_map(|l| l.strip_prefix("  $ "))
        .unwrap_or_else(|| panic!("{}: no '  $ ' example line in {help:?}", cmd.get_name()));
    line.split_whitespace()
        .take_while(|w| !matches!(*w, ">" | "|" | "&&"))
        .filter(|w| *w != "sudo")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_subcommand_help_shows_an_example_that_parses() {
    let root = pi_image::cli::Cli::command();
    let mut seen = 0;
    let mut stack: Vec<(Vec<String>, clap::Command)> = root
        .get_subcommands()
        .map(|c| (vec![c.get_name().to_string()], c.clone()))
        .collect();
    while let Some((path, cmd)) = stack.pop() {
        stack.extend(cmd.get_subcommands().map(|c| {
            let mut p = path.clone();
            p.push(c.get_name().to_string());
            (p, c.clone())
        }));
        let args = example_args(&cmd);
        assert_eq!(args[0], "pi-image", "{path:?}: {args:?}");
        assert!(
            args[1..].starts_with(&path),
            "{path:?}: the example runs another command: {args:?}"
        );
        if let Err(e) = <pi_image::cli::Cli as clap::Parser>::try_parse_from(&args) {
            panic!("{path:?}: example {args:?} does not parse: {e}");
        }
        // The real binary shows it under --help.
        let mut help_args: Vec<&str> = path.iter().map(String::as_str).collect();
        help_args.push("--help");
        let help = pi_image_ok(&repo(), &help_args);
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            text.contains(&format!("  $ {}", args.join(" "))),
            "{path:?} --help lacks its example:\n{text}"
        );
        seen += 1;
    }
    // Every command: build extract fetch cache (list clean) inspect nodes devices flash verify
    // bmap eeprom preview completions man.
    assert_eq!(seen, 16);
}

#[test]
fn completions_are_valid_scripts_that_complete_options() {
    // bash: load the script and ask it to complete `pi-image flash --no`.
    let bash = pi_image_ok(&repo(), &["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("pi-image.bash");
    fs::write(&script, &bash.stdout).unwrap();
    let (ok, out, err) = run(
        "bash",
        &[
            "-c",
            &format!(
                "source '{}'; f=$(complete -p pi-image | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p'); \
                 COMP_WORDS=(pi-image flash --no); COMP_CWORD=2; \"$f\" pi-image --no flash; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                script.display()
            ),
        ],
    );
    assert!(ok, "{err}");
    let words: Vec<&str> = out.lines().collect();
    assert!(
        words.contains(&"--node") && words.contains(&"--no-verify"),
        "{words:?}"
    );
    // fish: load it and ask fish itself what `pi-image flash --no` completes to.
    let fish = pi_image_ok(&repo(), &["completions", "fish"]);
    let script = dir.path().join("pi-image.fish");
    fs::write(&script, &fish.stdout).unwrap();
    let (ok, out, err) = run(
        "fish",
        &[
            "--no-config",
            "-c",
            &format!(
                "source '{}'; complete -C 'pi-image flash --no'",
                script.display()
            ),
        ],
    );
    assert!(ok, "{err}");
    let words: Vec<&str> = out.lines().filter_map(|l| l.split('\t').next()).collect();
    assert!(
        words.contains(&"--node") && words.contains(&"--no-verify"),
        "{words:?}"
    );
    for (shell, checker, args) in [
        ("zsh", "zsh", &["-n"][..]),
        ("fish", "fish", &["--no-execute"][..]),
    ] {
        let text = pi_image_ok(&repo(), &["completions", shell]);
        let file = dir.path().join(format!("pi-image.{shell}"));
        fs::write(&file, &text.stdout).unwrap();
        let mut full: Vec<&str> = args.to_vec();
        full.push(s(&file));
        let (ok, out, err) = run(checker, &full);
        assert!(ok, "{checker} {full:?}: {out}{err}");
        let t = String::from_utf8_lossy(&text.stdout);
        assert!(t.contains("flash") && t.contains("no-verify"), "{shell}");
    }
}

/// groff's warnings for the man page at `page`, rendered with the man macros (empty if clean).
fn groff_warnings(page: &Path) -> String {
    let out = Command::new("groff")
        .args(["-man", "-ww", "-z", "-Tutf8"])
        .arg(page)
        .output()
        .expect("groff (package groff-base, see scripts/deps.txt)");
    assert!(out.status.success(), "groff on {}", page.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn man_pages_render_cleanly_with_examples_and_exit_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("stdout.1");
    fs::write(&main, pi_image_ok(&repo(), &["man"]).stdout).unwrap();
    assert_eq!(groff_warnings(&main), "", "pi-image man");
    let pages = dir.path().join("man1");
    pi_image_ok(&repo(), &["man", "--dir", s(&pages)]);
    let mut names: Vec<String> = fs::read_dir(&pages)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for want in [
        "pi-image.1",
        "pi-image-flash.1",
        "pi-image-cache-list.1",
        "pi-image-man.1",
        "pi-image-extract.1",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    assert_eq!(names.len(), 17, "{names:?}");
    for n in &names {
        assert_eq!(groff_warnings(&pages.join(n)), "", "{n}");
    }
    assert!(
        fs::read_to_string(pages.join("pi-image.1")).unwrap() == fs::read_to_string(&main).unwrap(),
        "`pi-image man` differs from the pi-image.1 that --dir writes"
    );
    // Rendered as text (groff, not our own output): the flash page has its example, the main
    // page the exit statuses.
    let text = |page: &str| {
        let out = run_ok(
            Command::new("groff")
                .args(["-man", "-Tutf8", "-P-cbou", "-rLL=300n", "-rHY=0"])
                .arg(pages.join(page)),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        text("pi-image-flash.1").contains("$ pi-image flash /dev/sdb --node pi3"),
        "{}",
        text("pi-image-flash.1")
    );
    let main_text = text("pi-image.1");
    assert!(
        main_text.contains("3 `verify` found a difference")
            && main_text.contains("pi-image-flash(1)"),
        "{main_text}"
    );
}

#[test]
fn make_install_puts_binary_man_pages_and_completions_under_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("prefix");
    // The real install target, with the build step a no-op (CARGO=true): this test binary's
    // pi-image is installed, so no second cargo runs inside the test.
    let out = run_ok(
        Command::new("make")
            .args(["--no-print-directory", "install", "CARGO=true"])
            .arg(format!("BIN={}", env!("CARGO_BIN_EXE_pi-image")))
            .arg(format!("PREFIX={}", prefix.display()))
            .current_dir(repo()),
    );
    let log = String::from_utf8_lossy(&out.stdout);
    let bin = prefix.join("bin/pi-image");
    let version = run_ok(Command::new(&bin).arg("--version"));
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("pi-image "),
        "{log}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    for f in [
        "share/man/man1/pi-image.1",
        "share/man/man1/pi-image-flash.1",
        "share/bash-completion/completions/pi-image",
        "share/zsh/site-functions/_pi-image",
        "share/fish/vendor_completions.d/pi-image.fish",
    ] {
        let p = prefix.join(f);
        assert!(
            fs::metadata(&p).is_ok_and(|m| m.len() > 100),
            "{f} missing or empty:\n{log}"
        );
    }
    // The installed page, rendered by groff.
    let page = run_ok(
        Command::new("groff")
            .args(["-man", "-Tutf8", "-P-cbou", "-rLL=300n", "-rHY=0"])
            .arg(prefix.join("share/man/man1/pi-image-verify.1")),
    );
    assert!(
        String::from_utf8_lossy(&page.stdout).contains("pi-image verify out/pi3.img /dev/sdb"),
        "{}",
        String::from_utf8_lossy(&page.stdout)
    );
}
