//! Read-back verification, overlapped with writing. The writer hands over the pieces it wrote in
//! batches; a flusher thread makes each batch durable (`fdatasync`) and passes its pieces to
//! worker threads (one per core) while the writer goes on with the next batch. A worker reads a
//! piece back past the page cache (`O_DIRECT`, else after dropping the cached pages) and
//! compares it: byte for byte with the image read again when the image is raw (from the page
//! cache, so the image costs no second hash), or by sha256 when it is compressed (each piece
//! hashed once by the reader's hasher thread, since decompressing again would cost more). A
//! mismatch names the first differing byte (for a compressed image found by decompressing it
//! again up to that piece). [`verify`] does the same for a target written earlier.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::reader::{Aligned, Digests, Piece, read_source};
use super::source::Source;
use super::writer::{fdatasync, set_direct};
use super::{FlashError, PIECE_SIZE, QUEUE};
use crate::io::progress::Progress;
use crate::io::{AtPath, PathError};

/// Bytes read back and compared at a time.
const CHUNK: usize = 1 << 20;
/// Alignment of `O_DIRECT` reads (covers 512 and 4096-byte logical blocks).
const ALIGN: u64 = 4096;
/// `BLKGETSIZE64` from <linux/fs.h> (`_IOR(0x12, 114, size_t)`).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// What the read-back is compared with.
pub(super) enum Expected<'a> {
    /// The raw image, read again.
    Image(&'a Source),
    /// The sha256 of each piece, from the reader's hasher thread (for a compressed image).
    Digests(&'a Source, &'a Digests),
}

impl<'a> Expected<'a> {
    /// The cheapest comparison for `src`: its bytes when it is a raw file, else `digests`.
    pub(super) fn for_source(src: &'a Source, digests: &'a Digests) -> Expected<'a> {
        if src.is_raw_file() {
            Expected::Image(src)
        } else {
            Expected::Digests(src, digests)
        }
    }
}

/// A piece to check: the `seq`th piece the reader sent, at `range` of the target.
#[derive(Debug, Clone)]
pub(super) struct Check {
    pub(super) seq: usize,
    pub(super) range: Range<u64>,
}

impl Check {
    pub(super) fn of(piece: &Piece) -> Check {
        Check {
            seq: piece.seq,
            range: piece.offset..piece.offset + piece.data.as_slice().len() as u64,
        }
    }
}

/// How verification is going, shared by the flusher and the workers.
#[derive(Default)]
struct Shared {
    /// The first failure: the mismatch at the lowest offset found, or another error.
    failure: Mutex<Option<FlashError>>,
    failed: AtomicBool,
    /// Set when the writer gave up: remaining checks are skipped.
    stop: AtomicBool,
    verified: AtomicU64,
    busy_workers: AtomicUsize,
}

impl Shared {
    fn fail(&self, e: FlashError) {
        if let Ok(mut f) = self.failure.lock() {
            let lower = match (&*f, &e) {
                (None, _) => true,
                (
                    Some(FlashError::Mismatch { offset: old, .. }),
                    FlashError::Mismatch { offset: new, .. },
                ) => new < old,
                _ => false,
            };
            if lower {
                *f = Some(e);
            }
        }
        self.failed.store(true, Ordering::SeqCst);
    }
}

/// The writer's end of a verifier: where it hands over what it wrote.
pub(super) struct Feed<'a> {
    /// Batches to make durable first.
    to_flush: RefCell<Option<Sender<Vec<Check>>>>,
    /// Checks of durable pieces.
    to_check: RefCell<Option<Sender<Check>>>,
    shared: &'a Shared,
    started: Cell<Option<Instant>>,
    secs: Cell<f64>,
}

