//! `pi-image fetch`, `build` from a URL base, `--offline` and `cache list|clean`, against an
//! HTTP server in this process on 127.0.0.1 that serves the committed fixture with Range support
//! and injected faults (a cut connection, a 500, an ignored Range, a corrupted byte).

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use common::{fixture_raw, fixture_xz, pi_image, repo};
use sha2::{Digest, Sha256};

/// Faults the server injects into image downloads (never into SHA256SUMS); each `*_once` fault
/// fires on the next image request only.
#[derive(Default, Clone)]
struct Faults {
    /// Close the connection once the body reaches this file offset.
    cut_at_once: Option<u64>,
    /// Answer 500 this many times.
    errors_500: u32,
    /// Answer every Range request with 200 and the whole file.
    ignore_range: bool,
    /// Flip this byte of the file in the next answer.
    corrupt_at_once: Option<u64>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    faults: Faults,
    /// Every request: (path, Range header or "", status answered).
    log: Vec<(String, String, u16)>,
}

struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = Arc::clone(&state);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = Arc::clone(&st);
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Server { port, state }
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    fn put(&self, name: &str, data: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(format!("/{name}"), data);
    }

    fn faults(&self, f: Faults) {
        self.state.lock().unwrap().faults = f;
    }

    fn log(&self) -> Vec<(String, String, u16)> {
        self.state.lock().unwrap().log.clone()
    }

    fn requests_for(&self, name: &str) -> Vec<(String, u16)> {
        self.log()
            .into_iter()
            .filter(|(p, _, _)| p == &format!("/{name}"))
            .map(|(_, r, s)| (r, s))
            .collect()
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let mut range = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = v.trim().to_string();
        }
    }
    let mut st = state.lock().unwrap();
    let saved = st.faults.clone();
    if path.contains("SHA256SUMS") {
        st.faults = Faults::default();
    }
    let answer = answer(&mut st, path, range);
    if answer.1 {
        st.faults = saved;
    }
    let (cut_body, _) = answer;
    drop(st);
    cut_body.map_or(Ok(()), |(head, body, cut)| {
        conn.write_all(&head)?;
        match cut {
            Some(c) => {
                conn.write_all(&body[..c])?;
                conn.flush()?;
                conn.shutdown(std::net::Shutdown::Both)
            }
            None => conn.write_all(&body),
        }
    })
}

type Reply = (Vec<u8>, Vec<u8>, Option<usize>);

/// The answer to one request: (head, body, cut after this many body bytes), and whether the
/// request was for SHA256SUMS (whose faults are suppressed).
fn answer(st: &mut State, path: String, range: String) -> (Option<Reply>, bool) {
    let sums = path.contains("SHA256SUMS");
    let simple = |status: &str, body: &str| {
        Some((
            format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes(),
            body.as_bytes().to_vec(),
            None,
        ))
    };
    let Some(file) = st.files.get(&path).cloned() else {
        st.log.push((path, range, 404));
        return (simple("404 Not Found", "not found"), sums);
    };
    if st.faults.errors_500 > 0 {
        st.faults.errors_500 -= 1;
        st.log.push((path, range, 500));
        return (simple("500 Internal Server Error", "oops"), sums);
    }
    let start = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|_| !st.faults.ignore_range);
    let (status, from) = match start {
        Some(s) if s >= file.len() as u64 => {
            st.log.push((path, range, 416));
            return (simple("416 Range Not Satisfiable", ""), sums);
        }
        Some(s) => (206, s),
        None => (200, 0),
    };
    let mut body = file[from as usize..].to_vec();
    if let Some(at) = st.faults.corrupt_at_once.take()
        && at >= from
        && ((at - from) as usize) < body.len()
    {
        body[(at - from) as usize] ^= 0x55;
    }
    let cut = st
        .faults
        .cut_at_once
        .take()
        .filter(|&c| c > from)
        .map(|c| (c - from) as usize);
    st.log.push((path, range, status));
    let mut head = if status == 206 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{}\r\n",
            file.len() - 1,
            file.len()
        )
    } else {
        "HTTP/1.1 200 OK\r\n".to_string()
    };
    head.push_str(&format!(
        "Content-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    (Some((head.into_bytes(), body, cut)), sums)
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const NAME: &str = "ubuntu-20.04.5-preinstalled-server-arm64+raspi.img.xz";

/// A work dir with a profile whose base is `url`, verified by the given extra [cluster] lines.
fn setup(verify: &str, url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("profiles/keys")).unwrap();
    fs::copy(
        repo().join("profiles/keys/demo.pub"),
        dir.path().join("profiles/keys/demo.pub"),
    )
    .unwrap();
    fs::write(
        dir.path().join("profiles/p.toml"),
        format!(
            "[cluster]\nname = \"fetchtest\"\nbase = \"{url}\"\n{verify}\n\
             [defaults]\nssh_keys = [\"keys/demo.pub\"]\n\
             [[nodes]]\nname = \"pi1\"\naddress = \"192.168.1.11/24\"\n"
        ),
    )
    .unwrap();
    dir
}

/// A server with the fixture and a SHA256SUMS listing it (and an unrelated line).
fn serve_fixture() -> (Server, Vec<u8>) {
    let server = Server::start();
    let xz = fs::read(fixture_xz()).unwrap();
    server.put(NAME, xz.clone());
    server.put(
        "SHA256SUMS",
        format!(
            "{} *other.img.xz\n{} *{NAME}\n",
            "0".repeat(64),
            sha256_hex(&xz)
        )
        .into_bytes(),
    );
    (server, xz)
}

fn sums_profile(server: &Server) -> tempfile::TempDir {
    setup(
        &format!("base_sha256sums = \"{}\"", server.url("SHA256SUMS")),
        &server.url(NAME),
    )
}

fn run(dir: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--profile", "profiles/p.toml", "--cache-dir", "cache"];
    all.extend(args);
    pi_image(dir, &all)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "pi-image failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    o
}

fn fails(o: Output, wants: &[&str]) -> String {
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "expected failure, got: {err}");
    for w in wants {
        assert!(err.contains(w), "message lacks {w:?}: {err}");
    }
    err
}

