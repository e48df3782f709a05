//! Kill trials (issue 14): `build`, `build --compress xz`, `fetch` from a local HTTP server
//! (python3's http.server on 127.0.0.1) and `flash --to-file`, each SIGKILLed at 20 seeded
//! random moments of a run. After every kill: no final path holds an incomplete or unverified
//! file, `cache list` lists only verified images, and the next run succeeds and leaves no temp
//! files or partial downloads. Judged by cmp, sha256sum (-c), xz -t and python3 (json, tomllib).
//!
//! The seed is printed (run with `--nocapture` to see it) and named in every failure;
//! `PI_IMAGE_KILL_SEED=<n>` repeats a run's kill moments (the moments are a share of a completed
//! run's duration measured first, so a loaded machine moves them within the run, not past it).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Rng, fixture_raw, fixture_xz, repo, run, s, sha256, spawn, temps_under};

/// Kills per command.
const TRIALS: u64 = 20;

/// The run's seed: `PI_IMAGE_KILL_SEED`, else the clock.
fn seed() -> u64 {
    match std::env::var("PI_IMAGE_KILL_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PI_IMAGE_KILL_SEED={v:?} is not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// One command under trial: how to run it in a work dir, and what must hold after a kill and
/// after a completed run.
struct Trial<'a> {
    name: &'a str,
    args: Vec<String>,
    /// Checks the work dir after a kill (no final path incomplete or unverified).
    after_kill: &'a dyn Fn(&Path, &str),
    /// Checks the work dir after a completed run (everything there, nothing else).
    after_run: &'a dyn Fn(&Path, &str),
    /// Resets the work dir before a trial: `fresh` for a run that starts from nothing.
    reset: &'a dyn Fn(&Path, bool),
}

/// Run to completion, asserting success; how long it took.
fn complete(dir: &Path, args: &[String], ctx: &str) -> Duration {
    let start = Instant::now();
    let out = spawn(dir, args).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{ctx}: pi-image {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// Run `trial` once to completion (timing it), then kill it `TRIALS` times at seeded moments
/// of that duration, each followed by the checks, a completed run and its checks. Every other
/// trial starts from nothing, the others from a completed run's results.
fn kill_trials(dir: &Path, trial: &Trial) {
    let seed = seed();
    eprintln!(
        "kill trials of {}: seed {seed} (PI_IMAGE_KILL_SEED={seed} repeats them)",
        trial.name
    );
    let mut rng = Rng(seed ^ fnv(trial.name));
    let started = Instant::now();
    (trial.reset)(dir, true);
    let span = complete(dir, &trial.args, &format!("{} (seed {seed})", trial.name));
    (trial.after_run)(dir, &format!("{} (seed {seed}): first run", trial.name));
    for i in 0..TRIALS {
        let fresh = i % 2 == 0;
        (trial.reset)(dir, fresh);
        let at = span.mul_f64(rng.fraction());
        let ctx = format!(
            "{} (seed {seed}), kill {i} at {at:?} of {span:?}{}",
            trial.name,
            if fresh { " from nothing" } else { "" }
        );
        let mut child = spawn(dir, &trial.args);
        std::thread::sleep(at);
        // SAFETY: kill on a process we started and have not waited for.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        child.wait().unwrap();
        (trial.after_kill)(dir, &ctx);
        complete(dir, &trial.args, &format!("{ctx}: the next run"));
        (trial.after_run)(dir, &format!("{ctx}: after the next run"));
        assert_eq!(temps_under(dir), Vec::<PathBuf>::new(), "{ctx}: debris");
    }
    eprintln!(
        "kill trials of {}: {TRIALS} kills, each checked and followed by a checked run, in {:.0?} (a run: {span:.1?})",
        trial.name,
        started.elapsed()
    );
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Every path under `dir` (files and directories), sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&p));
        }
    }
    out.sort();
    out
}