impl Feed<'_> {
    /// Verify `batch` once a flush has made it durable (the writer goes on meanwhile).
    pub(super) fn after_flush(&self, batch: Vec<Check>) {
        self.start_clock();
        if let Some(tx) = &*self.to_flush.borrow() {
            let _ = tx.send(batch);
        }
    }

    /// Verify `checks`, which are durable already.
    pub(super) fn now(&self, checks: Vec<Check>) {
        self.start_clock();
        if let Some(tx) = &*self.to_check.borrow() {
            for c in checks {
                let _ = tx.send(c);
            }
        }
    }

    fn start_clock(&self) {
        if self.started.get().is_none() {
            self.started.set(Some(Instant::now()));
        }
    }

    /// Whether a check failed already (the writer may stop).
    pub(super) fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// No more checks: wait for the outstanding ones, showing their progress, and return the
    /// first failure. With a failure found already, the remaining checks are skipped.
    pub(super) fn finish(&self, progress: &mut Progress) -> Result<(), FlashError> {
        if self.failed() {
            self.shared.stop.store(true, Ordering::SeqCst);
        }
        self.to_flush.borrow_mut().take();
        self.to_check.borrow_mut().take();
        while self.shared.busy_workers.load(Ordering::SeqCst) > 0 {
            progress.set(self.shared.verified.load(Ordering::SeqCst));
            std::thread::sleep(Duration::from_millis(20));
        }
        progress.set(self.shared.verified.load(Ordering::SeqCst));
        if let Some(t) = self.started.get() {
            self.secs.set(t.elapsed().as_secs_f64());
        }
        match self.shared.failure.lock() {
            Ok(mut f) => f.take().map_or(Ok(()), Err),
            Err(_) => Err(PathError::new(
                Path::new("<verify>"),
                io::Error::other("a verifying thread failed"),
            )
            .into()),
        }
    }

    /// Bytes checked and found equal so far.
    pub(super) fn verified(&self) -> u64 {
        self.shared.verified.load(Ordering::SeqCst)
    }

    /// Seconds from the first check handed over to the end of [`finish`](Self::finish).
    pub(super) fn secs(&self) -> f64 {
        self.secs.get()
    }
}

/// Run `body` with a verifier for `target` (named `path`) fed by it: a flusher thread that
/// `fdatasync`s `written` (the writer's descriptor) before passing batches on, and one worker per
/// core. Whatever `body` left unchecked when it returns is skipped.
pub(super) fn with_verifier<R>(
    expected: &Expected,
    target: &File,
    path: &Path,
    written: Option<&File>,
    body: impl FnOnce(&Feed) -> R,
) -> Result<R, FlashError> {
    let back = ReadBack::open(target, path)?;
    let shared = Shared::default();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (check_tx, check_rx) = channel::<Check>();
    let (flush_tx, flush_rx) = channel::<Vec<Check>>();
    let queue = Mutex::new(check_rx);
    std::thread::scope(|scope| {
        shared.busy_workers.store(workers, Ordering::SeqCst);
        for _ in 0..workers {
            let (queue, shared, back) = (&queue, &shared, &back);
            scope.spawn(move || {
                work(expected, back, queue, shared);
                shared.busy_workers.fetch_sub(1, Ordering::SeqCst);
            });
        }
        let forward = check_tx.clone();
        let shared_ref = &shared;
        scope.spawn(move || {
            for batch in flush_rx {
                if let Some(f) = written
                    && let Err(e) = fdatasync(f, path)
                {
                    shared_ref.fail(e);
                    break;
                }
                for c in batch {
                    let _ = forward.send(c);
                }
            }
        });
        let feed = Feed {
            to_flush: RefCell::new(Some(flush_tx)),
            to_check: RefCell::new(Some(check_tx)),
            shared: &shared,
            started: Cell::new(None),
            secs: Cell::new(0.0),
        };
        let r = body(&feed);
        shared.stop.store(true, Ordering::SeqCst);
        drop(feed);
        Ok(r)
    })
}

/// One worker: checks from the queue until it closes.
fn work(expected: &Expected, back: &ReadBack, queue: &Mutex<Receiver<Check>>, shared: &Shared) {
    let mut target_buf = Aligned::new(CHUNK + 2 * ALIGN as usize);
    let mut image_buf = vec![0u8; CHUNK];
    let mut image: Option<File> = None;
    loop {
        let check = match queue.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok(check) = check else { return };
        if shared.stop.load(Ordering::SeqCst) || shared.failed.load(Ordering::SeqCst) {
            continue;
        }
        let r = match expected {
            Expected::Image(src) => {
                let file = match &image {
                    Some(f) => Ok(f),
                    None => File::open(&src.path)
                        .at(&src.path)
                        .map(|f| &*image.insert(f)),
                };
                file.map_err(FlashError::from).and_then(|f| {
                    compare(src, f, back, &check.range, &mut target_buf, &mut image_buf)
                })
            }
            Expected::Digests(src, digests) => {
                hash_compare(src, digests, back, &check, &mut target_buf)
            }
        };
        match r {
            Ok(()) => {
                shared
                    .verified
                    .fetch_add(check.range.end - check.range.start, Ordering::SeqCst);
            }
            Err(e) => shared.fail(e),
        }
    }
}

