//! Downloading a base image into the [`cache`](crate::base::cache), in one pass: the bytes that
//! arrive are hashed (sha256 of the compressed file), appended to a `.part` file (so an
//! interrupted download can resume with an HTTP Range request), decompressed and written sparse
//! to a temp file beside their final name. Only when the whole file's sha256 matches the pinned
//! one, or its line in `SHA256SUMS`, is the image renamed into the cache.
//!
//! On a resume the `.part` bytes are read back through the same hash and decoder first (a
//! decoder's state cannot be saved), then the network continues where the file ends; a server
//! that answers the Range request with 200 gets a clean restart. The final sha256 covers the
//! whole file either way.

use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::base::cache::{self, Cache, CacheError, CacheLock, Entry, Metadata, Verification};
use crate::base::signature;
use crate::image::blockmap::is_zero;
use crate::image::{self, Format, PendingOutput};
use crate::io::progress::Progress;
use crate::io::{AtPath, PathError, hex, sums};
use crate::profile::RemoteBase;

/// `SHA256SUMS` files are a few KiB; anything much larger is not one.
const SUMS_MAX: u64 = 1 << 20;
/// Read buffer between the network and the decoder.
const NET_BUF: usize = 1 << 20;

/// Errors fetching a base image. Each names the URL or file it is about.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// DNS failure, connection refused, TLS failure, timeout before any answer.
    #[error("{url}: cannot connect: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// What failed, with its causes.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}")]
    Http {
        /// The URL.
        url: String,
        /// The status line, e.g. `404 Not Found`.
        status: String,
    },
    /// The connection broke off during the download (after any retries).
    #[error(
        "{url}: download interrupted after {received} bytes: {reason} (kept {}; run again to resume)",
        part.display()
    )]
    Interrupted {
        /// The URL.
        url: String,
        /// Bytes of the file received so far.
        received: u64,
        /// What failed.
        reason: String,
        /// The partial download kept for resuming.
        part: PathBuf,
    },
    /// The downloaded file's sha256 is not the expected one; the download was deleted.
    #[error(
        "{url}: sha256 mismatch: got {actual}, expected {expected} (from {source_of_expected}); the download was deleted"
    )]
    Checksum {
        /// The URL.
        url: String,
        /// sha256 of what was received.
        actual: String,
        /// sha256 it should have.
        expected: String,
        /// `the sha256 pinned in the profile` or the `SHA256SUMS` URL.
        source_of_expected: String,
    },
    /// The download is not the size it must be: past a bound while streaming (then it was
    /// stopped there and deleted), or announced with a size other than `base_size`.
    #[error("{url}: {reason}")]
    Size {
        /// The URL.
        url: String,
        /// Which bound, and where it was passed.
        reason: String,
    },
    /// The cached image was verified less strongly than this run requires, and the network
    /// may not be used to verify it again.
    #[error(
        "{url}: the cached image is {have}, but this run requires {want}; run `pi-image fetch` \
         without --offline to check it again (nothing is downloaded if it is the right file)"
    )]
    WeakerCache {
        /// The URL.
        url: String,
        /// How the cached image was verified.
        have: String,
        /// What this run requires.
        want: String,
    },
    /// The pinned sha256 and the `SHA256SUMS` line disagree.
    #[error("{sums_url}: lists sha256 {listed} for {name}, but the profile pins {pinned}")]
    PinMismatch {
        /// The `SHA256SUMS` URL.
        sums_url: String,
        /// The file name.
        name: String,
        /// The sha256 in `SHA256SUMS`.
        listed: String,
        /// The pinned sha256.
        pinned: String,
    },
    /// `SHA256SUMS` has no line for the file.
    #[error("{sums_url}: no line for {name} (expected '<sha256> *{name}')")]
    NotInSums {
        /// The `SHA256SUMS` URL.
        sums_url: String,
        /// The file name looked up.
        name: String,
    },
    /// `SHA256SUMS` is not a checksum file.
    #[error("{sums_url}: not a SHA256SUMS file: {reason}")]
    BadSums {
        /// The `SHA256SUMS` URL.
        sums_url: String,
        /// What is wrong.
        reason: String,
    },
    /// The download is not valid compressed data; it was deleted.
    #[error("{url}: corrupt or truncated {format} data: {reason}; the download was deleted")]
    Decompress {
        /// The URL.
        url: String,
        /// `xz`, `gzip` or `zstd`.
        format: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// Offline, and the cache has no image for the base.
    #[error(
        "{url}: not in the cache ({}) and --offline forbids downloading it (run `pi-image fetch` first)",
        cache.display()
    )]
    NotCached {
        /// The URL.
        url: String,
        /// The cache directory.
        cache: PathBuf,
    },
    /// I/O on a local file failed (disk full, permissions).
    #[error(transparent)]
    Io(#[from] PathError),
    /// The `SHA256SUMS` signature is bad or cannot be checked.
    #[error(transparent)]
    Signature(#[from] signature::SignatureError),
    /// The cache could not be read or changed.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// How `SHA256SUMS` files are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignaturePolicy {
    /// Check `SHA256SUMS.gpg` against this OpenPGP public key file (armored or binary), else
    /// the profile's `base_signing_key`, else the built-in Ubuntu CD image signing key (see
    /// [`crate::base::signature`]).
    Verify(Option<PathBuf>),
    /// Don't check it (`--insecure-skip-signature`).
    Skip,
}

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Never touch the network: use the cache or fail.
    pub offline: bool,
    /// How many times an interrupted download or a 5xx answer is retried within this run.
    pub retries: u32,
    /// How `SHA256SUMS` is authenticated.
    pub signature: SignaturePolicy,
    /// Show progress on stderr (a bar on a terminal, plain lines otherwise).
    pub progress: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            offline: false,
            retries: 3,
            signature: SignaturePolicy::Verify(None),
            progress: true,
        }
    }
}

