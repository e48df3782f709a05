//! Release artifacts (`build --compress`, `--shard`): judged with xz/zstd/gzip -t, cmp against the
//! raw images a plain build makes, `sha256sum -c`, python3's json, debugfs and PyYAML.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::{extract, fixture_xz, pi_image, pi_image_ok, repo, run, run_ok};

const NODES: [&str; 5] = ["pi1", "pi2", "pi3", "pi4", "pi5"];
const ROOT_START: u64 = 526_336 * 512;
const ROOT_LEN: u64 = 96 << 20;

/// `pi-image build --base <fixture> ARGS --out OUT --cache-dir CACHE` in the repository.
fn build(out: &Path, cache: &Path, args: &[&str]) -> Output {
    let base = fixture_xz();
    let mut all = vec![
        "build",
        "--base",
        base.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    pi_image_ok(&repo(), &all)
}

/// The demo cluster built once as plain raw images, the reference every artifact must decode to.
fn raw_images() -> &'static Path {
    static OUT: OnceLock<(common::ProcessDir, PathBuf)> = OnceLock::new();
    &OUT.get_or_init(|| {
        let dir = common::process_tempdir();
        let out = dir.path().join("raw");
        build(&out, &dir.path().join("cache"), &["--all"]);
        (dir, out)
    })
    .1
}

/// The demo cluster built once with `--compress xz --jobs 2`: (dist dir, cache dir, stdout).
fn xz_release() -> &'static (common::ProcessDir, PathBuf, PathBuf, String) {
    static OUT: OnceLock<(common::ProcessDir, PathBuf, PathBuf, String)> = OnceLock::new();
    OUT.get_or_init(|| {
        let dir = common::process_tempdir();
        let (dist, cache) = (dir.path().join("dist"), dir.path().join("cache"));
        let out = build(&dist, &cache, &["--all", "--compress", "xz", "--jobs", "2"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (dir, dist, cache, stdout)
    })
}

/// The files of a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Decompress `file` with the real tool into `dest` and `cmp` it with `expected`.
fn decompresses_to(tool: &str, file: &Path, dest: &Path, expected: &Path) {
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "{tool} -dc '{}' > '{}'",
        file.display(),
        dest.display()
    )));
    let (same, out, err) = run("cmp", &[dest.to_str().unwrap(), expected.to_str().unwrap()]);
    assert!(
        same,
        "{} does not decompress to {}: {out}{err}",
        file.display(),
        expected.display()
    );
}

/// (compressed, from cache) chunk counts per node from a build's summary lines.
fn chunk_counts(stdout: &str) -> BTreeMap<String, (usize, usize)> {
    stdout
        .lines()
        .filter_map(|l| {
            let node = l.split_whitespace().next()?.to_string();
            let tail = l.split("chunks ").nth(1)?;
            let nums: Vec<usize> = tail
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            Some((node, (nums[1], nums[2])))
        })
        .collect()
}

#[test]
fn xz_artifacts_test_ok_and_decompress_to_the_raw_images() {
    let (_dir, dist, _, _) = xz_release();
    let mut expected: Vec<String> = NODES
        .iter()
        .flat_map(|n| [format!("{n}.img.xz"), format!("{n}.img.bmap")])
        .collect();
    expected.extend(["SHA256SUMS".to_string(), "os_list.json".to_string()]);
    // The build record, hidden: the CI merge (`shards/*/*`) and artifact upload skip it.
    expected.push(".pi-image".to_string());
    expected.sort();
    assert_eq!(
        listing(dist),
        expected,
        "dist/ holds exactly the artifacts, the index and the build record"
    );
    let tmp = tempfile::tempdir().unwrap();
    for node in NODES {
        let file = dist.join(format!("{node}.img.xz"));
        let (ok, _, err) = run("xz", &["-t", file.to_str().unwrap()]);
        assert!(ok, "xz -t {node}: {err}");
        decompresses_to(
            "xz",
            &file,
            &tmp.path().join(format!("{node}.img")),
            &raw_images().join(format!("{node}.img")),
        );
    }
}