/// Regular files directly in `dir` that are not temps, by name.
fn finals_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().unwrap().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !(n.starts_with('.') && n.ends_with(".tmp")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn cmp(a: &Path, b: &Path, ctx: &str) {
    let (ok, out, err) = run("cmp", &[s(a), s(b)]);
    assert!(ok, "{ctx}: cmp {} {}: {out}{err}", a.display(), b.display());
}

/// Python 3 `code` with `sys.argv[1:]` = `args`, asserting it succeeds.
fn python(code: &str, args: &[&str], ctx: &str) -> String {
    let (ok, out, err) = run("python3", &[&["-c", code][..], args].concat());
    assert!(ok, "{ctx}: python3: {err}");
    out
}

/// A build record, if there is one, parses (python3 json) and gives for each image present the
/// sha256 `sums` has for its name (each computed once by sha256sum from a completed run; the
/// file itself is compared with that run's by cmp).
fn check_record(out: &Path, sums: &[(&str, &str)], ctx: &str) {
    let record = out.join(".pi-image/build.json");
    if !record.exists() {
        return;
    }
    let listed = python(
        "import json, sys\nd = json.load(open(sys.argv[1]))\n\
         for i in d['images'].values(): print(i['file'], i['written']['sha256'])",
        &[s(&record)],
        ctx,
    );
    for line in listed.lines() {
        let (file, sum) = line.split_once(' ').unwrap();
        if out.join(file).exists() {
            let want = sums.iter().find(|(n, _)| *n == file);
            assert_eq!(
                Some(sum),
                want.map(|w| w.1),
                "{ctx}: the build record's sha256 of {file}"
            );
        }
    }
}

const BUILD_FINALS: [&str; 1] = ["pi1.img"];
const XZ_FINALS: [&str; 4] = ["SHA256SUMS", "os_list.json", "pi1.img.bmap", "pi1.img.xz"];

fn build_args(cache: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--profile",
        s(&repo().join("profiles/cluster.toml")),
        "--cache-dir",
        s(cache),
        "build",
        "--node",
        "pi1",
        "--base",
        s(&fixture_xz()),
        "--out",
        "out",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    v.extend(extra.iter().map(|a| a.to_string()));
    v
}

/// `rm -r out` when `fresh`.
fn reset_out(dir: &Path, fresh: bool) {
    if fresh {
        let _ = fs::remove_dir_all(dir.join("out"));
    }
}

#[test]
fn build_killed_anywhere_leaves_only_complete_images() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference.img");
    let reference_sha = std::cell::OnceCell::<String>::new();
    let after_kill = |dir: &Path, ctx: &str| {
        let out = dir.join("out");
        for name in finals_in(&out) {
            assert!(
                BUILD_FINALS.contains(&name.as_str()),
                "{ctx}: {name} in out/"
            );
            cmp(&out.join(&name), &reference, ctx);
        }
        check_record(
            &out,
            &[("pi1.img", reference_sha.get().unwrap().as_str())],
            ctx,
        );
    };
    let after_run = |dir: &Path, ctx: &str| {
        let out = dir.join("out");
        assert_eq!(finals_in(&out), BUILD_FINALS, "{ctx}");
        if !reference.exists() {
            fs::copy(out.join("pi1.img"), &reference).unwrap();
            reference_sha.set(sha256(&reference)).unwrap();
        }
        cmp(&out.join("pi1.img"), &reference, ctx);
        check_record(
            &out,
            &[("pi1.img", reference_sha.get().unwrap().as_str())],
            ctx,
        );
    };
    let trial = Trial {
        name: "build",
        args: build_args(&tmp.path().join("cache"), &[]),
        after_kill: &after_kill,
        after_run: &after_run,
        reset: &reset_out,
    };
    kill_trials(tmp.path(), &trial);
}