/// Bounds on a download, applied while it streams, before its sha256 can be checked: a few KB
/// of crafted compressed data must not fill the disk or keep the machine busy.
/// The raw image may not be larger than this (Raspberry Pi images are 2 to 8 GiB).
pub const MAX_RAW_SIZE: u64 = 32 << 30;
/// A download without `base_size` or Content-Length may not be larger than this.
pub const MAX_DOWNLOAD_SIZE: u64 = 32 << 30;
/// Non-zero raw data may be at most this many times the compressed bytes received so far...
pub const MAX_EXPANSION: u64 = 100;
/// ...plus this much (xz reaches 100:1 only on degenerate data; all-zero runs become holes and
/// do not count).
pub const EXPANSION_ALLOWANCE: u64 = 64 << 20;

/// What [`fetch`] did. Holds the cache lock until dropped, so that a build reading the image
/// cannot have it removed under it by `pi-image cache clean`.
#[derive(Debug)]
pub struct Fetched {
    /// The cached image.
    pub entry: Entry,
    /// False when it was already in the cache.
    pub downloaded: bool,
    /// The cache lock, held while the image is in use.
    pub lock: CacheLock,
}

/// Make sure the cache holds the verified image for `remote`, downloading it if needed (unless
/// `opts.offline`). A cached image verified less strongly than this run requires (say, fetched
/// with `--insecure-skip-signature`, now without) is checked again online, and refused offline.
/// Holds the cache lock throughout.
pub fn fetch(
    cache: &Cache,
    remote: &RemoteBase,
    opts: &FetchOptions,
) -> Result<Fetched, FetchError> {
    let lock = cache.lock()?;
    // Loads the trusted key first: a missing or broken key is reported before anything else.
    let want = required(remote, opts)?;
    let found = cached(cache, remote)?;
    if let Some(entry) = found {
        if satisfies(entry.meta.verification.as_ref(), &want.verification) {
            return Ok(Fetched {
                entry,
                downloaded: false,
                lock,
            });
        }
        if opts.offline {
            return Err(FetchError::WeakerCache {
                url: remote.url.clone(),
                have: entry.meta.verification.as_ref().map_or(
                    "of unknown verification (cached by an older pi-image)".into(),
                    |v| v.to_string(),
                ),
                want: want.verification.to_string(),
            });
        }
    } else if opts.offline {
        return Err(FetchError::NotCached {
            url: remote.url.clone(),
            cache: cache.dir().to_owned(),
        });
    }
    let client = client(&remote.url)?;
    let (expected, verification) = expected_sha256(&client, remote, &want)?;
    // The same file may already be cached: from this URL, verified less strongly before (then
    // the check just made is recorded), or from another URL (a mirror).
    if let Some(mut entry) = cache.get(&expected)? {
        let have = entry.meta.verification.as_ref();
        if verification.is_verified() && !have.is_some_and(Verification::is_verified) {
            cache.reverified(&mut entry, verification)?;
        }
        return Ok(Fetched {
            entry,
            downloaded: false,
            lock,
        });
    }
    let mut attempt = 0;
    let done = loop {
        match download(&client, cache, remote, &expected, &verification, opts) {
            Ok(done) => break done,
            Err(Attempt::Retry(e)) if attempt < opts.retries => {
                attempt += 1;
                eprintln!("pi-image: {e}; retrying ({attempt} of {})", opts.retries);
                std::thread::sleep(Duration::from_millis(500 * u64::from(attempt)));
            }
            Err(Attempt::Retry(e) | Attempt::Fatal(e)) => return Err(e),
        }
    };
    let (raw, stats) = done;
    let now = cache::now_rfc3339();
    let release = remote
        .release
        .clone()
        .or_else(|| detect_release(raw.temp_path()));
    let meta = Metadata {
        source_url: remote.url.clone(),
        release,
        format: stats.format.name().to_string(),
        compressed_sha256: expected.clone(),
        compressed_size: stats.compressed_size,
        raw_sha256: stats.raw_sha256,
        raw_size: stats.raw_size,
        verification: Some(verification),
        verified_by: None,
        fetched_at: now.clone(),
        last_used: now,
    };
    let entry = cache.insert(raw, meta)?;
    let part = cache.part_path(&expected);
    fs::remove_file(&part).or_else(ignore_missing).at(&part)?;
    Ok(Fetched {
        entry,
        downloaded: true,
        lock,
    })
}