#[test]
fn sha256sums_and_os_list_match_the_files() {
    let (_dir, dist, _, _) = xz_release();
    run_ok(
        Command::new("sha256sum")
            .args(["-c", "--strict", "SHA256SUMS"])
            .current_dir(dist),
    );
    let sums = fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    let files: Vec<&str> = sums
        .lines()
        .map(|l| l.split_once(" *").unwrap().1)
        .collect();
    let mut expected: Vec<String> = NODES
        .iter()
        .flat_map(|n| [format!("{n}.img.bmap"), format!("{n}.img.xz")])
        .collect();
    expected.sort();
    assert_eq!(files, expected);

    // python3's json and hashlib check every entry against the compressed file and the raw image.
    let script = r#"
import hashlib, json, os, sys
dist, raw = sys.argv[1], sys.argv[2]
def sha(p):
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        for b in iter(lambda: f.read(1 << 20), b''):
            h.update(b)
    return h.hexdigest()
d = json.load(open(os.path.join(dist, 'os_list.json')))
assert list(d) == ['os_list'], d.keys()
for e in d['os_list']:
    f = os.path.join(dist, e['url'])
    node = e['url'].split('.')[0]
    r = os.path.join(raw, node + '.img')
    assert '/' not in e['url']
    assert isinstance(e['extract_size'], int) and isinstance(e['image_download_size'], int)
    assert e['image_download_size'] == os.path.getsize(f), e
    assert e['image_download_sha256'] == sha(f), e
    assert e['extract_size'] == os.path.getsize(r), e
    assert e['extract_sha256'] == sha(r), e
    assert e['release_date'] == '2022-09-01', e
    assert e['name'] and e['description'], e
    # A built-in Imager icon; the boards the node boots (pi1 boots from SD, the others from a
    # USB SSD, which only the Pi 4 path supports); no init_format, so Imager leaves cloud-init
    # alone.
    assert e['icon'] == 'icons/cat_other_general_purpose_operating_systems.png', e
    assert e['devices'] == (['pi3-64bit', 'pi4-64bit'] if node == 'pi1' else ['pi4-64bit']), e
    assert 'init_format' not in e, e
    print(e['url'])
"#;
    let out = run_ok(Command::new("python3").args([
        "-c",
        script,
        dist.to_str().unwrap(),
        raw_images().to_str().unwrap(),
    ]));
    let urls = String::from_utf8_lossy(&out.stdout);
    assert_eq!(urls.lines().count(), 5, "{urls}");
}