/// The cache's files (not the lock or the empty partial/ dir), as names relative to it.
fn cache_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["cache", "cache/partial"] {
        if let Ok(rd) = fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                if e.path().is_file() && e.file_name() != "lock" {
                    out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
    }
    out.sort();
    out
}

/// The cached raw image must equal the decompressed fixture, byte for byte (`cmp`), and the
/// metadata must carry both sha256s.
fn assert_cached(dir: &Path, xz: &[u8]) -> PathBuf {
    let sha = sha256_hex(xz);
    let img = dir.join("cache").join(format!("{sha}.img"));
    let (same, _, err) = common::run(
        "cmp",
        &[img.to_str().unwrap(), fixture_raw().to_str().unwrap()],
    );
    assert!(same, "cached image differs from the fixture: {err}");
    let meta = fs::read_to_string(dir.join("cache").join(format!("{sha}.toml"))).unwrap();
    let raw_sha = sha256_hex(&fs::read(fixture_raw()).unwrap());
    assert!(
        meta.contains(&format!("compressed_sha256 = \"{sha}\"")),
        "{meta}"
    );
    assert!(
        meta.contains(&format!("raw_sha256 = \"{raw_sha}\"")),
        "{meta}"
    );
    assert!(meta.contains("format = \"xz\""), "{meta}");
    // Not from an alias, so read from the image's /etc/os-release.
    assert!(meta.contains("release = \"Ubuntu 20.04"), "{meta}");
    assert_eq!(
        cache_files(dir),
        vec![format!("cache/{sha}.img"), format!("cache/{sha}.toml")]
    );
    img
}

const SKIP: &str = "--insecure-skip-signature";

#[test]
fn fresh_fetch_then_cached() {
    let (server, xz) = serve_fixture();
    let dir = sums_profile(&server);
    let out = ok(run(dir.path(), &["fetch", SKIP]));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("downloaded; NOT verified"), "{said}");
    assert!(stderr(&out).contains("NOT checking the OpenPGP signature"));
    let img = assert_cached(dir.path(), &xz);
    // Sparse: the fixture is mostly zeros, so the cached image must have holes.
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(&img).unwrap();
    assert!(m.blocks() * 512 < m.len() / 2, "cached image is not sparse");
    // Again: no download, the cache answers without the network.
    let before = server.requests_for(NAME).len();
    let out = ok(run(dir.path(), &["fetch", SKIP]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already cached"));
    assert_eq!(server.requests_for(NAME).len(), before);
    let list = ok(run(dir.path(), &["cache", "list"]));
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.contains(&sha256_hex(&xz))
            && list.contains(&server.url(NAME))
            && list.contains("UNSIGNED"),
        "{list}"
    );
    let clean = ok(run(dir.path(), &["cache", "clean"]));
    assert!(String::from_utf8_lossy(&clean.stdout).contains("removed 2 files"));
    assert!(cache_files(dir.path()).is_empty());
}