/// What a run requires of the base: how its sha256 must be established, and the key that
/// checks `SHA256SUMS` when it is signed.
struct Required {
    verification: Verification,
    key: Option<signature::TrustedKey>,
}

/// The verification `remote` and `opts` require, without the network: the pinned sha256, else
/// `SHA256SUMS` signed by the trusted key (`--signing-key`, else the profile's
/// `base_signing_key`, else the built-in Ubuntu key), else with `--insecure-skip-signature` an
/// unsigned `SHA256SUMS`.
fn required(remote: &RemoteBase, opts: &FetchOptions) -> Result<Required, FetchError> {
    if remote.sha256.is_some() {
        return Ok(Required {
            verification: Verification::PinnedSha256,
            key: None,
        });
    }
    let Some(sums_url) = remote.sha256sums.clone() else {
        // The profile refuses a URL with neither; say so if a caller builds one by hand.
        return Err(FetchError::BadSums {
            sums_url: remote.url.clone(),
            reason: "no sha256 and no SHA256SUMS URL to verify the download against".into(),
        });
    };
    match &opts.signature {
        SignaturePolicy::Skip => Ok(Required {
            verification: Verification::UnsignedSha256sums { sums_url },
            key: None,
        }),
        SignaturePolicy::Verify(key) => {
            let key =
                signature::load_trusted_key(key.as_deref().or(remote.signing_key.as_deref()))?;
            Ok(Required {
                verification: Verification::SignedSha256sums {
                    sums_url,
                    key_fingerprint: key.fingerprint(),
                },
                key: Some(key),
            })
        }
    }
}

/// Whether an image verified as `have` may be used where `want` is required. A pinned sha256
/// is the cache key itself, so any image found under it qualifies; a signed `SHA256SUMS` needs
/// the same file and key; an unsigned one (the user gave up on signatures) takes anything.
fn satisfies(have: Option<&Verification>, want: &Verification) -> bool {
    match want {
        Verification::PinnedSha256 | Verification::UnsignedSha256sums { .. } => true,
        Verification::SignedSha256sums { .. } => have == Some(want),
    }
}

/// The release in a raw image's root filesystem (`PRETTY_NAME` of `/etc/os-release`), for
/// `cache list`. `None` when it cannot be read: the build checks the image properly and says why.
fn detect_release(raw: &Path) -> Option<String> {
    let table = crate::image::partition::PartitionTable::read(raw).ok()?;
    let root = table.root(raw).ok()?;
    let fs = crate::image::ext4::Ext4Fs::open(raw, root.start, root.len, false).ok()?;
    let os = crate::image::ext4::os_release(&fs).ok()?;
    Some(
        os.pretty_name
            .unwrap_or_else(|| format!("{} {}", os.id, os.version_id)),
    )
}

