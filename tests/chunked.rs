//! Shared-chunk releases (`build --chunked`, `extract`, `flash --release`) of a cluster with a
//! node set, an SD node, a `decompress_kernel` node and a GPT node: judged by `cmp` against plain
//! builds, by a reader written in python3 from README's description of the format (json,
//! hashlib, lzma), by `sha256sum -c`, and by breaking releases in every way the reader must
//! notice.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{fixture_xz, pi_image, pi_image_ok, repo, run, run_ok, s};

const NODES: [&str; 7] = ["ctl", "w01", "w02", "w03", "w04", "vmlx", "gpt"];

/// The test cluster: a control node on SD, a set of four workers, a node booting a decompressed
/// kernel (its own root filesystem edits: the apt hook) and a GPT node.
fn profile(dir: &Path) -> PathBuf {
    let path = dir.join("scale.toml");
    let repo = repo();
    fs::write(
        &path,
        format!(
            r#"[cluster]
name = "scale"
base = "{base}"
overlays_dir = "{repo}/overlays"

[defaults]
domain = "cluster.lan"
gateway = "10.1.0.1"
ssh_keys = ["{repo}/profiles/keys/demo.pub"]
target = "ssd"
kubernetes = true
overlays = ["k8s-prep"]

[[nodes]]
name = "ctl"
address = "10.1.0.2/16"
target = "sd"

[[node_sets]]
names = "w{{01..04}}"
address = "10.1.0.11/16"

[[nodes]]
name = "vmlx"
address = "10.1.0.3/16"
decompress_kernel = true

[[nodes]]
name = "gpt"
address = "10.1.0.4/16"
partition_table = "gpt"
"#,
            base = fixture_xz().display(),
            repo = repo.display()
        ),
    )
    .unwrap();
    path
}

/// The cluster built once as raw images (`raw/`) and once as a shared-chunk release (`rel/`),
/// with the release's stdout.
struct Built {
    dir: common::ProcessDir,
    profile: PathBuf,
    raw: PathBuf,
    rel: PathBuf,
    stdout: String,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = common::process_tempdir();
        let profile = profile(dir.path());
        let (raw, rel) = (dir.path().join("raw"), dir.path().join("rel"));
        let p = s(&profile);
        pi_image_ok(
            dir.path(),
            &["--profile", p, "build", "--all", "--out", s(&raw)],
        );
        let out = pi_image_ok(
            dir.path(),
            &[
                "--profile",
                p,
                "build",
                "--all",
                "--chunked",
                "--jobs",
                "2",
                "--out",
                s(&rel),
            ],
        );
        Built {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            dir,
            profile,
            raw,
            rel,
        }
    })
}

/// `cmp a b` succeeds.
fn same(a: &Path, b: &Path) {
    let (ok, out, err) = run("cmp", &[s(a), s(b)]);
    assert!(ok, "{} and {} differ: {out}{err}", a.display(), b.display());
}

/// A copy of the release to break.
fn release_copy(to: &Path) -> PathBuf {
    let copy = to.join("rel");
    run_ok(Command::new("cp").args(["-r", s(&built().rel), s(&copy)]));
    copy
}

/// Rewrite `SHA256SUMS` in `rel` for the index files as they are now (what an attacker or a
/// careless edit would do), with sha256sum.
fn resum(rel: &Path) {
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && sha256sum --binary *.chunks.json > SHA256SUMS",
        rel.display()
    )));
}

/// The index of `node` in `rel`, parsed by python3's json, edited by the python statement
/// `edit` (on `d`), written back.
fn edit_index(rel: &Path, node: &str, edit: &str) {
    let script = format!(
        "import json, sys\np = sys.argv[1]\nd = json.load(open(p))\n{edit}\njson.dump(d, open(p, 'w'))\n"
    );
    run_ok(Command::new("python3").args([
        "-c",
        &script,
        s(&rel.join(format!("{node}.chunks.json"))),
    ]));
}