#[test]
fn resume_after_a_cut_within_one_run() {
    let (server, xz) = serve_fixture();
    let dir = sums_profile(&server);
    server.faults(Faults {
        cut_at_once: Some(30_000),
        ..Faults::default()
    });
    let out = ok(run(dir.path(), &["fetch", SKIP]));
    assert!(
        stderr(&out).contains("interrupted after 30000 bytes"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        server.requests_for(NAME),
        vec![(String::new(), 200), ("bytes=30000-".into(), 206)]
    );
    assert_cached(dir.path(), &xz);
}

#[test]
fn resume_across_runs_keeps_the_part_file() {
    let (server, xz) = serve_fixture();
    let dir = sums_profile(&server);
    server.faults(Faults {
        cut_at_once: Some(40_000),
        ..Faults::default()
    });
    fails(
        run(dir.path(), &["fetch", SKIP, "--retries", "0"]),
        &[
            &server.url(NAME),
            "interrupted after 40000 bytes",
            "run again to resume",
        ],
    );
    let part = format!("cache/partial/{}.part", sha256_hex(&xz));
    assert_eq!(cache_files(dir.path()), vec![part.clone()]);
    assert_eq!(fs::metadata(dir.path().join(&part)).unwrap().len(), 40_000);
    ok(run(dir.path(), &["fetch", SKIP]));
    assert_eq!(
        server.requests_for(NAME),
        vec![(String::new(), 200), ("bytes=40000-".into(), 206)]
    );
    assert_cached(dir.path(), &xz);
}

#[test]
fn server_ignoring_range_restarts_cleanly() {
    let (server, xz) = serve_fixture();
    let dir = sums_profile(&server);
    server.faults(Faults {
        cut_at_once: Some(20_000),
        ignore_range: true,
        ..Faults::default()
    });
    let out = ok(run(dir.path(), &["fetch", SKIP]));
    assert!(
        stderr(&out).contains("restarting from the beginning"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        server.requests_for(NAME),
        vec![(String::new(), 200), ("bytes=20000-".into(), 200)]
    );
    assert_cached(dir.path(), &xz);
}

#[test]
fn a_500_is_retried() {
    let (server, xz) = serve_fixture();
    let dir = sums_profile(&server);
    server.faults(Faults {
        errors_500: 1,
        ..Faults::default()
    });
    let out = ok(run(dir.path(), &["fetch", SKIP]));
    assert!(stderr(&out).contains("HTTP 500"), "{}", stderr(&out));
    assert_cached(dir.path(), &xz);
}

#[test]
fn persistent_500_fails_naming_the_url() {
    let (server, _) = serve_fixture();
    let dir = sums_profile(&server);
    server.faults(Faults {
        errors_500: 100,
        ..Faults::default()
    });
    fails(
        run(dir.path(), &["fetch", SKIP, "--retries", "1"]),
        &[&server.url(NAME), "HTTP 500"],
    );
    assert!(cache_files(dir.path()).is_empty());
}

#[test]
fn corrupted_byte_fails_and_leaves_nothing_then_a_clean_run_succeeds() {
    let (server, xz) = serve_fixture();
    let dir = sums_profile(&server);
    server.faults(Faults {
        corrupt_at_once: Some(xz.len() as u64 / 2),
        ..Faults::default()
    });
    let err = fails(
        run(dir.path(), &["fetch", SKIP]),
        &[&server.url(NAME), "the download was deleted"],
    );
    // xz's own check may notice before the sha256 does; either way it is refused.
    assert!(
        err.contains("sha256 mismatch") || err.contains("corrupt"),
        "{err}"
    );
    assert!(
        cache_files(dir.path()).is_empty(),
        "{:?}",
        cache_files(dir.path())
    );
    ok(run(dir.path(), &["fetch", SKIP]));
    assert_cached(dir.path(), &xz);
}

#[test]
fn wrong_pinned_checksum_is_refused() {
    let (server, xz) = serve_fixture();
    let wrong = "ab".repeat(32);
    let dir = setup(&format!("base_sha256 = \"{wrong}\""), &server.url(NAME));
    fails(
        run(dir.path(), &["fetch"]),
        &[
            &server.url(NAME),
            "sha256 mismatch",
            &sha256_hex(&xz),
            &wrong,
            "pinned",
        ],
    );
    assert!(cache_files(dir.path()).is_empty());
}

#[test]
fn pinned_checksum_needs_no_sums_and_no_signature() {
    let (server, xz) = serve_fixture();
    let dir = setup(
        &format!("base_sha256 = \"{}\"", sha256_hex(&xz).to_uppercase()),
        &server.url(NAME),
    );
    ok(run(dir.path(), &["fetch"]));
    assert!(server.requests_for("SHA256SUMS").is_empty());
    assert_cached(dir.path(), &xz);
}

#[test]
fn pin_and_sums_must_agree() {
    let (server, _) = serve_fixture();
    let dir = setup(
        &format!(
            "base_sha256 = \"{}\"\nbase_sha256sums = \"{}\"",
            "cd".repeat(32),
            server.url("SHA256SUMS")
        ),
        &server.url(NAME),
    );
    fails(
        run(dir.path(), &["fetch"]),
        &[&server.url("SHA256SUMS"), "the profile pins"],
    );
}

#[test]
fn file_missing_from_sums_or_server() {
    let (server, _) = serve_fixture();
    let dir = setup(
        &format!("base_sha256sums = \"{}\"", server.url("SHA256SUMS")),
        &server.url("nosuch.img.xz"),
    );
    fails(
        run(dir.path(), &["fetch", SKIP]),
        &[&server.url("SHA256SUMS"), "no line for nosuch.img.xz"],
    );
    let dir = setup(
        &format!("base_sha256 = \"{}\"", "0".repeat(64)),
        &server.url("nosuch.img.xz"),
    );
    fails(
        run(dir.path(), &["fetch"]),
        &[&server.url("nosuch.img.xz"), "HTTP 404"],
    );
    assert!(cache_files(dir.path()).is_empty());
}

#[test]
fn connection_refused_names_the_url() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/{NAME}");
    let dir = setup(&format!("base_sha256 = \"{}\"", "0".repeat(64)), &url);
    fails(run(dir.path(), &["fetch"]), &[&url, "cannot connect"]);
}

#[test]
fn corrupt_and_truncated_xz_with_matching_checksum() {
    let server = Server::start();
    let mut xz = fs::read(fixture_xz()).unwrap();
    let truncated = xz[..xz.len() * 2 / 3].to_vec();
    let mid = xz.len() / 2;
    xz[mid] ^= 0xff;
    for (name, data) in [("corrupt.img.xz", xz), ("truncated.img.xz", truncated)] {
        server.put(name, data.clone());
        let dir = setup(
            &format!("base_sha256 = \"{}\"", sha256_hex(&data)),
            &server.url(name),
        );
        fails(
            run(dir.path(), &["fetch"]),
            &[&server.url(name), "corrupt or truncated xz data"],
        );
        assert!(
            cache_files(dir.path()).is_empty(),
            "{:?}",
            cache_files(dir.path())
        );
    }
}

#[test]
fn gzip_zstd_and_raw_bases() {
    let server = Server::start();
    let raw = fs::read(fixture_raw()).unwrap();
    let mut gz = Vec::new();
    {
        let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
        enc.write_all(&raw).unwrap();
        enc.finish().unwrap();
    }
    let zst = zstd::stream::encode_all(&raw[..], 1).unwrap();
    for (name, data, format) in [
        ("b.img.gz", gz, "gzip"),
        ("b.img.zst", zst, "zstd"),
        ("b.img", raw.clone(), "raw"),
    ] {
        server.put(name, data.clone());
        let sha = sha256_hex(&data);
        let dir = setup(&format!("base_sha256 = \"{sha}\""), &server.url(name));
        ok(run(dir.path(), &["fetch"]));
        let img = dir.path().join("cache").join(format!("{sha}.img"));
        assert!(
            fs::read(&img).unwrap() == raw,
            "{name}: cached image differs"
        );
        let meta =
            fs::read_to_string(dir.path().join("cache").join(format!("{sha}.toml"))).unwrap();
        assert!(meta.contains(&format!("format = \"{format}\"")), "{meta}");
    }
}

#[test]
fn offline_without_and_with_the_cache() {
    let (server, xz) = serve_fixture();
    let dir = sums_profile(&server);
    fails(
        run(dir.path(), &["build", "--node", "pi1", "--offline"]),
        &[&server.url(NAME), "not in the cache", "--offline"],
    );
    assert!(server.log().is_empty(), "--offline touched the network");
    assert!(!dir.path().join("out/pi1.img").exists());
    ok(run(dir.path(), &["fetch", SKIP]));
    let before = server.log().len();
    // Fetched without the signature checked: a build offline must give that up too (hole_01).
    ok(run(
        dir.path(),
        &["build", "--node", "pi1", "--offline", SKIP],
    ));
    assert_eq!(server.log().len(), before, "--offline touched the network");
    assert!(dir.path().join("out/pi1.img").is_file());
    assert_cached(dir.path(), &xz);
}

#[test]
fn build_fetches_first_and_equals_a_build_from_base() {
    let (server, _) = serve_fixture();
    let dir = sums_profile(&server);
    ok(run(
        dir.path(),
        &["build", "--node", "pi1", "--out", "fetched", SKIP],
    ));
    assert_eq!(server.requests_for(NAME).len(), 1);
    let xz = fixture_xz();
    ok(run(
        dir.path(),
        &[
            "build",
            "--node",
            "pi1",
            "--out",
            "local",
            "--base",
            xz.to_str().unwrap(),
        ],
    ));
    let (same, _, err) = common::run(
        "cmp",
        &[
            dir.path().join("fetched/pi1.img").to_str().unwrap(),
            dir.path().join("local/pi1.img").to_str().unwrap(),
        ],
    );
    assert!(same, "image from the fetched base differs: {err}");
    let meta = fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".toml"))
        .map(|e| fs::read_to_string(e.path()).unwrap())
        .unwrap();
    assert!(meta.contains("last_used"), "{meta}");
}