/// The cached entry for `remote`, without touching the network: by the pinned sha256, else by
/// the URL it was fetched from (a published `SHA256SUMS` does not change).
pub fn cached(cache: &Cache, remote: &RemoteBase) -> Result<Option<Entry>, CacheError> {
    match &remote.sha256 {
        Some(sha) => cache.get(sha),
        None => cache.find_url(&remote.url),
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn client(url: &str) -> Result<reqwest::blocking::Client, FetchError> {
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        // The blocking client applies this to the answer's headers and to each read of the
        // body, not to the whole download (a 3.5 GB image takes a while): a stall is an error.
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("pi-image/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Connect {
            url: url.to_string(),
            reason: chain(&e),
        })
}

/// An error and its causes on one line, without repeating a cause that its parent already says.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// GET a URL, mapping connection failures and error statuses.
fn get(
    client: &reqwest::blocking::Client,
    url: &str,
    range_from: u64,
) -> Result<reqwest::blocking::Response, Attempt> {
    let mut req = client.get(url);
    if range_from > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={range_from}-"));
    }
    let resp = req.send().map_err(|e| {
        let err = FetchError::Connect {
            url: url.to_string(),
            reason: chain(&e),
        };
        // A refused connection or an unknown host won't fix itself in a second; a timeout might.
        if e.is_timeout() {
            Attempt::Retry(err)
        } else {
            Attempt::Fatal(err)
        }
    })?;
    let status = resp.status();
    if status.is_success() || status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
        return Ok(resp);
    }
    let err = FetchError::Http {
        url: url.to_string(),
        status: status.to_string(),
    };
    if status.is_server_error() {
        Err(Attempt::Retry(err))
    } else {
        Err(Attempt::Fatal(err))
    }
}

/// The sha256 the download must have, and how it was established: the pinned one (checked
/// against `SHA256SUMS` too when the profile names one), or the line in `SHA256SUMS`, whose
/// signature is checked unless the user skipped it.
fn expected_sha256(
    client: &reqwest::blocking::Client,
    remote: &RemoteBase,
    want: &Required,
) -> Result<(String, Verification), FetchError> {
    let Some(sums_url) = &remote.sha256sums else {
        return match &remote.sha256 {
            Some(pinned) => Ok((pinned.clone(), Verification::PinnedSha256)),
            None => Err(FetchError::BadSums {
                sums_url: remote.url.clone(),
                reason: "no sha256 and no SHA256SUMS URL to verify the download against".into(),
            }),
        };
    };
    let sums = get_small(client, sums_url)?;
    match &want.key {
        Some(key) => {
            // The sha256 comes from SHA256SUMS alone, so SHA256SUMS must be authentic.
            let sig_url = format!("{sums_url}.gpg");
            let sig = get_small(client, &sig_url)?;
            signature::verify_detached(key, &sums, &sig, &sig_url)?;
        }
        None if remote.sha256.is_none() => eprintln!(
            "pi-image: WARNING: --insecure-skip-signature: NOT checking the OpenPGP signature of {sums_url}; \
             the image is checked only against a checksum file that anyone on the network path could have replaced"
        ),
        None => {}
    }
    let name = percent_decode(remote.file_name());
    let listed = sums::parse(&sums)
        .map_err(|e| FetchError::BadSums {
            sums_url: sums_url.clone(),
            reason: e.to_string(),
        })?
        .into_iter()
        .find_map(|(file, sha)| (file == name).then_some(sha));
    let Some(listed) = listed else {
        return Err(FetchError::NotInSums {
            sums_url: sums_url.clone(),
            name,
        });
    };
    if let Some(pinned) = &remote.sha256
        && *pinned != listed
    {
        return Err(FetchError::PinMismatch {
            sums_url: sums_url.clone(),
            name,
            listed,
            pinned: pinned.clone(),
        });
    }
    Ok((listed, want.verification.clone()))
}