#[test]
fn build_compress_killed_anywhere_leaves_a_checking_release() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    let check = |out: &Path, ctx: &str| {
        let finals = finals_in(out);
        for name in &finals {
            assert!(XZ_FINALS.contains(&name.as_str()), "{ctx}: {name} in out/");
        }
        if finals.iter().any(|n| n == "pi1.img.xz") {
            let (ok, o, e) = run("xz", &["-t", s(&out.join("pi1.img.xz"))]);
            assert!(ok, "{ctx}: xz -t: {o}{e}");
        }
        if finals.iter().any(|n| n == "SHA256SUMS") {
            // (A failure's output starts with the trial's seed, printed when it began.)
            common::run_ok(
                Command::new("sha256sum")
                    .args(["-c", "--strict", "SHA256SUMS"])
                    .current_dir(out),
            );
        }
        if finals.iter().any(|n| n == "os_list.json") {
            // Every listed image decompresses to the sha256 the list gives.
            let listed = python(
                "import json, sys\nd = json.load(open(sys.argv[1]))\n\
                 for o in d['os_list']: print(o['url'].rsplit('/', 1)[-1], o['extract_sha256'])",
                &[s(&out.join("os_list.json"))],
                ctx,
            );
            for line in listed.lines() {
                let (file, sum) = line.split_once(' ').unwrap();
                if out.join(file).exists() {
                    let o = Command::new("sh")
                        .arg("-c")
                        .arg(format!("xz -dc '{}' | sha256sum", out.join(file).display()))
                        .output()
                        .unwrap();
                    let got = String::from_utf8_lossy(&o.stdout);
                    assert!(got.starts_with(sum), "{ctx}: {file} decompresses to {got}");
                }
            }
        }
        for name in &finals {
            let r = reference.join(name);
            if r.exists() && name != "os_list.json" {
                cmp(&out.join(name), &r, ctx);
            }
        }
        let xz_sha = sha256(&reference.join("pi1.img.xz"));
        check_record(out, &[("pi1.img.xz", &xz_sha)], ctx);
    };
    let after_kill = |dir: &Path, ctx: &str| check(&dir.join("out"), ctx);
    let after_run = |dir: &Path, ctx: &str| {
        let out = dir.join("out");
        assert_eq!(finals_in(&out), XZ_FINALS, "{ctx}");
        if !reference.exists() {
            fs::create_dir(&reference).unwrap();
            for name in XZ_FINALS {
                fs::copy(out.join(name), reference.join(name)).unwrap();
            }
            // The release decompresses to what a plain build of the node writes.
            complete(dir, &build_args(&dir.join("cache"), &[]), ctx);
            let o = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "xz -dc '{}' | sha256sum",
                    out.join("pi1.img.xz").display()
                ))
                .output()
                .unwrap();
            let plain = sha256(&out.join("pi1.img"));
            assert!(
                String::from_utf8_lossy(&o.stdout).starts_with(&plain),
                "{ctx}: the release is not the plain build's image"
            );
            fs::remove_file(out.join("pi1.img")).unwrap();
        }
        check(&out, ctx);
    };
    let trial = Trial {
        name: "build --compress xz",
        args: build_args(
            &tmp.path().join("cache"),
            &["--compress", "xz", "--level", "1"],
        ),
        after_kill: &after_kill,
        after_run: &after_run,
        reset: &reset_out,
    };
    kill_trials(tmp.path(), &trial);
}

/// python3's http.server serving `dir` on 127.0.0.1 (killed on drop).
struct HttpServer {
    child: Child,
    port: u16,
}