/// Compare `range` of the target with the same bytes of the raw image `file`.
fn compare(
    src: &Source,
    file: &File,
    back: &ReadBack,
    range: &Range<u64>,
    target_buf: &mut Aligned,
    image_buf: &mut [u8],
) -> Result<(), FlashError> {
    let mut pos = range.start;
    while pos < range.end {
        let n = chunk_len(pos, range.end);
        let got = back.read(target_buf, pos, n)?;
        file.read_exact_at(&mut image_buf[..n], pos).at(&src.path)?;
        if got != &image_buf[..n] {
            let i = got.iter().zip(&image_buf[..n]).position(|(a, b)| a != b);
            return Err(back.mismatch(src, pos + i.unwrap_or(0) as u64));
        }
        pos += n as u64;
    }
    Ok(())
}

/// Compare the sha256 of the target's bytes of `check` with the reader's for that piece.
fn hash_compare(
    src: &Source,
    digests: &Digests,
    back: &ReadBack,
    check: &Check,
    target_buf: &mut Aligned,
) -> Result<(), FlashError> {
    let mut hash = Sha256::new();
    let mut pos = check.range.start;
    while pos < check.range.end {
        let n = chunk_len(pos, check.range.end);
        hash.update(back.read(target_buf, pos, n)?);
        pos += n as u64;
    }
    // No digest: the reader stopped before this piece, and says why itself.
    let Some(want) = digests.wait(check.seq) else {
        return Ok(());
    };
    if <[u8; 32]>::from(hash.finalize()) == want {
        return Ok(());
    }
    Err(first_difference(src, back, &check.range, target_buf))
}

/// The bytes of a chunk starting at `pos`, before `end`.
fn chunk_len(pos: u64, end: u64) -> usize {
    usize::try_from(end - pos).unwrap_or(CHUNK).min(CHUNK)
}

/// The target opened again for reading, past the page cache where it allows `O_DIRECT`.
struct ReadBack {
    file: File,
    path: PathBuf,
    direct: AtomicBool,
}

impl ReadBack {
    /// Open `target` (named `path`) again, read-only, through `/proc/self/fd` (the same file,
    /// whatever its path points to now).
    fn open(target: &File, path: &Path) -> Result<ReadBack, FlashError> {
        let again = PathBuf::from(format!("/proc/self/fd/{}", target.as_raw_fd()));
        let open = |flags| {
            OpenOptions::new()
                .read(true)
                .custom_flags(flags)
                .open(&again)
        };
        let (file, direct) = match open(libc::O_DIRECT) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(0).at(path)?, false),
            Err(e) => return Err(PathError::new(path, e).into()),
        };
        Ok(ReadBack {
            file,
            path: path.to_owned(),
            direct: AtomicBool::new(direct),
        })
    }

    /// Read `n` bytes at `at` (at most [`CHUNK`]) from the device, not from the page cache.
    fn read<'b>(&self, buf: &'b mut Aligned, at: u64, n: usize) -> Result<&'b [u8], FlashError> {
        if self.direct.load(Ordering::SeqCst) {
            // Whole aligned blocks around the range, into the aligned buffer.
            let start = at / ALIGN * ALIGN;
            let end = (at + n as u64).div_ceil(ALIGN) * ALIGN;
            buf.set_len((end - start) as usize);
            match self.file.read_at(buf.as_mut(), start) {
                Ok(got) => {
                    let skip = (at - start) as usize;
                    if got < skip + n {
                        return Err(self.too_short(at + n as u64));
                    }
                    return Ok(&buf.as_slice()[skip..skip + n]);
                }
                // The device wants other alignment: read through the page cache instead.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    set_direct(&self.file, false).at(&self.path)?;
                    self.direct.store(false, Ordering::SeqCst);
                }
                Err(e) => return Err(PathError::new(&self.path, e).into()),
            }
        }
        drop_cached(&self.file, at, n as u64);
        buf.set_len(n);
        match self.file.read_exact_at(buf.as_mut(), at) {
            Ok(()) => Ok(buf.as_slice()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.too_short(at + n as u64))
            }
            Err(e) => Err(PathError::new(&self.path, e).into()),
        }
    }

    fn too_short(&self, needed: u64) -> FlashError {
        match target_len(&self.file, &self.path) {
            Ok(len) => FlashError::TooShort {
                target: self.path.clone(),
                len,
                needed,
            },
            Err(e) => e,
        }
    }

    fn mismatch(&self, src: &Source, offset: u64) -> FlashError {
        FlashError::Mismatch {
            target: self.path.clone(),
            offset,
            image: src.path.display().to_string(),
        }
    }
}