/// GET a small file (SHA256SUMS, its signature) into memory, refusing anything over 1 MiB.
fn get_small(client: &reqwest::blocking::Client, url: &str) -> Result<Vec<u8>, FetchError> {
    let resp = get(client, url, 0).map_err(Attempt::into_inner)?;
    let mut body = Vec::new();
    resp.take(SUMS_MAX + 1)
        .read_to_end(&mut body)
        .map_err(|e| FetchError::Connect {
            url: url.to_string(),
            reason: chain(&e),
        })?;
    if body.len() as u64 > SUMS_MAX {
        return Err(FetchError::BadSums {
            sums_url: url.to_string(),
            reason: "larger than 1 MiB".into(),
        });
    }
    Ok(body)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(Ok(v)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16))
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One download attempt's failure: worth retrying (a cut, a 5xx) or not.
enum Attempt {
    Retry(FetchError),
    Fatal(FetchError),
}

impl Attempt {
    fn into_inner(self) -> FetchError {
        match self {
            Attempt::Retry(e) | Attempt::Fatal(e) => e,
        }
    }
}

struct Stats {
    format: Format,
    compressed_size: u64,
    raw_sha256: String,
    raw_size: u64,
}

/// What the reading side saw, shared between the reader chain (owned by the decoder) and
/// [`download`], which needs to know after a failure whose fault it was.
struct Shared {
    hasher: Sha256,
    received: u64,
    net_error: Option<String>,
    part_error: Option<io::Error>,
    decode_error: Option<String>,
    raw_hasher: Sha256,
    progress: Progress,
    /// The most compressed bytes there may be: `base_size`, else Content-Length, else
    /// [`MAX_DOWNLOAD_SIZE`]; and which of them.
    max_compressed: (u64, &'static str),
    /// Raw bytes decoded so far.
    raw: u64,
    /// Of those, bytes in non-zero 4 KiB blocks (what takes disk space).
    data: u64,
    /// The bound passed, if one was.
    bound_error: Option<String>,
}

impl Shared {
    /// Count `n` more compressed bytes, refusing the first byte past the bound.
    fn received(&mut self, n: usize) -> io::Result<()> {
        let (max, what) = self.max_compressed;
        if self.received + n as u64 > max {
            return Err(self.passed(format!(
                "stopped at byte {} of the download: more than the {max} bytes of {what}",
                max + 1
            )));
        }
        self.received += n as u64;
        let received = self.received;
        self.progress.set(received);
        Ok(())
    }

    /// Count decoded bytes `buf`, refusing the first one past the raw size or expansion bound.
    fn decoded(&mut self, buf: &[u8]) -> io::Result<()> {
        let start = self.raw;
        self.raw += buf.len() as u64;
        if self.raw > MAX_RAW_SIZE {
            return Err(self.passed(format!(
                "stopped at byte {} of the raw image: an image is at most {} GiB",
                MAX_RAW_SIZE + 1,
                MAX_RAW_SIZE >> 30
            )));
        }
        // 4 KiB blocks aligned in the image; the first and last may be partial here.
        let mut at = 0;
        while at < buf.len() {
            let block_end = ((start + at as u64) / 4096 + 1) * 4096;
            let end = buf
                .len()
                .min(usize::try_from(block_end - start).unwrap_or(usize::MAX));
            if !is_zero(&buf[at..end]) {
                self.data += (end - at) as u64;
            }
            at = end;
        }
        let allowed = EXPANSION_ALLOWANCE + MAX_EXPANSION * self.received;
        if self.data > allowed {
            return Err(self.passed(format!(
                "stopped at byte {} of the raw image: {} bytes of data from {} compressed bytes \
                 is more than {MAX_EXPANSION} times as much plus {} MiB (a decompression bomb?)",
                self.raw,
                self.data,
                self.received,
                EXPANSION_ALLOWANCE >> 20
            )));
        }
        Ok(())
    }