/// The file of chunk `i` of w02's index in `rel`, its digest read by python3's json.
fn w02_chunk_file(rel: &Path, i: usize) -> PathBuf {
    let script =
        format!("import json, sys\nprint(json.load(open(sys.argv[1]))['chunks'][{i}]['sha256'])");
    let out =
        run_ok(Command::new("python3").args(["-c", &script, s(&rel.join("w02.chunks.json"))]));
    rel.join(format!(
        "chunks/{}.xz",
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}

#[test]
fn extracted_and_flashed_images_equal_plain_builds() {
    let b = built();
    let tmp = tempfile::tempdir().unwrap();
    for node in NODES {
        let out = tmp.path().join(format!("{node}.img"));
        let printed = pi_image_ok(
            &repo(),
            &[
                "extract",
                "--release",
                s(&b.rel),
                "--node",
                node,
                "-o",
                s(&out),
            ],
        );
        same(&out, &b.raw.join(format!("{node}.img")));
        let line = String::from_utf8_lossy(&printed.stdout);
        assert!(line.contains(&common::sha256(&out)), "{line}");
        // Sparse: far fewer blocks than bytes (the fixture is mostly free space).
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(&out).unwrap();
        assert!(meta.blocks() * 512 < meta.len() / 4, "{node}: not sparse");
        fs::remove_file(&out).unwrap();
    }
    // flash --release: onto a new file, and onto one full of garbage (every block written).
    for (node, garbage) in [("w02", false), ("gpt", true)] {
        let target = tmp.path().join(format!("{node}.disk"));
        let raw = b.raw.join(format!("{node}.img"));
        if garbage {
            common::garbage_file(&target, fs::metadata(&raw).unwrap().len());
        }
        pi_image_ok(
            &repo(),
            &[
                "flash",
                "--release",
                s(&b.rel),
                "--node",
                node,
                s(&target),
                "--to-file",
            ],
        );
        same(&target, &raw);
    }
}

/// `build --chunked` is recorded like any build (issue 12): the record names the node's index,
/// and `flash DEVICE`, `flash INDEX DEVICE` and `verify INDEX DEVICE` read the node's image
/// from the release the index is in.
#[test]
fn the_build_record_names_the_index_and_flash_and_verify_read_it() {
    let b = built();
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("one");
    let json = pi_image_ok(
        &repo(),
        &[
            "--profile",
            s(&b.profile),
            "build",
            "--node",
            "w03",
            "--chunked",
            "--out",
            s(&one),
            "--json",
        ],
    );
    let index = one.join("w03.chunks.json");
    let index_sha = common::sha256(&index);
    let raw = b.raw.join("w03.img");
    let raw_size = fs::metadata(&raw).unwrap().len().to_string();
    assert_eq!(
        common::python_json(
            &json.stdout,
            "i = d['images'][0]\nprint(d['chunked'], d['os_list'], i['node'], i['path'] == sys.argv[1], i['sha256'] == sys.argv[2], i['raw_size'])",
            &[s(&index), &index_sha],
        ),
        format!("True None w03 True True {raw_size}")
    );
    let record = fs::read(one.join(".pi-image/build.json")).unwrap();
    assert_eq!(
        common::python_json(
            &record,
            "e = d['images']['w03']\nprint(e['file'], e['format'], e['written']['sha256'] == sys.argv[1], d['last_build']['nodes'])",
            &[&index_sha],
        ),
        "w03.chunks.json chunked True ['w03']"
    );
    assert!(!one.join("os_list.json").exists());
    // flash DEVICE: what the last build into --out wrote.
    let card = tmp.path().join("card.img");
    pi_image_ok(&repo(), &["flash", "--out", s(&one), s(&card), "--to-file"]);
    same(&card, &raw);
    // flash INDEX DEVICE, then verify INDEX DEVICE: a match, then a flipped byte (exit 3).
    let other = tmp.path().join("other.img");
    pi_image_ok(&repo(), &["flash", s(&index), s(&other), "--to-file"]);
    same(&other, &raw);
    pi_image_ok(&repo(), &["verify", s(&index), s(&other)]);
    let mut bytes = fs::read(&other).unwrap();
    bytes[1 << 20] ^= 1;
    fs::write(&other, &bytes).unwrap();
    let out = pi_image(&repo(), &["verify", s(&index), s(&other)]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

#[test]
fn python_reads_the_release_from_its_documented_format() {
    let b = built();
    let (ok, out, err) = run(
        "sh",
        &[
            "-c",
            &format!("cd '{}' && sha256sum -c SHA256SUMS", b.rel.display()),
        ],
    );
    assert!(ok && out.lines().count() == NODES.len(), "{out}{err}");
    // A reader written from README "Shared-chunk releases": index → chunks → image.
    let script = r#"
import hashlib, json, lzma, os, sys
rel, node, raw = sys.argv[1:4]
d = json.load(open(os.path.join(rel, node + '.chunks.json')))
assert d['format'] == 'pi-image-chunks/1' and d['node'] == node and d['compression'] == 'xz'
image, at = hashlib.sha256(), 0
for c in d['chunks']:
    assert c['offset'] == at, (c, at)
    stored = open(os.path.join(rel, 'chunks', c['sha256'] + '.xz'), 'rb').read()
    assert len(stored) == c['stored_length'] and hashlib.sha256(stored).hexdigest() == c['stored_sha256']
    data = lzma.decompress(stored)
    assert len(data) == c['length'] and hashlib.sha256(data).hexdigest() == c['sha256']
    image.update(data)
    at += c['length']
assert at == d['image_size'] == os.path.getsize(raw)
want = hashlib.sha256(open(raw, 'rb').read()).hexdigest()
assert image.hexdigest() == want, (image.hexdigest(), want)
print(len(d['chunks']))
"#;
    for node in NODES {
        let raw = b.raw.join(format!("{node}.img"));
        let out = run_ok(Command::new("python3").args(["-c", script, s(&b.rel), node, s(&raw)]));
        let chunks: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(chunks > 12, "{node}: {chunks} chunks");
    }
}

/// Per node: (chunks, new chunks, new KiB) from the summary lines.
fn counts(stdout: &str) -> Vec<(String, usize, usize, f64)> {
    stdout
        .lines()
        .filter(|l| l.contains(".chunks.json"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let at = w.iter().position(|x| *x == "chunks").unwrap();
            (
                w[0].to_string(),
                w[at + 1].trim_end_matches(':').parse().unwrap(),
                w[at + 2].parse().unwrap(),
                w[at + 4].trim_start_matches('(').parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn further_nodes_add_only_their_changed_chunks_and_a_rebuild_adds_none() {
    let b = built();
    let first = counts(&b.stdout);
    assert_eq!(first.len(), NODES.len(), "{}", b.stdout);
    assert!(first[0].2 > 10, "{:?}", first[0]);
    // The set's nodes differ from the first node only in their boot files and MBR.
    for (node, _, new, kib) in &first[2..5] {
        assert!(
            *new <= 8 && *kib < 64.0,
            "{node}: {new} new chunks, {kib} KiB\n{}",
            b.stdout
        );
    }
    // A second run into the same directory checks the chunks there and compresses nothing.
    let out = pi_image_ok(
        b.dir.path(),
        &[
            "--profile",
            s(&b.profile),
            "build",
            "--all",
            "--chunked",
            "--out",
            s(&b.rel),
        ],
    );
    for (node, _, new, _) in counts(&String::from_utf8_lossy(&out.stdout)) {
        assert_eq!(new, 0, "{node} on a rebuild");
    }
}

#[test]
fn a_corrupt_chunk_in_the_store_is_written_again_by_the_next_build() {
    let b = built();
    let tmp = tempfile::tempdir().unwrap();
    let rel = release_copy(tmp.path());
    // Every chunk file garbled (same length): each must be noticed and rewritten.
    for e in fs::read_dir(rel.join("chunks")).unwrap() {
        let p = e.unwrap().path();
        let mut bytes = fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        fs::write(&p, bytes).unwrap();
    }
    pi_image_ok(
        b.dir.path(),
        &[
            "--profile",
            s(&b.profile),
            "build",
            "--node",
            "w03",
            "--chunked",
            "--out",
            s(&rel),
        ],
    );
    let out = tmp.path().join("w03.img");
    pi_image_ok(
        &repo(),
        &[
            "extract",
            "--release",
            s(&rel),
            "--node",
            "w03",
            "-o",
            s(&out),
        ],
    );
    same(&out, &b.raw.join("w03.img"));
}

#[test]
fn image_sha256_goes_into_the_index_and_is_checked() {
    let b = built();
    let tmp = tempfile::tempdir().unwrap();
    let rel = tmp.path().join("rel");
    pi_image_ok(
        b.dir.path(),
        &[
            "--profile",
            s(&b.profile),
            "build",
            "--node",
            "w04",
            "--chunked",
            "--image-sha256",
            "--compress",
            "zstd",
            "--level",
            "3",
            "--out",
            s(&rel),
        ],
    );
    let raw = b.raw.join("w04.img");
    let script = "import json, sys\nprint(json.load(open(sys.argv[1]))['image_sha256'])";
    let got = run_ok(Command::new("python3").args(["-c", script, s(&rel.join("w04.chunks.json"))]));
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        common::sha256(&raw)
    );
    let out = tmp.path().join("w04.img");
    pi_image_ok(
        &repo(),
        &[
            "extract",
            "--release",
            s(&rel),
            "--node",
            "w04",
            "-o",
            s(&out),
        ],
    );
    same(&out, &raw);
    fs::remove_file(&out).unwrap();
    edit_index(&rel, "w04", "d['image_sha256'] = '0' * 64");
    resum(&rel);
    let r = pi_image(
        &repo(),
        &[
            "extract",
            "--release",
            s(&rel),
            "--node",
            "w04",
            "-o",
            s(&out),
        ],
    );
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("the image's sha256 is"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn broken_releases_are_refused_and_leave_no_output() {
    type Break = fn(&Path);
    let cases: Vec<(&str, Break, &str)> = vec![
        (
            "missing chunk",
            |rel| {
                fs::remove_file(w02_chunk_file(rel, 3)).unwrap();
            },
            "missing: the release lacks this chunk",
        ),
        (
            "corrupt chunk",
            |rel| {
                let p = w02_chunk_file(rel, 0);
                let mut bytes = fs::read(&p).unwrap();
                let n = bytes.len();
                bytes[n / 2] ^= 1;
                fs::write(&p, bytes).unwrap();
            },
            "the chunk is corrupt",
        ),
        (
            "chunk of other bytes, index and sums made to match",
            |rel| {
                // A valid xz of other bytes, its stored digest and length put into the index.
                let p = rel.join("chunks/other.xz");
                run_ok(Command::new("sh").arg("-c").arg(format!(
                    "head -c 65536 /dev/zero | tr '\\0' x | xz -6 > '{}'",
                    p.display()
                )));
                let sha = common::sha256(&p);
                let len = fs::metadata(&p).unwrap().len();
                edit_index(
                    rel,
                    "w02",
                    &format!(
                        "c = d['chunks'][0]\nimport os, shutil\nshutil.move(os.path.join(os.path.dirname(p), 'chunks', 'other.xz'), os.path.join(os.path.dirname(p), 'chunks', c['sha256'] + '.xz'))\nc['stored_sha256'] = '{sha}'\nc['stored_length'] = {len}"
                    ),
                );
                resum(rel);
            },
            "decompresses to 65536 bytes with sha256",
        ),
        (
            "chunk outside the release",
            |rel| {
                edit_index(
                    rel,
                    "w02",
                    "d['chunks'][0]['sha256'] = '../../../etc/passwd'",
                );
                resum(rel);
            },
            "chunks[0].sha256: '../../../etc/passwd' is not a sha256",
        ),
        (
            "oversized chunk length",
            |rel| {
                edit_index(
                    rel,
                    "w02",
                    "d['chunks'][-1]['length'] = 1 << 40\nd['image_size'] = sum(c['length'] for c in d['chunks'])",
                );
                resum(rel);
            },
            "is not a chunk length (expected 1 to 33554432 bytes)",
        ),
        (
            "oversized image",
            |rel| {
                edit_index(rel, "w02", "d['image_size'] = 1 << 60");
                resum(rel);
            },
            "image_size: 1152921504606846976 bytes is more than an image can be",
        ),
        (
            "gap between chunks",
            |rel| {
                edit_index(rel, "w02", "del d['chunks'][1]");
                resum(rel);
            },
            "chunks[1].offset",
        ),
        (
            "index changed, sums not",
            |rel| {
                edit_index(rel, "w02", "d['chunks'][0]['stored_length'] += 0");
            },
            "but SHA256SUMS says",
        ),
        (
            "index not listed",
            |rel| {
                fs::write(rel.join("SHA256SUMS"), "").unwrap();
            },
            "does not list w02.chunks.json",
        ),
        (
            "index of another node",
            |rel| {
                fs::copy(rel.join("w03.chunks.json"), rel.join("w02.chunks.json")).unwrap();
                resum(rel);
            },
            "is the index of node 'w03', not 'w02'",
        ),
        (
            "unknown format",
            |rel| {
                edit_index(rel, "w02", "d['format'] = 'pi-image-chunks/9'");
                resum(rel);
            },
            "format: 'pi-image-chunks/9' is not a format this pi-image reads",
        ),
        (
            "chunk file is a directory",
            |rel| {
                let p = w02_chunk_file(rel, 1);
                fs::remove_file(&p).unwrap();
                fs::create_dir(&p).unwrap();
            },
            "not a regular file",
        ),
    ];
    for (what, break_it, says) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let rel = release_copy(tmp.path());
        break_it(&rel);
        let outdir = tmp.path().join("out");
        fs::create_dir(&outdir).unwrap();
        let out = outdir.join("w02.img");
        let r = pi_image(
            &repo(),
            &[
                "extract",
                "--release",
                s(&rel),
                "--node",
                "w02",
                "-o",
                s(&out),
            ],
        );
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && err.contains(says), "{what}: {err}");
        assert!(
            err.contains(s(&rel)),
            "{what}: the error names no file of the release: {err}"
        );
        assert_eq!(
            fs::read_dir(&outdir).unwrap().count(),
            0,
            "{what}: output left behind"
        );
        // flash --release refuses the same release before or while writing, and never leaves
        // a partition table on the target.
        let target = outdir.join("w02.disk");
        let r = pi_image(
            &repo(),
            &[
                "flash",
                "--release",
                s(&rel),
                "--node",
                "w02",
                s(&target),
                "--to-file",
            ],
        );
        assert!(!r.status.success(), "{what}: flash succeeded");
        if target.exists() {
            let head = fs::read(&target).unwrap();
            assert!(
                head.len() < 512 || head[510..512] != [0x55, 0xaa],
                "{what}: a partition table was written"
            );
        }
    }
    // A node name never leaves the release directory.
    let r = pi_image(
        &repo(),
        &[
            "extract",
            "--release",
            s(&built().rel),
            "--node",
            "../rel/w02",
            "-o",
            "/dev/null",
        ],
    );
    assert!(
        !r.status.success() && String::from_utf8_lossy(&r.stderr).contains("is not a node name")
    );
}