/// Drop the cached pages of bytes `at..at + len` of `f` (written and synced, so clean), so that
/// reading them goes to the device.
fn drop_cached(f: &File, at: u64, len: u64) {
    let (Ok(at), Ok(len)) = (libc::off_t::try_from(at), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: advice on a descriptor we own; no memory is passed.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), at, len, libc::POSIX_FADV_DONTNEED) };
}

/// The length of a file or block device.
fn target_len(f: &File, path: &Path) -> Result<u64, FlashError> {
    let meta = f.metadata().at(path)?;
    if meta.file_type().is_block_device() {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid.
        if unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut size) } < 0 {
            return Err(PathError::new(path, io::Error::last_os_error()).into());
        }
        Ok(size)
    } else {
        Ok(meta.len())
    }
}

/// The mismatch error for `range` of a compressed image, naming the first byte where target and
/// image differ (the image decompressed again up to there).
fn first_difference(
    src: &Source,
    back: &ReadBack,
    range: &Range<u64>,
    target_buf: &mut Aligned,
) -> FlashError {
    let mut find = || -> Result<u64, FlashError> {
        let mut stream = src.stream()?;
        let mut scratch = vec![0u8; CHUNK];
        stream
            .skip_to(range.start, &mut scratch)
            .map_err(|e| src.decode_err(e))?;
        let mut pos = range.start;
        while pos < range.end {
            let n = chunk_len(pos, range.end);
            stream
                .read(&mut scratch[..n])
                .map_err(|e| src.decode_err(e))?;
            let got = back.read(target_buf, pos, n)?;
            if let Some(i) = got.iter().zip(&scratch[..n]).position(|(x, y)| x != y) {
                return Ok(pos + i as u64);
            }
            pos += n as u64;
        }
        // The bytes agree now: they changed between the two reads. Name the range's start.
        Ok(range.start)
    };
    match find() {
        Ok(offset) => back.mismatch(src, offset),
        Err(e) => e,
    }
}

/// Check that `target` holds the image (its mapped ranges, or all of it), without writing:
/// a raw image is compared with the target directly, a compressed one is decompressed once
/// and compared piece by piece by sha256.
pub fn verify(src: &Source, target: &Path, progress: bool) -> Result<u64, FlashError> {
    let file = File::open(target).at(target)?;
    if let Some(end) = src
        .map
        .as_ref()
        .and_then(|m| m.ranges.last())
        .map(|r| r.end)
    {
        let len = target_len(&file, target)?;
        if end > len {
            return Err(FlashError::TooShort {
                target: target.to_owned(),
                len,
                needed: end,
            });
        }
    }
    let mut p = Progress::new(
        "verifying",
        "verified",
        &target.display().to_string(),
        src.mapped_bytes(),
        progress,
        None,
    );
    let digests = Digests::default();
    let expected = Expected::for_source(src, &digests);
    let r = with_verifier(&expected, &file, target, None, |feed| {
        let total = match (&expected, &src.map) {
            (Expected::Image(_), Some(map)) => {
                let mut seq = 0;
                for r in &map.ranges {
                    let mut pos = r.start;
                    while pos < r.end {
                        let end = r.end.min(pos + PIECE_SIZE as u64);
                        feed.now(vec![Check {
                            seq,
                            range: pos..end,
                        }]);
                        seq += 1;
                        pos = end;
                    }
                }
                map.mapped_bytes()
            }
            _ => {
                // Decompress once: the reader's hasher fills `digests` as the pieces go by.
                let (tx, rx) = sync_channel::<Arc<Piece>>(QUEUE);
                std::thread::scope(|scope| {
                    let reader = scope
                        .spawn(|| read_source(src, false, true, Some(&digests), &mut vec![tx]));
                    let mut total = 0;
                    for piece in rx {
                        let check = Check::of(&piece);
                        total += check.range.end - check.range.start;
                        feed.now(vec![check]);
                    }
                    match reader.join() {
                        Ok(r) => r.map(|_| total),
                        Err(_) => Err(FlashError::Source {
                            path: src.path.clone(),
                            reason: "the reading thread failed".into(),
                        }),
                    }
                })?
            }
        };
        feed.finish(&mut p).map(|()| total)
    })
    .and_then(|r| r);
    p.finish(r.is_ok());
    r
}