    fn passed(&mut self, reason: String) -> io::Error {
        self.bound_error = Some(reason);
        io::Error::other("size bound passed")
    }
}

/// The compressed bytes: first the `.part` file's (a resume), then the network's, which are
/// also appended to the `.part` file. Everything read is hashed.
struct Tee {
    replay: Option<BufReader<File>>,
    body: Box<dyn Read>,
    part: File,
    shared: Rc<RefCell<Shared>>,
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(replay) = &mut self.replay {
            let n = replay.read(buf)?;
            if n > 0 {
                let mut s = self.shared.borrow_mut();
                s.received(n)?;
                s.hasher.update(&buf[..n]);
                return Ok(n);
            }
            self.replay = None;
        }
        let n = match self.body.read(buf) {
            Ok(n) => n,
            Err(e) => {
                self.shared.borrow_mut().net_error = Some(chain(&e));
                return Err(e);
            }
        };
        self.shared.borrow_mut().received(n)?;
        if let Err(e) = self.part.write_all(&buf[..n]) {
            let kind = e.kind();
            self.shared.borrow_mut().part_error = Some(e);
            return Err(io::Error::new(kind, "writing the .part file failed"));
        }
        self.shared.borrow_mut().hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The decoded image bytes: hashed, and errors from the decoder side noted.
struct Decoded {
    inner: Box<dyn Read>,
    shared: Rc<RefCell<Shared>>,
}

impl Read for Decoded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                let mut s = self.shared.borrow_mut();
                s.decoded(&buf[..n])?;
                s.raw_hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                self.shared.borrow_mut().decode_error = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// One attempt: resume or start the `.part` file, stream it through hash and decoder into a
/// temp image, verify. On success the temp image is ready to be renamed into the cache.
fn download(
    client: &reqwest::blocking::Client,
    cache: &Cache,
    remote: &RemoteBase,
    expected: &str,
    verification: &Verification,
    opts: &FetchOptions,
) -> Result<(PendingOutput, Stats), Attempt> {
    let url = remote.url.as_str();
    let part_path = cache.part_path(expected);
    let fatal_io = |p: &Path, e: io::Error| {
        Attempt::Fatal(FetchError::Io(PathError {
            path: p.to_owned(),
            source: e,
        }))
    };
    let mut part_len = match fs::metadata(&part_path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(fatal_io(&part_path, e)),
    };
    let resp = get(client, url, part_len)?;
    let status = resp.status();
    let mut total = resp.content_length();
    if part_len > 0 {
        let resumes_here = status == reqwest::StatusCode::PARTIAL_CONTENT
            && content_range_start(&resp) == Some(part_len);
        if resumes_here {
            total = total.and_then(|t| t.checked_add(part_len));
        } else {
            if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
                // The .part is as long as the file or longer: start again.
                fs::remove_file(&part_path).map_err(|e| fatal_io(&part_path, e))?;
                return Err(Attempt::Retry(FetchError::Http {
                    url: url.to_string(),
                    status: format!("{status} for a resume from byte {part_len}; restarting"),
                }));
            }
            if opts.progress {
                eprintln!(
                    "pi-image: {url}: server answered the resume from byte {part_len} with {status}; restarting from the beginning"
                );
            }
            part_len = 0;
        }
    } else if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE
        || status == reqwest::StatusCode::PARTIAL_CONTENT
    {
        return Err(Attempt::Fatal(FetchError::Http {
            url: url.to_string(),
            status: format!("{status} to a request without Range"),
        }));
    }
    let max_compressed = match (remote.size, total) {
        (Some(size), Some(t)) if t != size => {
            return Err(Attempt::Fatal(FetchError::Size {
                url: url.to_string(),
                reason: format!(
                    "the server announces {t} bytes, but the profile's base_size is {size}; not downloaded"
                ),
            }));
        }
        (Some(size), _) => (size, "base_size in the profile"),
        (None, Some(t)) => (t, "the server's Content-Length"),
        (None, None) => (
            MAX_DOWNLOAD_SIZE,
            "the limit for a download of unknown size",
        ),
    };
    // Never through a symlink planted at the name.
    let part = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&part_path)
        .map_err(|e| fatal_io(&part_path, e))?;
    // A restart (or a .part longer than what we resume from) drops the old bytes.
    part.set_len(part_len)
        .map_err(|e| fatal_io(&part_path, e))?;
    let replay = if part_len > 0 {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&part_path)
            .map_err(|e| fatal_io(&part_path, e))?;
        Some(BufReader::with_capacity(NET_BUF, f))
    } else {
        None
    };
    let shared = Rc::new(RefCell::new(Shared {
        hasher: Sha256::new(),
        received: 0,
        net_error: None,
        part_error: None,
        decode_error: None,
        raw_hasher: Sha256::new(),
        progress: Progress::new(
            "fetching",
            "received",
            remote.file_name(),
            total,
            opts.progress,
            None,
        ),
        max_compressed,
        raw: 0,
        data: 0,
        bound_error: None,
    }));
    let mut tee = Tee {
        replay,
        body: Box::new(resp),
        part,
        shared: Rc::clone(&shared),
    };
    let mut head = Vec::with_capacity(6);
    let cut = |shared: &Rc<RefCell<Shared>>, reason: String| {
        let received = shared.borrow().received;
        Attempt::Retry(FetchError::Interrupted {
            url: url.to_string(),
            received,
            reason,
            part: part_path.clone(),
        })
    };
    let delete_part = || fs::remove_file(&part_path).or_else(ignore_missing);
    // Unverified bytes past a bound are deleted: they are not worth resuming.
    let bound = |reason: String| -> Attempt {
        if let Err(e) = delete_part() {
            return fatal_io(&part_path, e);
        }
        Attempt::Fatal(FetchError::Size {
            url: url.to_string(),
            reason: format!("{reason}; the download was deleted"),
        })
    };
    if let Err(e) = (&mut tee).take(6).read_to_end(&mut head) {
        let mut s = shared.borrow_mut();
        if let Some(reason) = s.bound_error.take() {
            return Err(bound(reason));
        }
        let pe = s.part_error.take();
        drop(s);
        return Err(match pe {
            Some(pe) => fatal_io(&part_path, pe),
            None => cut(&shared, chain(&e)),
        });
    }
    let format = Format::sniff(&head);
    let input = BufReader::with_capacity(NET_BUF, io::Cursor::new(head).chain(tee));
    let mut decoded = Decoded {
        inner: image::decoder(format, input),
        shared: Rc::clone(&shared),
    };
    let mut raw = PendingOutput::create(&cache.image_path(expected))
        .map_err(|e| Attempt::Fatal(FetchError::Cache(e.into())))?;
    let copied = image::copy_sparse(&mut decoded, raw.file());
    let raw_temp = raw.temp_path().to_owned();
    drop(decoded);
    let mut s = shared.borrow_mut();
    s.progress.finish(copied.is_ok());
    let actual = hex(&std::mem::take(&mut s.hasher).finalize());
    let raw_size = match copied {
        Ok(n) => n,
        Err(e) => {
            if let Some(reason) = s.bound_error.take() {
                return Err(bound(reason));
            }
            if let Some(reason) = s.net_error.take() {
                drop(s);
                return Err(cut(&shared, reason));
            }
            if let Some(pe) = s.part_error.take() {
                return Err(fatal_io(&part_path, pe));
            }
            if let Some(reason) = s.decode_error.take() {
                // The network delivered a whole file that does not decode: the bytes are bad,
                // so keeping them for a resume would only repeat the failure.
                delete_part().map_err(|e| fatal_io(&part_path, e))?;
                return Err(Attempt::Fatal(FetchError::Decompress {
                    url: url.to_string(),
                    format: format.name(),
                    reason,
                }));
            }
            return Err(fatal_io(&raw_temp, e));
        }
    };
    if actual != expected {
        delete_part().map_err(|e| fatal_io(&part_path, e))?;
        return Err(Attempt::Fatal(FetchError::Checksum {
            url: url.to_string(),
            actual,
            expected: expected.to_string(),
            source_of_expected: match verification {
                Verification::PinnedSha256 => "the sha256 pinned in the profile".into(),
                Verification::SignedSha256sums { sums_url, .. }
                | Verification::UnsignedSha256sums { sums_url } => sums_url.clone(),
            },
        }));
    }
    let stats = Stats {
        format,
        compressed_size: s.received,
        raw_sha256: hex(&std::mem::take(&mut s.raw_hasher).finalize()),
        raw_size,
    };
    Ok((raw, stats))
}

/// The first byte of a `Content-Range: bytes <start>-<end>/<total>` header.
fn content_range_start(resp: &reqwest::blocking::Response) -> Option<u64> {
    let v = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    v.strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_of_file_names() {
        assert_eq!(percent_decode("a%2Bb+c.img"), "a+b+c.img");
        assert_eq!(percent_decode("trailing%2"), "trailing%2");
    }
}