#[test]
fn concurrent_fetches_download_once() {
    let (server, xz) = serve_fixture();
    let dir = sums_profile(&server);
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pi-image"))
            .args([
                "--profile",
                "profiles/p.toml",
                "--cache-dir",
                "cache",
                "fetch",
                SKIP,
            ])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let outs = [a, b].map(ok);
    let said = |s: &str| {
        outs.iter()
            .filter(|o| String::from_utf8_lossy(&o.stdout).contains(s))
            .count()
    };
    assert_eq!((said("downloaded"), said("already cached")), (1, 1));
    assert_eq!(server.requests_for(NAME).len(), 1);
    assert_cached(dir.path(), &xz);
}

#[test]
fn fetch_with_a_local_base_says_so() {
    let dir = setup("", "local.img");
    fails(
        run(dir.path(), &["fetch"]),
        &["p.toml", "local file, nothing to fetch"],
    );
}

/// Read a whole response body from a raw TCP request (the server's own sanity check).
#[test]
fn test_server_answers_ranges() {
    let (server, xz) = serve_fixture();
    let mut c = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(c, "GET /{NAME} HTTP/1.1\r\nRange: bytes=100-\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(resp.starts_with(b"HTTP/1.1 206"));
    assert_eq!(&resp[split..], &xz[100..]);
}

/// A throw-away GnuPG home for making test keys and signatures with `gpg` (an independent
/// OpenPGP implementation); its agent is stopped on drop.
struct Gpg {
    home: tempfile::TempDir,
}

impl Gpg {
    fn new() -> Gpg {
        Gpg {
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        let mut child = std::process::Command::new("gpg")
            .arg("--batch")
            .arg("--quiet")
            .args(["--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .env("GNUPGHOME", self.home.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run gpg: {e} (apt-get install gpg gpg-agent)"));
        let mut input = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            input.write_all(data).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Make a signing key and return its armored public key.
    fn key(&self, uid: &str, algo: &str) -> Vec<u8> {
        self.run(&["--quick-gen-key", uid, algo, "sign", "never"], None);
        self.run(&["--armor", "--export", uid], None)
    }

    /// An armored detached signature over `data` by every key in `uids` (like Ubuntu's
    /// SHA256SUMS.gpg, which holds one signature per signing key).
    fn sign(&self, uids: &[&str], data: &[u8]) -> Vec<u8> {
        self.sign_with(uids, &[], data)
    }

    /// Like [`Gpg::sign`], with more gpg options (`--digest-algo SHA1`, a faked time, ...).
    fn sign_with(&self, uids: &[&str], extra: &[&str], data: &[u8]) -> Vec<u8> {
        let mut args = vec!["--armor", "--detach-sign"];
        args.extend_from_slice(extra);
        for u in uids {
            args.extend(["--local-user", u]);
        }
        self.run(&args, Some(data))
    }

    /// The primary key fingerprint of `uid`.
    fn fingerprint(&self, uid: &str) -> String {
        let listing =
            String::from_utf8(self.run(&["--with-colons", "--list-keys", uid], None)).unwrap();
        let fpr = listing.lines().find(|l| l.starts_with("fpr:")).unwrap();
        fpr.split(':').nth(9).unwrap().to_string()
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = std::process::Command::new("gpgconf")
            .args(["--kill", "gpg-agent"])
            .env("GNUPGHOME", self.home.path())
            .output();
    }
}

/// The shipped Ubuntu key, judged by gpg rather than by our own OpenPGP code.
#[test]
fn shipped_ubuntu_key_has_the_published_fingerprint() {
    let gpg = Gpg::new();
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/base/keys/ubuntu-cdimage-2012.asc"
    );
    let listing = String::from_utf8(gpg.run(&["--with-colons", "--show-keys", key], None)).unwrap();
    // One primary key, no subkeys, and the fingerprint from Ubuntu's documentation.
    let fprs: Vec<&str> = listing.lines().filter(|l| l.starts_with("fpr:")).collect();
    assert_eq!(
        fprs,
        ["fpr:::::::::843938DF228D22F7B3742BC0D94AA3F0EFE21092:"],
        "{listing}"
    );
    assert!(
        listing.contains("Ubuntu CD Image Automatic Signing Key (2012) <cdimage@ubuntu.com>"),
        "{listing}"
    );
}

/// A real `SHA256SUMS` signed by Canonical (Lubuntu 18.04.5's, from cdimage.ubuntu.com; see
/// tests/fixtures/ubuntu-signed/README.md) passes with the built-in key and no `--signing-key`:
/// the fetch gets past the signature and stops only because the file lists no image of ours.
#[test]
fn built_in_key_accepts_a_real_ubuntu_signature() {
    let signed = repo().join("tests/fixtures/ubuntu-signed");
    let sums = fs::read(signed.join("SHA256SUMS")).unwrap();
    let (server, _) = serve_fixture();
    server.put("SHA256SUMS", sums.clone());
    server.put(
        "SHA256SUMS.gpg",
        fs::read(signed.join("SHA256SUMS.gpg")).unwrap(),
    );
    let dir = sums_profile(&server);
    let err = fails(run(dir.path(), &["fetch"]), &["no line for", NAME]);
    assert!(!err.contains("signature"), "{err}");

    let mut tampered = sums;
    tampered[0] ^= 1;
    server.put("SHA256SUMS", tampered);
    fails(
        run(dir.path(), &["fetch"]),
        &["bad signature", "built-in Ubuntu CD image signing key"],
    );
    assert!(server.requests_for(NAME).is_empty());
}

#[test]
fn sha256sums_signature_is_checked() {
    let gpg = Gpg::new();
    let rsa = gpg.key("Test CD Image Signing Key <rsa@test.invalid>", "rsa2048");
    let ed = gpg.key("Other Key <ed@test.invalid>", "ed25519");
    let (server, xz) = serve_fixture();
    let sums = server.state.lock().unwrap().files["/SHA256SUMS"].clone();
    let dir = sums_profile(&server);
    fs::write(dir.path().join("rsa.asc"), &rsa).unwrap();
    fs::write(dir.path().join("ed.asc"), &ed).unwrap();
    fs::write(dir.path().join("garbage.asc"), b"not a key").unwrap();

    // No key named: the built-in Ubuntu key is trusted, and it did not sign this file.
    server.put("SHA256SUMS.gpg", gpg.sign(&["rsa@test.invalid"], &sums));
    fails(
        run(dir.path(), &["fetch"]),
        &[
            &server.url("SHA256SUMS.gpg"),
            "bad signature",
            "843938DF228D22F7B3742BC0D94AA3F0EFE21092",
            "built-in Ubuntu CD image signing key",
            "--signing-key",
        ],
    );
    fails(
        run(dir.path(), &["fetch", "--signing-key", "garbage.asc"]),
        &["garbage.asc", "not a usable OpenPGP public key"],
    );

    // Signed by the RSA key only; the trusted key is the ed25519 one.
    server.put("SHA256SUMS.gpg", gpg.sign(&["rsa@test.invalid"], &sums));
    fails(
        run(dir.path(), &["fetch", "--signing-key", "ed.asc"]),
        &[&server.url("SHA256SUMS.gpg"), "bad signature"],
    );

    // SHA256SUMS changed after signing (say, to list a substituted image).
    let mut forged = sums.clone();
    forged.extend_from_slice(format!("{} *extra.img.xz\n", "1".repeat(64)).as_bytes());
    server.put("SHA256SUMS", forged);
    fails(
        run(dir.path(), &["fetch", "--signing-key", "rsa.asc"]),
        &[&server.url("SHA256SUMS.gpg"), "bad signature"],
    );
    assert!(
        server.requests_for(NAME).is_empty(),
        "downloaded despite a bad signature"
    );
    assert!(cache_files(dir.path()).is_empty());

    // Two signatures in one file, as Ubuntu publishes: the trusted key's one counts.
    server.put("SHA256SUMS", sums.clone());
    server.put(
        "SHA256SUMS.gpg",
        gpg.sign(&["ed@test.invalid", "rsa@test.invalid"], &sums),
    );
    for key in ["rsa.asc", "ed.asc"] {
        ok(run(dir.path(), &["cache", "clean"]));
        let out = ok(run(dir.path(), &["fetch", "--signing-key", key]));
        assert!(!stderr(&out).contains("WARNING"), "{}", stderr(&out));
        assert_cached(dir.path(), &xz);
    }

    // The key named in the profile (relative to it) instead of on the command line.
    ok(run(dir.path(), &["cache", "clean"]));
    let p = dir.path().join("profiles/p.toml");
    let text = fs::read_to_string(&p)
        .unwrap()
        .replace("[defaults]", "base_signing_key = \"../ed.asc\"\n[defaults]");
    fs::write(&p, text).unwrap();
    ok(run(dir.path(), &["fetch"]));
    assert_cached(dir.path(), &xz);
}

/// (5) Weak hashes, expired and revoked keys, expired signatures: each refused, nothing
/// downloaded; a good signature by the same kind of key still passes.
#[test]
fn hole_05_weak_expired_and_revoked_signatures_are_refused() {
    let gpg = Gpg::new();
    let (server, _) = serve_fixture();
    let sums = server.state.lock().unwrap().files["/SHA256SUMS"].clone();
    let dir = sums_profile(&server);
    // Made in 2020, valid for a day.
    let past = ["--faked-system-time", "20200101T000000!"];
    gpg.key("Good <good@test.invalid>", "rsa2048");
    let mut args = past.to_vec();
    args.extend([
        "--quick-gen-key",
        "Expired <old@test.invalid>",
        "rsa2048",
        "sign",
        "1d",
    ]);
    gpg.run(&args, None);
    let mut args = vec!["--faked-system-time", "20190101T000000!"];
    args.extend([
        "--quick-gen-key",
        "Past <past@test.invalid>",
        "rsa2048",
        "sign",
        "never",
    ]);
    gpg.run(&args, None);
    gpg.key("Revoked <rev@test.invalid>", "rsa2048");
    // Signed while the key was good, then revoked.
    let rev_sig = gpg.sign(&["rev@test.invalid"], &sums);
    let fpr = gpg.fingerprint("rev@test.invalid");
    let rev =
        fs::read_to_string(gpg.home.path().join(format!("openpgp-revocs.d/{fpr}.rev"))).unwrap();
    // gpg prefixes the armor line with ':' so that the certificate is not imported by accident.
    gpg.run(
        &["--import"],
        Some(rev.replace(":-----BEGIN", "-----BEGIN").as_bytes()),
    );
    for (uid, file) in [
        ("good@test.invalid", "good.asc"),
        ("old@test.invalid", "old.asc"),
        ("past@test.invalid", "past.asc"),
        ("rev@test.invalid", "rev.asc"),
    ] {
        fs::write(
            dir.path().join(file),
            gpg.run(&["--armor", "--export", uid], None),
        )
        .unwrap();
    }
    let cases: [(&str, Vec<u8>, &[&str]); 4] = [
        (
            "good.asc",
            gpg.sign_with(&["good@test.invalid"], &["--digest-algo", "SHA1"], &sums),
            &["bad signature", "SHA1", "too weak"],
        ),
        (
            "past.asc",
            gpg.sign_with(
                &["past@test.invalid"],
                &[
                    "--default-sig-expire",
                    "1d",
                    "--faked-system-time",
                    "20200101T000000!",
                ],
                &sums,
            ),
            &["bad signature", "expired on 2020-01-02"],
        ),
        (
            "old.asc",
            gpg.sign_with(&["old@test.invalid"], &past, &sums),
            &[
                "old.asc",
                "not a usable OpenPGP public key",
                "expired on 2020-01-02",
            ],
        ),
        (
            "rev.asc",
            rev_sig,
            &["rev.asc", "not a usable OpenPGP public key", "is revoked"],
        ),
    ];
    for (key, sig, wants) in cases {
        server.put("SHA256SUMS.gpg", sig);
        fails(run(dir.path(), &["fetch", "--signing-key", key]), wants);
        assert!(
            server.requests_for(NAME).is_empty(),
            "downloaded for {wants:?}"
        );
    }
    server.put("SHA256SUMS.gpg", gpg.sign(&["good@test.invalid"], &sums));
    ok(run(dir.path(), &["fetch", "--signing-key", "good.asc"]));
}

/// (1) An image fetched with --insecure-skip-signature is not trusted later by a run that
/// checks signatures: offline it is refused, online its SHA256SUMS signature is checked (and
/// the image kept, not downloaded again, once it passes). Nothing says "verified" before.
#[test]
fn hole_01_an_insecure_fetch_is_not_trusted_forever() {
    let gpg = Gpg::new();
    let good = gpg.key("Good <good@test.invalid>", "ed25519");
    gpg.key("Other <other@test.invalid>", "ed25519");
    let (server, xz) = serve_fixture();
    let sums = server.state.lock().unwrap().files["/SHA256SUMS"].clone();
    let dir = sums_profile(&server);
    fs::write(dir.path().join("good.asc"), &good).unwrap();
    server.put("SHA256SUMS.gpg", gpg.sign(&["other@test.invalid"], &sums));
    let key = ["--signing-key", "good.asc"];

    let out = ok(run(dir.path(), &["fetch", SKIP]));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("NOT verified") && !said.contains("; verified"),
        "{said}"
    );
    assert_cached(dir.path(), &xz);
    let downloads = server.requests_for(NAME).len();

    let mut args = vec!["build", "--node", "pi1", "--offline", "--out", "out"];
    args.extend(key);
    fails(
        run(dir.path(), &args),
        &[
            "NOT verified",
            "requires",
            "signed by key",
            "without --offline",
        ],
    );
    assert!(!dir.path().join("out/pi1.img").exists());
    fails(
        run(dir.path(), &["fetch", key[0], key[1]]),
        &["bad signature"],
    );

    server.put("SHA256SUMS.gpg", gpg.sign(&["good@test.invalid"], &sums));
    let out = ok(run(dir.path(), &["fetch", key[0], key[1]]));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("already cached; verified:"), "{said}");
    assert_eq!(
        server.requests_for(NAME).len(),
        downloads,
        "downloaded again"
    );
    let list = ok(run(dir.path(), &["cache", "list"]));
    assert!(String::from_utf8_lossy(&list.stdout).contains("signed "));
    ok(run(dir.path(), &args));
}