/// `os_list.json` validates against Raspberry Pi Imager's published schema (committed in
/// tests/fixtures/rpi-imager, Apache-2.0) with python3's `jsonschema`; the same list without
/// `icon`, or with a `devices` that is not a list, does not (the check can fail).
#[test]
fn os_list_validates_against_rpi_imagers_schema() {
    let (_dir, dist, _, _) = xz_release();
    let script = r#"
import copy, json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
doc = json.load(open(sys.argv[2]))
jsonschema.validate(doc, schema)
for field, value in [('icon', None), ('devices', 'pi4-64bit')]:
    bad = copy.deepcopy(doc)
    if value is None:
        del bad['os_list'][0][field]
    else:
        bad['os_list'][0][field] = value
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError:
        continue
    sys.exit('the schema accepted an entry with a broken ' + field)
print(len(doc['os_list']))
"#;
    let out = run_ok(
        Command::new("python3").args([
            "-c",
            script,
            repo()
                .join("tests/fixtures/rpi-imager/os-list-schema.json")
                .to_str()
                .unwrap(),
            dist.join("os_list.json").to_str().unwrap(),
        ]),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
}

#[test]
fn zstd_and_gzip_artifacts_test_ok_and_decompress_to_the_raw_images() {
    let dir = tempfile::tempdir().unwrap();
    for (format, tool, ext) in [("zstd", "zstd", "zst"), ("gz", "gzip", "gz")] {
        let dist = dir.path().join(format);
        build(
            &dist,
            &dir.path().join("cache"),
            &["--node", "pi1", "--node", "pi5", "--compress", format],
        );
        for node in ["pi1", "pi5"] {
            let file = dist.join(format!("{node}.img.{ext}"));
            let (ok, _, err) = run(tool, &["-t", file.to_str().unwrap()]);
            assert!(ok, "{tool} -t {node}: {err}");
            decompresses_to(
                tool,
                &file,
                &dir.path().join("out.img"),
                &raw_images().join(format!("{node}.img")),
            );
        }
        run_ok(
            Command::new("sha256sum")
                .args(["-c", "SHA256SUMS"])
                .current_dir(&dist),
        );
    }
}

/// Two builds with different output, cache and temp directories and thread counts give
/// byte-identical files; `SOURCE_DATE_EPOCH` is honoured.
#[test]
fn artifacts_are_reproducible_across_dirs_and_thread_counts() {
    let (_dir, dist, _, _) = xz_release();
    let other = tempfile::tempdir().unwrap();
    let tmp = other.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let dist2 = other.path().join("elsewhere/dist");
    let out = Command::new(env!("CARGO_BIN_EXE_pi-image"))
        .args([
            "build",
            "--all",
            "--compress",
            "xz",
            "--jobs",
            "1",
            "--base",
        ])
        .arg(fixture_xz())
        .arg("--out")
        .arg(&dist2)
        .arg("--cache-dir")
        .arg(other.path().join("cache2"))
        .arg("--profile")
        .arg(repo().join("profiles/cluster.toml"))
        .current_dir(other.path())
        .env("TMPDIR", &tmp)
        .env("SOURCE_DATE_EPOCH", "1662033600")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(listing(dist), listing(&dist2));
    // Everything but the build record (times and paths of this machine) is byte-identical.
    for name in listing(dist).into_iter().filter(|n| n != ".pi-image") {
        let (same, o, e) = run(
            "cmp",
            &[
                dist.join(&name).to_str().unwrap(),
                dist2.join(&name).to_str().unwrap(),
            ],
        );
        assert!(same, "{name} differs between the two builds: {o}{e}");
    }

    // Another epoch: other file times inside the image, another release date.
    let dist3 = other.path().join("dist3");
    let out = Command::new(env!("CARGO_BIN_EXE_pi-image"))
        .args(["build", "--node", "pi1", "--compress", "xz", "--base"])
        .arg(fixture_xz())
        .arg("--out")
        .arg(&dist3)
        .arg("--cache-dir")
        .arg(other.path().join("cache2"))
        .current_dir(repo())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = fs::read_to_string(dist3.join("os_list.json")).unwrap();
    assert!(list.contains("\"release_date\": \"2023-11-14\""), "{list}");
    assert_ne!(
        fs::read(dist3.join("pi1.img.xz")).unwrap(),
        fs::read(dist.join("pi1.img.xz")).unwrap()
    );
}

#[test]
fn later_nodes_and_rebuilds_reuse_cached_chunks() {
    let (_dir, _, cache, stdout) = xz_release();
    let first = chunk_counts(stdout);
    assert_eq!(first.len(), 5, "{stdout}");
    // The fixture is 353 MiB: 12 chunks of 32 MiB. The first node compresses every distinct
    // chunk; the others share all but the few their edits touched.
    let (c1, r1) = first["pi1"];
    assert!(c1 >= 2 && r1 == 0, "pi1: {c1} compressed, {r1} reused");
    for node in &NODES[1..] {
        let (c, r) = first[*node];
        assert!(
            (1..=3).contains(&c) && r >= 9,
            "{node}: {c} compressed, {r} reused\n{stdout}"
        );
    }
    // A second run with the same cache compresses nothing.
    let dir = tempfile::tempdir().unwrap();
    let out = build(
        &dir.path().join("dist"),
        cache,
        &["--all", "--compress", "xz"],
    );
    let again = chunk_counts(&String::from_utf8_lossy(&out.stdout));
    for node in NODES {
        assert_eq!(again[node], (0, 12), "{node} on a rebuild");
    }
    // `cache clean` removes the chunks with everything else.
    let chunks = cache.join("chunks/xz-6");
    assert!(fs::read_dir(&chunks).unwrap().count() > 5);
    pi_image_ok(
        &repo(),
        &["--cache-dir", cache.to_str().unwrap(), "cache", "clean"],
    );
    assert_eq!(
        fs::read_dir(&chunks).unwrap().count(),
        0,
        "chunks left after cache clean"
    );
}

/// A node whose overlay writes a large file into the root filesystem: chunks beyond the boot
/// region change, and the artifact still decodes to the raw image, file included.
#[test]
fn rootfs_overlay_changes_later_chunks_and_still_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let blob_dir = dir.path().join("overlays/blob/rootfs/opt");
    fs::create_dir_all(&blob_dir).unwrap();
    // 12 MiB of incompressible bytes (xorshift), so the file's blocks hold real data.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let blob: Vec<u8> = (0..12 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    fs::write(blob_dir.join("blob.bin"), &blob).unwrap();
    let profile = dir.path().join("profiles/p.toml");
    fs::create_dir_all(profile.parent().unwrap()).unwrap();
    fs::write(
        &profile,
        "[cluster]\nname = \"t\"\nbase = \"base.img.xz\"\n\n\
         [[nodes]]\nname = \"plain\"\n\n[[nodes]]\nname = \"big\"\noverlays = [\"blob\"]\n",
    )
    .unwrap();
    fs::copy(fixture_xz(), dir.path().join("profiles/base.img.xz")).unwrap();
    let p = profile.to_str().unwrap();
    let cache = dir.path().join("cache");
    let raw = dir.path().join("raw");
    let dist = dir.path().join("dist");
    let args = |out: &Path| {
        vec![
            "--profile".to_string(),
            p.to_string(),
            "build".to_string(),
            "--all".to_string(),
            "--out".to_string(),
            out.display().to_string(),
            "--cache-dir".to_string(),
            cache.display().to_string(),
        ]
    };
    let plain: Vec<String> = args(&raw);
    pi_image_ok(
        dir.path(),
        &plain.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut compressed = args(&dist);
    compressed.extend(["--compress".to_string(), "xz".to_string()]);
    let out = pi_image_ok(
        dir.path(),
        &compressed.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let counts = chunk_counts(&String::from_utf8_lossy(&out.stdout));
    // python3 compares the two raw images chunk by chunk: "big" must differ from "plain" inside
    // the root filesystem, and pi-image must have compressed exactly the differing chunks.
    let script = r#"
import sys
a, b, root, size = open(sys.argv[1], 'rb'), open(sys.argv[2], 'rb'), int(sys.argv[3]), 32 << 20
diff, in_root, i = 0, False, 0
while True:
    x, y = a.read(size), b.read(size)
    if not x and not y:
        break
    if x != y:
        diff += 1
        skip = max(0, root - i * size)
        in_root = in_root or x[skip:] != y[skip:]
    i += 1
print(diff, in_root)
"#;
    let compared = run_ok(Command::new("python3").args([
        "-c",
        script,
        raw.join("plain.img").to_str().unwrap(),
        raw.join("big.img").to_str().unwrap(),
        &ROOT_START.to_string(),
    ]));
    let compared = String::from_utf8_lossy(&compared.stdout);
    assert_eq!(
        compared.trim(),
        format!("{} True", counts["big"].0),
        "chunks differing from plain (python) vs compressed for big (pi-image): {counts:?}"
    );
    assert!(counts["big"].0 >= 2, "{counts:?}");
    let decoded = dir.path().join("big.img");
    decompresses_to(
        "xz",
        &dist.join("big.img.xz"),
        &decoded,
        &raw.join("big.img"),
    );
    // debugfs reads the file back from the decompressed image's root filesystem.
    let rootfs = dir.path().join("root.ext4");
    extract(&decoded, ROOT_START, ROOT_LEN, &rootfs);
    let dumped = dir.path().join("blob.out");
    let (ok, _, err) = run(
        "debugfs",
        &[
            "-R",
            &format!("dump /opt/blob.bin {}", dumped.display()),
            rootfs.to_str().unwrap(),
        ],
    );
    assert!(ok, "debugfs: {err}");
    assert!(fs::read(&dumped).unwrap() == blob, "/opt/blob.bin differs");
    let (ok, out, err) = run("e2fsck", &["-fn", rootfs.to_str().unwrap()]);
    assert!(ok, "e2fsck: {out}{err}");
}

/// Shards 1/2 and 2/2 build every node exactly once; run into one directory, the index ends up
/// complete; run apart, the workflow's merge step joins them.
#[test]
fn shards_cover_every_node_once_and_indexes_merge() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mut seen = Vec::new();
    for k in 1..=2 {
        let shard_dir = dir.path().join(format!("shards/{k}"));
        let out = build(
            &shard_dir,
            &cache,
            &["--all", "--shard", &format!("{k}/2"), "--compress", "xz"],
        );
        let built: Vec<String> = chunk_counts(&String::from_utf8_lossy(&out.stdout))
            .into_keys()
            .collect();
        for node in &built {
            assert!(shard_dir.join(format!("{node}.img.xz")).is_file());
        }
        seen.extend(built);
    }
    seen.sort();
    assert_eq!(seen, NODES, "every node exactly once across 1/2 and 2/2");
    assert!(dir.path().join("shards/1/pi1.img.xz").is_file());
    assert!(dir.path().join("shards/1/pi3.img.xz").is_file());
    assert!(dir.path().join("shards/2/pi2.img.xz").is_file());

    // Shard 2/2 into shard 1's directory: the index keeps shard 1's entries.
    let together = dir.path().join("together");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(dir.path().join("shards/1"))
            .arg(&together),
    );
    build(
        &together,
        &cache,
        &["--all", "--shard", "2/2", "--compress", "xz"],
    );
    run_ok(
        Command::new("sha256sum")
            .args(["-c", "SHA256SUMS"])
            .current_dir(&together),
    );
    let sums = fs::read_to_string(together.join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), 10, "{sums}");

    // The workflow's merge job, run as written on the two shard directories.
    let script = common::yaml_eval(
        &fs::read_to_string(repo().join(".github/workflows/images.yml")).unwrap(),
        "[s['run'] for s in d['jobs']['merge']['steps'] if s.get('name') == 'Merge the shards'][0]",
    );
    let merged = dir.path().join("merge");
    fs::create_dir(&merged).unwrap();
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(dir.path().join("shards"))
            .arg(&merged),
    );
    run_ok(
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(&merged),
    );
    let dist = merged.join("dist");
    run_ok(
        Command::new("sha256sum")
            .args(["-c", "--strict", "SHA256SUMS"])
            .current_dir(&dist),
    );
    assert_eq!(
        fs::read_to_string(dist.join("SHA256SUMS")).unwrap(),
        sums,
        "the merge job's SHA256SUMS equals the one pi-image writes"
    );
    assert_eq!(
        fs::read_to_string(dist.join("os_list.json")).unwrap(),
        fs::read_to_string(together.join("os_list.json")).unwrap(),
        "the merge job's os_list.json equals the one pi-image writes"
    );
}