impl HttpServer {
    fn start(dir: &Path) -> HttpServer {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "0",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 (see scripts/deps.txt)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("http.server said {line:?}"));
        HttpServer { child, port }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn fetch_killed_anywhere_caches_only_verified_images() {
    const NAME: &str = "ubuntu-20.04.5-preinstalled-server-arm64+raspi.img.xz";
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    fs::create_dir(&www).unwrap();
    fs::copy(fixture_xz(), www.join(NAME)).unwrap();
    let server = HttpServer::start(&www);
    let xz_sha = sha256(&fixture_xz());
    let raw_sha = sha256(&fixture_raw());
    let work = tmp.path().join("work");
    fs::create_dir_all(work.join("profiles/keys")).unwrap();
    fs::copy(
        repo().join("profiles/keys/demo.pub"),
        work.join("profiles/keys/demo.pub"),
    )
    .unwrap();
    fs::write(
        work.join("profiles/p.toml"),
        format!(
            "[cluster]\nname = \"killtrial\"\n\
             base = \"http://127.0.0.1:{}/{NAME}\"\nbase_sha256 = \"{xz_sha}\"\n\
             [defaults]\nssh_keys = [\"keys/demo.pub\"]\n\
             [[nodes]]\nname = \"pi1\"\naddress = \"192.168.1.11/24\"\n",
            server.port
        ),
    )
    .unwrap();
    let image = format!("{xz_sha}.img");
    let meta = format!("{xz_sha}.toml");
    let cache = work.join("cache");
    let args: Vec<String> = ["--profile", "profiles/p.toml", "--cache-dir", "cache"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let fetch_args: Vec<String> = args.iter().cloned().chain(["fetch".into()]).collect();
    let after_kill = |dir: &Path, ctx: &str| {
        for name in finals_in(&cache) {
            assert!(
                [image.as_str(), meta.as_str(), "lock"].contains(&name.as_str()),
                "{ctx}: {name} in the cache"
            );
        }
        if cache.join(&image).exists() {
            cmp(&cache.join(&image), &fixture_raw(), ctx);
        }
        if cache.join(&meta).exists() {
            let m = python(
                "import sys, tomllib\nd = tomllib.load(open(sys.argv[1], 'rb'))\n\
                 print(d['compressed_sha256'], d['raw_sha256'], d['verification']['method'])",
                &[s(&cache.join(&meta))],
                ctx,
            );
            assert_eq!(
                m.trim(),
                format!("{xz_sha} {raw_sha} pinned-sha256"),
                "{ctx}"
            );
        }
        // `cache list` lists only images that are there, complete and verified.
        let mut list_args = args.clone();
        list_args.extend(["cache".into(), "list".into(), "--json".into()]);
        let o = Command::new(env!("CARGO_BIN_EXE_pi-image"))
            .args(&list_args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{ctx}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let listed = common::python_json(
            &o.stdout,
            "for i in d['images']: print(i['image'], i['raw_sha256'], i['verification']['method'])",
            &[],
        );
        for line in listed.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let img = if Path::new(f[0]).is_absolute() {
                PathBuf::from(f[0])
            } else {
                dir.join(f[0])
            };
            // The image is there, so it was compared with the fixture's raw image above.
            assert_eq!(img, cache.join(&image), "{ctx}: cache list shows {line}");
            assert!(img.exists(), "{ctx}: cache list shows {line}");
            assert_eq!(f[1], raw_sha, "{ctx}: cache list shows {line}");
            assert_eq!(f[2], "pinned-sha256", "{ctx}: cache list shows {line}");
        }
    };
    let after_run = |dir: &Path, ctx: &str| {
        after_kill(dir, ctx);
        assert_eq!(
            finals_in(&cache),
            [image.as_str(), meta.as_str(), "lock"],
            "{ctx}"
        );
        assert_eq!(
            files_under(&cache.join("partial")),
            Vec::<PathBuf>::new(),
            "{ctx}"
        );
    };
    // Every trial starts from an empty cache: a cached image makes `fetch` a no-op.
    let reset = |_: &Path, _: bool| {
        let _ = fs::remove_dir_all(&cache);
    };
    let trial = Trial {
        name: "fetch",
        args: fetch_args,
        after_kill: &after_kill,
        after_run: &after_run,
        reset: &reset,
    };
    kill_trials(&work, &trial);
}

#[test]
fn flash_to_file_killed_anywhere_leaves_the_old_file_or_the_whole_image() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let cards = work.join("cards");
    fs::create_dir_all(&cards).unwrap();
    let card = cards.join("card.img");
    let old = tmp.path().join("old-card.img");
    common::garbage_file(&old, (3 << 20) + 17);
    let args: Vec<String> = ["flash", s(&fixture_xz()), "cards/card.img", "--to-file"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let after_kill = |_: &Path, ctx: &str| {
        assert!(
            finals_in(&cards).len() <= 1,
            "{ctx}: {:?}",
            finals_in(&cards)
        );
        if card.exists() {
            let (same_as_old, _, _) = run("cmp", &[s(&card), s(&old)]);
            if !same_as_old {
                cmp(&card, &fixture_raw(), ctx);
            }
        }
    };
    let after_run = |_: &Path, ctx: &str| {
        assert_eq!(finals_in(&cards), ["card.img"], "{ctx}");
        cmp(&card, &fixture_raw(), ctx);
    };
    // From nothing, or over a used card (a file that is not the image).
    let reset = |_: &Path, fresh: bool| {
        let _ = fs::remove_file(&card);
        if !fresh {
            fs::copy(&old, &card).unwrap();
        }
    };
    let trial = Trial {
        name: "flash --to-file",
        args,
        after_kill: &after_kill,
        after_run: &after_run,
        reset: &reset,
    };
    kill_trials(&work, &trial);
}