/// (2) A small compressed file that expands into a lot of data, with a wrong pinned sha256,
/// is stopped early (not decompressed whole and then found wrong), naming the bound; a
/// `base_size` the server's answer contradicts stops the download before it starts.
#[test]
fn hole_02_unverified_bytes_are_decompressed_only_within_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let bomb_path = tmp.path().join("bomb.xz");
    // 300 MiB of 0x01 bytes (not zeros, which would become holes): a few KiB as xz.
    let made = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 314572800 /dev/zero | tr '\\0' '\\1' | xz -1 -T1 > '{}'",
            bomb_path.display()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    let bomb = fs::read(&bomb_path).unwrap();
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let server = Server::start();
    server.put(NAME, bomb.clone());
    let dir = setup(
        &format!("base_sha256 = \"{}\"", "1".repeat(64)),
        &server.url(NAME),
    );
    let err = fails(
        run(dir.path(), &["fetch"]),
        &[
            &server.url(NAME),
            "stopped at byte",
            "decompression bomb",
            "deleted",
        ],
    );
    let at: u64 = err
        .split("stopped at byte ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(at < 100 << 20, "stopped only at byte {at}: {err}");
    assert!(
        cache_files(dir.path()).is_empty(),
        "{:?}",
        cache_files(dir.path())
    );

    // base_size contradicting the server's Content-Length: nothing downloaded.
    let (server, xz) = serve_fixture();
    let dir = setup(
        &format!(
            "base_sha256 = \"{}\"\nbase_size = {}",
            sha256_hex(&xz),
            xz.len() - 1
        ),
        &server.url(NAME),
    );
    fails(
        run(dir.path(), &["fetch"]),
        &["announces", "base_size", "not downloaded"],
    );
    assert!(cache_files(dir.path()).is_empty());
    let dir = setup(
        &format!(
            "base_sha256 = \"{}\"\nbase_size = {}",
            sha256_hex(&xz),
            xz.len()
        ),
        &server.url(NAME),
    );
    ok(run(dir.path(), &["fetch"]));
}