/// `bmaptool copy` with our `.bmap` and `.xz` writes a file equal to the raw image in every range
/// the map lists (python3's XML parser reads the ranges), and the map covers every non-zero block.
#[test]
fn bmaptool_copy_with_our_bmap_writes_every_mapped_range() {
    let (_dir, dist, _, _) = xz_release();
    let tmp = tempfile::tempdir().unwrap();
    for node in ["pi1", "pi3"] {
        let copy = tmp.path().join(format!("{node}.copy"));
        run_ok(Command::new("bmaptool").args([
            "copy",
            "--bmap",
            dist.join(format!("{node}.img.bmap")).to_str().unwrap(),
            dist.join(format!("{node}.img.xz")).to_str().unwrap(),
            copy.to_str().unwrap(),
        ]));
        let script = r#"
import sys, xml.etree.ElementTree as ET
bmap, raw, copy = sys.argv[1:4]
root = ET.parse(bmap).getroot()
bs = int(root.find('BlockSize').text)
size = int(root.find('ImageSize').text)
ranges = []
for r in root.find('BlockMap'):
    a, _, b = r.text.strip().partition('-')
    ranges.append((int(a), int(b or a)))
mapped = 0
with open(raw, 'rb') as f, open(copy, 'rb') as g:
    for a, b in ranges:
        f.seek(a * bs); g.seek(a * bs)
        n = min((b + 1) * bs, size) - a * bs
        assert f.read(n) == g.read(n), (a, b)
        mapped += n
    # Every non-zero block of the raw image is mapped.
    starts = sorted(ranges)
    f.seek(0)
    blk, i = 0, 0
    zero = bytes(bs)
    while True:
        data = f.read(bs)
        if not data:
            break
        while i < len(starts) and starts[i][1] < blk:
            i += 1
        inside = i < len(starts) and starts[i][0] <= blk <= starts[i][1]
        assert inside or data == zero[:len(data)], blk
        blk += 1
print(len(ranges), mapped)
"#;
        let out = run_ok(Command::new("python3").args([
            "-c",
            script,
            dist.join(format!("{node}.img.bmap")).to_str().unwrap(),
            raw_images().join(format!("{node}.img")).to_str().unwrap(),
            copy.to_str().unwrap(),
        ]));
        let summary = String::from_utf8_lossy(&out.stdout);
        let ranges: usize = summary.split_whitespace().next().unwrap().parse().unwrap();
        assert!(ranges > 0, "{node}: {summary}");
    }
}

#[test]
fn workflow_is_valid_yaml_with_a_shard_matrix() {
    let text = fs::read_to_string(repo().join(".github/workflows/images.yml")).unwrap();
    let shards = common::yaml_eval(&text, "d['jobs']['build']['strategy']['matrix']['shard']");
    assert!(shards.contains("1/2") && shards.contains("2/2"), "{shards}");
    let run = common::yaml_eval(
        &text,
        "' '.join(s.get('run', '') for s in d['jobs']['build']['steps'])",
    );
    assert!(
        run.contains("--compress xz") && run.contains("--shard ${{ matrix.shard }}"),
        "{run}"
    );
    // The workflow and .ci/run install from the one package list, scripts/deps.txt.
    let ci = fs::read_to_string(repo().join(".ci/run")).unwrap();
    assert!(ci.contains("scripts/deps.sh boot"), "{ci}");
    assert!(run.contains("scripts/deps.sh build"), "{run}");
}

#[test]
fn bad_release_options_fail_clearly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dist");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--all", "--shard", "0/4", "--compress", "xz"],
            "expected K/N",
        ),
        (
            &["--all", "--shard", "2/4x", "--compress", "xz"],
            "expected K/N",
        ),
        (&["--all", "--shard", "5/4"], "expected K/N"),
        (&["--all", "--compress", "lz4"], "expected xz, zstd or gz"),
        (
            &["--all", "--compress", "xz", "--level", "12"],
            "expected 0 to 9",
        ),
    ];
    let base = fixture_xz();
    for (args, expect) in cases {
        let mut all = vec![
            "build",
            "--base",
            base.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--cache-dir",
            dir.path().to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let res = pi_image(&repo(), &all);
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success(), "{args:?} succeeded");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    // A broken SHA256SUMS in the output directory: named, and nothing is built.
    fs::create_dir(&out).unwrap();
    fs::write(out.join("SHA256SUMS"), "pi1.img.xz is fine\n").unwrap();
    let mut all = vec!["build", "--base", base.to_str().unwrap(), "--out"];
    all.extend([
        out.to_str().unwrap(),
        "--cache-dir",
        dir.path().to_str().unwrap(),
    ]);
    all.extend(["--node", "pi1", "--compress", "xz"]);
    let res = pi_image(&repo(), &all);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(
        err.contains("SHA256SUMS: line 1") && err.contains("expected '<64 hex digits> *<file>'"),
        "{err}"
    );
    assert_eq!(
        listing(&out),
        ["SHA256SUMS"],
        "something was written beside the broken index"
    );

    let res = pi_image(&repo(), &["build", "--node", "pi1", "--shard", "1/2"]);
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("--shard") && err.contains("cannot be used with"),
        "{err}"
    );
}