/// (5) A name listed twice in SHA256SUMS with different sums: an error, not "first wins".
#[test]
fn hole_05_a_name_listed_twice_with_different_sums_is_refused() {
    let (server, xz) = serve_fixture();
    server.put(
        "SHA256SUMS",
        format!("{} *{NAME}\n{} *{NAME}\n", sha256_hex(&xz), "1".repeat(64)).into_bytes(),
    );
    let dir = sums_profile(&server);
    fails(
        run(dir.path(), &["fetch", SKIP]),
        &[
            "SHA256SUMS",
            "line 2",
            NAME,
            "listed again with a different sha256",
        ],
    );
    assert!(server.requests_for(NAME).is_empty());
}

#[test]
fn no_room_for_the_raw_image_fails_naming_the_file_and_leaves_nothing() {
    // A file size limit (RLIMIT_FSIZE, with SIGXFSZ ignored so writes fail with EFBIG instead of
    // killing the process) stands in for a full disk: the 65 KB download fits, the 350 MB raw
    // image does not.
    let (server, xz) = serve_fixture();
    let dir = setup(
        &format!("base_sha256 = \"{}\"", sha256_hex(&xz)),
        &server.url(NAME),
    );
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            "trap '' XFSZ; ulimit -f 4096; exec \"$0\" \"$@\"",
            env!("CARGO_BIN_EXE_pi-image"),
            "--profile",
            "profiles/p.toml",
            "--cache-dir",
            "cache",
            "fetch",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = fails(out, &["File too large"]);
    eprintln!("{err}");
    assert!(
        err.contains(&dir.path().join("cache").display().to_string()) || err.contains("cache/"),
        "{err}"
    );
    // The download is kept for later (the bytes are good); no image, no temp file.
    let sha = sha256_hex(&xz);
    assert_eq!(
        cache_files(dir.path()),
        vec![format!("cache/partial/{sha}.part")],
        "{err}"
    );
}

#[test]
fn default_cache_dir_follows_xdg_cache_home() {
    let (server, xz) = serve_fixture();
    let dir = sums_profile(&server);
    let xdg = dir.path().join("xdg");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pi-image"))
        .args(["--profile", "profiles/p.toml", "fetch", SKIP])
        .current_dir(dir.path())
        .env("XDG_CACHE_HOME", &xdg)
        .output()
        .unwrap();
    ok(out);
    let sha = sha256_hex(&xz);
    assert!(xdg.join(format!("pi-image/{sha}.img")).is_file());
    assert!(xdg.join(format!("pi-image/{sha}.toml")).is_file());
}
