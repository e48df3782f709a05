//! Writing an image to disks (or image files), several at once, and verifying what was written.
//!
//! One reader thread streams the image (raw, or `.xz`/`.gz`/`.zst` decompressed once) and hands
//! 4 MiB pieces of the ranges that matter (its [`BlockMap`]) over bounded channels to one writer
//! thread per target. The first 4 KiB (MBR and GPT header) and the last 16.5 KiB (backup GPT)
//! are held back and written only after everything else has reached the device, so a card pulled
//! halfway has no partition table. Then `fdatasync`, `BLKRRPART`, and by default a read-back of
//! every written range past the page cache, compared by sha256 with what the reader saw.

pub mod devices;

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use self::devices::{DeviceError, Disk, SysRoot};
use crate::image::blockmap::{BlockMap, BlockMapError, ChecksumKind, is_zero};
use crate::image::bmap;
use crate::image::{self, Format};
use crate::io::progress::Progress;
use crate::io::{AtPath, PathError, read_full};

/// Size of the pieces handed from the reader to the writers, and of each write.
pub const CHUNK: usize = 4 << 20;
/// Buffer alignment for `O_DIRECT` (covers 512 and 4096-byte logical blocks).
const ALIGN: usize = 4096;
/// Pieces queued per writer: bounds memory at about QUEUE × 4 MiB per device.
const QUEUE: usize = 3;
/// Held back and written last: the MBR and primary GPT header...
const HEAD_HELD: u64 = 4096;
/// ...and the backup GPT (entries and header) at the image's end.
const TAIL_HELD: u64 = 33 * 512;
/// `BLKRRPART`, `BLKFLSBUF` and `BLKGETSIZE64` from <linux/fs.h> (`_IO(0x12, 95)`, `_IO(0x12, 97)`,
/// `_IOR(0x12, 114, size_t)`).
const BLKRRPART: libc::c_ulong = 0x125f;
const BLKFLSBUF: libc::c_ulong = 0x1261;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Errors flashing or verifying.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// I/O on a named file or device failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The image could not be read or decompressed.
    #[error(transparent)]
    Image(#[from] image::ImageError),
    /// The block map could not be made or read.
    #[error(transparent)]
    BlockMap(#[from] BlockMapError),
    /// The device may not be written to.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The image does not agree with its block map, or ended early.
    #[error("{}: {reason}", path.display())]
    Source {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// What was read back differs from the image.
    #[error(
        "{}: verification failed: first bad byte at offset {offset} ({image} differs there); the device or card reader is faulty or fake",
        target.display()
    )]
    Mismatch {
        /// The target.
        target: PathBuf,
        /// The first differing byte.
        offset: u64,
        /// The image.
        image: String,
    },
    /// The target is shorter than what the image has written there.
    #[error("{}: verification failed: it ends at byte {len}, the image needs {needed}", target.display())]
    TooShort {
        /// The target.
        target: PathBuf,
        /// The target's length.
        len: u64,
        /// The image's length.
        needed: u64,
    },
    /// The reader failed, so this target was left without a partition table.
    #[error(
        "{}: not completed (no partition table written) because reading the image failed: {reason}",
        target.display()
    )]
    SourceFailed {
        /// The target.
        target: PathBuf,
        /// The reader's error.
        reason: String,
    },
    /// The user did not confirm.
    #[error("not confirmed; nothing was written")]
    NotConfirmed,
}

/// An image to flash: its compression, and the block map saying what to write.
#[derive(Debug, Clone)]
pub struct Source {
    /// The image file.
    pub path: PathBuf,
    /// How it is compressed.
    pub format: Format,
    /// What to write: from a `.bmap` beside the image if there is one, else (raw images) made
    /// from the filesystems' own maps; `None` for a compressed image without a `.bmap`, where
    /// every block is written (every non-zero block to a new file).
    pub map: Option<BlockMap>,
    /// The `.bmap` file the map was read from.
    pub bmap_path: Option<PathBuf>,
    /// The raw image's size, when known before reading it all.
    pub size: Option<u64>,
}

impl Source {
    /// Open `path` (raw, `.xz`, `.gz` or `.zst`, judged by content) and find its block map:
    /// `IMAGE.bmap` (or, for `x.img.xz`, `x.img.bmap`) if present, else made from a raw image.
    pub fn open(path: &Path) -> Result<Source, FlashError> {
        let len = std::fs::metadata(path).at(path)?.len();
        let format = Format::of_file(path)?;
        let mut candidates = vec![with_suffix(path, ".bmap")];
        if format != Format::Raw
            && let Some(stem) = path.file_stem()
        {
            candidates.push(with_suffix(&path.with_file_name(stem), ".bmap"));
        }
        let bmap_path = candidates.into_iter().find(|p| p.is_file());
        let map = match &bmap_path {
            Some(b) => {
                let text = std::fs::read_to_string(b).at(b)?;
                let map = bmap::read(&text, &b.display().to_string())?;
                if format == Format::Raw && map.image_size != len {
                    return Err(FlashError::Source {
                        path: path.to_owned(),
                        reason: format!(
                            "has {len} bytes but {} describes an image of {} bytes",
                            b.display(),
                            map.image_size
                        ),
                    });
                }
                Some(map)
            }
            None if format == Format::Raw => Some(BlockMap::of_image(path)?),
            None => None,
        };
        let size = match (&map, format) {
            (Some(m), _) => Some(m.image_size),
            (None, Format::Raw) => Some(len),
            (None, _) => None,
        };
        Ok(Source {
            path: path.to_owned(),
            format,
            map,
            bmap_path,
            size,
        })
    }

    /// The raw image's size, decompressing the whole image once to count it if no `.bmap`
    /// says it (a device must be known to be large enough before anything is written).
    pub fn learn_size(&mut self) -> Result<u64, FlashError> {
        if let Some(s) = self.size {
            return Ok(s);
        }
        let mut stream = self.stream()?;
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0u64;
        loop {
            let got = stream.read(&mut buf).map_err(|e| self.decode_err(e))?;
            if got == 0 {
                break;
            }
            n += got as u64;
        }
        self.size = Some(n);
        Ok(n)
    }

    /// The image as a stream of raw bytes.
    fn stream(&self) -> Result<Stream, FlashError> {
        let file = File::open(&self.path).at(&self.path)?;
        Ok(match self.format {
            Format::Raw => Stream::Raw(file),
            f => Stream::Decoded(
                image::decoder(f, BufReader::with_capacity(1 << 20, file)),
                0,
            ),
        })
    }

    fn decode_err(&self, e: io::Error) -> FlashError {
        FlashError::Image(image::ImageError::Decompress {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// The bytes that will be written (all of the image when there is no map).
    pub fn mapped_bytes(&self) -> Option<u64> {
        match &self.map {
            Some(m) => Some(m.mapped_bytes()),
            None => self.size,
        }
    }
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Raw image bytes from a file (seekable) or a decoder (skipped forward by reading).
enum Stream {
    Raw(File),
    Decoded(Box<dyn Read>, u64),
}

impl Stream {
    /// Move to `pos` (never backwards for a decoder).
    fn skip_to(&mut self, pos: u64, scratch: &mut [u8]) -> io::Result<()> {
        match self {
            Stream::Raw(f) => f.seek(SeekFrom::Start(pos)).map(|_| ()),
            Stream::Decoded(r, at) => {
                while *at < pos {
                    let n = usize::try_from(pos - *at)
                        .unwrap_or(usize::MAX)
                        .min(scratch.len());
                    let got = read_full(r, &mut scratch[..n])?;
                    if got == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the image ends at byte {at}"),
                        ));
                    }
                    *at += got as u64;
                }
                Ok(())
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Raw(f) => read_full(f, buf),
            Stream::Decoded(r, at) => {
                let n = read_full(r, buf)?;
                *at += n as u64;
                Ok(n)
            }
        }
    }
}

/// A buffer whose data starts at a 4096-byte aligned address (for `O_DIRECT`), made without
/// unsafe code by over-allocating and starting at the first aligned byte.
struct Aligned {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let vec = vec![0u8; len + ALIGN];
        let start = vec.as_ptr().align_offset(ALIGN).min(ALIGN);
        Aligned { vec, start, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }

    /// Use the first `len` bytes (at most the allocated length).
    fn set_len(&mut self, len: usize) {
        self.len = len.min(self.vec.len() - self.start);
    }
}

/// A piece of the image on its way to the writers: part of range number `range`.
struct Piece {
    offset: u64,
    data: Aligned,
    range: usize,
    last: bool,
}

/// Buffers for pieces, reused once every writer is done with them: allocating (and faulting in)
/// 4 MiB per piece would cost more than copying it.
struct Pool {
    sent: std::collections::VecDeque<Arc<Piece>>,
}

impl Pool {
    /// Pieces kept for reuse; beyond this the oldest reference is let go.
    const KEEP: usize = 2 * QUEUE + 4;

    /// A buffer of `len` bytes (at most [`CHUNK`]).
    fn take(&mut self, len: usize) -> Aligned {
        let mut data = match self.sent.front() {
            Some(p) if Arc::strong_count(p) == 1 => self
                .sent
                .pop_front()
                .and_then(|p| Arc::try_unwrap(p).ok())
                .map_or_else(|| Aligned::new(CHUNK), |p| p.data),
            _ => Aligned::new(CHUNK),
        };
        data.set_len(len);
        data
    }

    fn keep(&mut self, piece: &Arc<Piece>) {
        self.sent.push_back(Arc::clone(piece));
        if self.sent.len() > Self::KEEP {
            self.sent.pop_front();
        }
    }
}

/// One range the reader passed on, with the sha256 of its bytes (what verification expects).
#[derive(Debug, Clone)]
pub struct Written {
    /// Byte range in the image (and on the target).
    pub range: Range<u64>,
    /// sha256 of those bytes (all zero when nothing is verified).
    pub sha256: [u8; 32],
}

/// What the reader saw: the ranges it passed on and the image's length.
#[derive(Debug, Clone)]
struct ReadResult {
    written: Vec<Written>,
    image_size: u64,
}

/// Where the reader leaves its result for the writers: set before the channels close.
type Slot = Arc<Mutex<Option<Result<ReadResult, String>>>>;

/// Read `src` and send the pieces to write to every sender still listening, and with `hash` to
/// a hasher thread (sha256 per range for verification, and the `.bmap`'s own checksums, whose
/// mismatch fails the read). With a map, its ranges; without, every block (every non-zero
/// block when `skip_zero`).
fn read_source(
    src: &Source,
    skip_zero: bool,
    hash: bool,
    txs: &mut Vec<SyncSender<Arc<Piece>>>,
) -> Result<ReadResult, FlashError> {
    std::thread::scope(|scope| {
        let hasher = hash.then(|| {
            let (tx, rx) = sync_channel::<Arc<Piece>>(QUEUE);
            (tx, scope.spawn(move || hash_pieces(src, rx)))
        });
        let (hash_tx, handle) = match hasher {
            Some((tx, h)) => (Some(tx), Some(h)),
            None => (None, None),
        };
        let read = send_pieces(src, skip_zero, txs, hash_tx);
        let sums = match handle.map(|h| h.join()) {
            Some(Ok(r)) => r?,
            Some(Err(_)) => {
                return Err(FlashError::Source {
                    path: src.path.clone(),
                    reason: "the hashing thread failed".into(),
                });
            }
            None => Vec::new(),
        };
        let (ranges, image_size) = read?;
        Ok(ReadResult {
            written: ranges
                .into_iter()
                .enumerate()
                .map(|(i, range)| Written {
                    range,
                    sha256: sums.get(i).copied().unwrap_or_default(),
                })
                .collect(),
            image_size,
        })
    })
}

/// The reader proper: returns the ranges sent and the image's size.
fn send_pieces(
    src: &Source,
    skip_zero: bool,
    txs: &mut Vec<SyncSender<Arc<Piece>>>,
    hash_tx: Option<SyncSender<Arc<Piece>>>,
) -> Result<(Vec<Range<u64>>, u64), FlashError> {
    let mut stream = src.stream()?;
    let mut scratch = vec![0u8; 1 << 20];
    let mut pool = Pool {
        sent: std::collections::VecDeque::new(),
    };
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let had_writers = !txs.is_empty();
    let mut hash_tx = hash_tx;
    let mut send = |piece: Piece, txs: &mut Vec<SyncSender<Arc<Piece>>>, pool: &mut Pool| {
        let piece = Arc::new(piece);
        txs.retain(|tx| tx.send(Arc::clone(&piece)).is_ok());
        if let Some(h) = &hash_tx
            && h.send(Arc::clone(&piece)).is_err()
        {
            // The hasher stopped at a bad checksum; its error is reported when it is joined.
            hash_tx = None;
        }
        pool.keep(&piece);
    };
    match &src.map {
        Some(map) => {
            for (i, r) in map.ranges.iter().enumerate() {
                if had_writers && txs.is_empty() {
                    break;
                }
                stream
                    .skip_to(r.start, &mut scratch)
                    .map_err(|e| src.decode_err(e))?;
                let mut pos = r.start;
                while pos < r.end {
                    let n = usize::try_from(r.end - pos).unwrap_or(CHUNK).min(CHUNK);
                    let mut data = pool.take(n);
                    let got = stream.read(data.as_mut()).map_err(|e| src.decode_err(e))?;
                    if got < n {
                        return Err(FlashError::Source {
                            path: src.path.clone(),
                            reason: format!(
                                "the image ends at byte {} but its block map has data up to byte {}",
                                pos + got as u64,
                                r.end
                            ),
                        });
                    }
                    let last = pos + n as u64 == r.end;
                    send(
                        Piece {
                            offset: pos,
                            data,
                            range: i,
                            last,
                        },
                        txs,
                        &mut pool,
                    );
                    pos += n as u64;
                }
                ranges.push(r.clone());
            }
            Ok((ranges, map.image_size))
        }
        None => {
            let mut pos = 0u64;
            let mut chunk = Aligned::new(CHUNK);
            loop {
                if had_writers && txs.is_empty() {
                    break;
                }
                chunk.set_len(CHUNK);
                let got = stream.read(chunk.as_mut()).map_err(|e| src.decode_err(e))?;
                if got == 0 {
                    break;
                }
                chunk.set_len(got);
                // Runs of blocks to pass on: all of them, or the non-zero ones.
                let mut runs: Vec<Range<usize>> = Vec::new();
                for (i, block) in chunk.as_slice().chunks(4096).enumerate() {
                    if skip_zero && is_zero(block) {
                        continue;
                    }
                    let at = i * 4096..i * 4096 + block.len();
                    match runs.last_mut() {
                        Some(last) if last.end == at.start => last.end = at.end,
                        _ => runs.push(at),
                    }
                }
                for run in runs {
                    let mut data = pool.take(run.len());
                    data.as_mut()
                        .copy_from_slice(&chunk.as_slice()[run.clone()]);
                    let range = pos + run.start as u64..pos + run.end as u64;
                    send(
                        Piece {
                            offset: range.start,
                            data,
                            range: ranges.len(),
                            last: true,
                        },
                        txs,
                        &mut pool,
                    );
                    ranges.push(range);
                }
                pos += got as u64;
            }
            Ok((ranges, pos))
        }
    }
}

/// The hasher thread: sha256 per range, and the `.bmap` checksums checked.
fn hash_pieces(src: &Source, rx: Receiver<Arc<Piece>>) -> Result<Vec<[u8; 32]>, FlashError> {
    let checksums = src.map.as_ref().and_then(|m| m.checksums.as_ref());
    let mut sums = Vec::new();
    let mut ours = Sha256::new();
    let mut theirs = checksums.map(|c| c.kind.hasher());
    for piece in rx {
        let data = piece.data.as_slice();
        ours.update(data);
        if let Some(h) = &mut theirs {
            h.update(data);
        }
        if !piece.last {
            continue;
        }
        let digest: [u8; 32] = std::mem::take(&mut ours).finalize().into();
        sums.push(digest);
        if let (Some(h), Some(c)) = (theirs.take(), checksums) {
            theirs = Some(c.kind.hasher());
            if c.hex.get(piece.range) != Some(&h.hex()) {
                let map_range = src
                    .map
                    .as_ref()
                    .and_then(|m| m.ranges.get(piece.range))
                    .cloned()
                    .unwrap_or_default();
                return Err(FlashError::Source {
                    path: src.path.clone(),
                    reason: format!(
                        "bytes {}..{} do not match their {} checksum in {} (the image or the .bmap is wrong)",
                        map_range.start,
                        map_range.end,
                        match c.kind {
                            ChecksumKind::Sha1 => "sha1",
                            ChecksumKind::Sha256 => "sha256",
                        },
                        src.bmap_path
                            .as_deref()
                            .map_or_else(|| "the .bmap".into(), |p| p.display().to_string())
                    ),
                });
            }
        }
    }
    Ok(sums)
}

/// Where an image goes: a checked disk, or a regular file (`--to-file`).
#[derive(Debug, Clone)]
pub struct Target {
    /// The device node or file.
    pub path: PathBuf,
    /// The disk, for block devices.
    pub disk: Option<Disk>,
    /// A file that did not exist (or was empty) before: unwritten ranges already read as zero.
    pub fresh: bool,
}

impl Target {
    /// Check `path` as a target for an image of `image_size` bytes: a disk passing every
    /// safety rule of [`Disk::check`], or with `to_file` a regular file (never a block device,
    /// never the image itself).
    pub fn check(
        path: &Path,
        image: &Path,
        image_size: u64,
        to_file: bool,
        force: bool,
        root: &SysRoot,
    ) -> Result<Target, FlashError> {
        if to_file {
            let meta = std::fs::metadata(path);
            if let Ok(m) = &meta {
                if m.file_type().is_block_device() {
                    return Err(DeviceError::Refused {
                        path: path.to_owned(),
                        reason: "--to-file writes regular files, this is a block device".into(),
                    }
                    .into());
                }
                if !m.is_file() {
                    return Err(DeviceError::Refused {
                        path: path.to_owned(),
                        reason: "--to-file writes regular files, this is not one".into(),
                    }
                    .into());
                }
                let im = std::fs::metadata(image).at(image)?;
                if im.dev() == m.dev() && im.ino() == m.ino() {
                    return Err(DeviceError::Refused {
                        path: path.to_owned(),
                        reason: "it is the image itself".into(),
                    }
                    .into());
                }
            }
            return Ok(Target {
                path: path.to_owned(),
                disk: None,
                fresh: meta.map(|m| m.len() == 0).unwrap_or(true),
            });
        }
        let disk = devices::disk_for(root, path)?;
        disk.check(path, image_size, force)?;
        Ok(Target {
            path: path.to_owned(),
            disk: Some(disk),
            fresh: false,
        })
    }

    /// A short description for prompts and summaries.
    pub fn describe(&self) -> String {
        match &self.disk {
            Some(d) => d.describe(),
            None => format!("{} (file)", self.path.display()),
        }
    }
}

/// What to flash where: one image, one reader, any number of targets.
#[derive(Debug, Clone)]
pub struct Job {
    /// The image.
    pub source: Source,
    /// Where it goes.
    pub targets: Vec<Target>,
}

/// How flashing behaves.
#[derive(Debug, Clone, Copy)]
pub struct FlashOptions {
    /// Read every written range back and compare.
    pub verify: bool,
    /// Show progress on stderr.
    pub progress: bool,
}

/// How one target went.
#[derive(Debug)]
pub struct Outcome {
    /// The target's path.
    pub target: PathBuf,
    /// The image written to it.
    pub image: PathBuf,
    /// Bytes written.
    pub bytes: u64,
    /// Seconds spent writing (up to the last fdatasync).
    pub write_secs: f64,
    /// Seconds spent verifying.
    pub verify_secs: f64,
    /// Success, or why it failed.
    pub result: Result<(), FlashError>,
}

/// Ask on `output` whether to write each job's image to its targets; only `yes` goes ahead.
pub fn confirm(
    jobs: &[Job],
    input: &mut dyn BufRead,
    output: &mut dyn Write,
) -> Result<(), FlashError> {
    let io = |e| {
        FlashError::Io(PathError {
            path: PathBuf::from("<terminal>"),
            source: e,
        })
    };
    for job in jobs {
        for t in &job.targets {
            writeln!(
                output,
                "write {} ({} to write) to {}",
                job.source.path.display(),
                job.source
                    .mapped_bytes()
                    .map_or_else(|| "size unknown".into(), devices::human),
                t.describe()
            )
            .map_err(io)?;
        }
    }
    write!(
        output,
        "Everything on these devices will be lost. Type 'yes' to continue: "
    )
    .map_err(io)?;
    output.flush().map_err(io)?;
    let mut answer = String::new();
    input.read_line(&mut answer).map_err(io)?;
    if answer.trim() == "yes" {
        Ok(())
    } else {
        Err(FlashError::NotConfirmed)
    }
}

/// Flash every job, all at once: one reader per job, one writer per target. A failing target
/// does not stop the others. Returns one outcome per target, in order.
pub fn flash(jobs: &[Job], opts: FlashOptions) -> Vec<Outcome> {
    let multi = indicatif::MultiProgress::new();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for job in jobs {
            let slot: Slot = Arc::new(Mutex::new(None));
            let mut txs = Vec::new();
            let held = held_ranges(job.source.size);
            for t in &job.targets {
                let (tx, rx) = sync_channel::<Arc<Piece>>(QUEUE);
                txs.push(tx);
                let slot = Arc::clone(&slot);
                let held = held.clone();
                let multi = &multi;
                let src = &job.source;
                handles
                    .push(scope.spawn(move || write_target(src, t, rx, &held, &slot, opts, multi)));
            }
            let skip_zero = job.targets.iter().all(|t| t.fresh);
            scope.spawn(move || {
                let result = read_source(&job.source, skip_zero, opts.verify, &mut txs);
                if let Ok(mut s) = slot.lock() {
                    *s = Some(result.map_err(|e| e.to_string()));
                }
                // Dropping the senders now tells the writers the result is in the slot.
                drop(txs);
            });
        }
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Outcome {
                    target: PathBuf::new(),
                    image: PathBuf::new(),
                    bytes: 0,
                    write_secs: 0.0,
                    verify_secs: 0.0,
                    result: Err(FlashError::Io(PathError {
                        path: PathBuf::from("<writer>"),
                        source: io::Error::other("writer thread panicked"),
                    })),
                })
            })
            .collect()
    })
}

/// The ranges written last: the first 4 KiB and, when the size is known, the last 16.5 KiB.
fn held_ranges(size: Option<u64>) -> Vec<Range<u64>> {
    let mut held = vec![0..HEAD_HELD];
    if let Some(s) = size {
        held.push(s.saturating_sub(TAIL_HELD).max(HEAD_HELD)..s);
    }
    held
}

/// Open a target for writing: a disk exclusively (`O_EXCL`, which also fails if the kernel
/// has it mounted) and with `O_DIRECT` where it allows; a file created if missing.
fn open_target(t: &Target) -> Result<(File, bool), FlashError> {
    if t.disk.is_some() {
        let open = |direct: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_EXCL | if direct { libc::O_DIRECT } else { 0 })
                .open(&t.path)
        };
        match open(true) {
            Ok(f) => Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                Ok(open(false).map(|f| (f, false)).at(&t.path)?)
            }
            Err(e) => Err(FlashError::Io(PathError {
                path: t.path.clone(),
                source: e,
            })),
        }
    } else {
        Ok(OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&t.path)
            .map(|f| (f, false))
            .at(&t.path)?)
    }
}

/// Switch `O_DIRECT` on or off for an open file.
fn set_direct(f: &File, on: bool) -> io::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, only changing its status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn fdatasync(f: &File, path: &Path) -> Result<(), FlashError> {
    // SAFETY: fdatasync on a descriptor we own.
    if unsafe { libc::fdatasync(f.as_raw_fd()) } < 0 {
        return Err(FlashError::Io(PathError {
            path: path.to_owned(),
            source: io::Error::last_os_error(),
        }));
    }
    Ok(())
}

/// Write `data` at `offset`, retrying without `O_DIRECT` if the device refuses the alignment.
fn write_at(
    f: &File,
    direct: &mut bool,
    data: &[u8],
    offset: u64,
    path: &Path,
) -> Result<(), FlashError> {
    let aligned =
        data.len() % 512 == 0 && offset % 512 == 0 && data.as_ptr().align_offset(512) == 0;
    if *direct && !aligned {
        set_direct(f, false).at(path)?;
        *direct = false;
    }
    match f.write_all_at(data, offset) {
        Err(e) if *direct && e.raw_os_error() == Some(libc::EINVAL) => {
            set_direct(f, false).at(path)?;
            *direct = false;
            Ok(f.write_all_at(data, offset).at(path)?)
        }
        r => Ok(r.at(path)?),
    }
}

/// One writer: the pieces from `rx`, held ranges last, then sync, re-read the partition table
/// and verify.
fn write_target(
    src: &Source,
    t: &Target,
    rx: Receiver<Arc<Piece>>,
    held: &[Range<u64>],
    slot: &Slot,
    opts: FlashOptions,
    multi: &indicatif::MultiProgress,
) -> Outcome {
    let start = Instant::now();
    let mut out = Outcome {
        target: t.path.clone(),
        image: src.path.clone(),
        bytes: 0,
        write_secs: 0.0,
        verify_secs: 0.0,
        result: Ok(()),
    };
    let mut progress = Progress::new(
        "writing",
        "wrote",
        &t.path.display().to_string(),
        src.mapped_bytes(),
        opts.progress,
        Some(multi),
    );
    let result = (|| -> Result<(), FlashError> {
        let (file, mut direct) = open_target(t)?;
        let mut kept: Vec<(u64, Vec<u8>)> = Vec::new();
        for piece in rx {
            let data = piece.data.as_slice();
            let range = piece.offset..piece.offset + data.len() as u64;
            // Split the piece around the held ranges.
            let mut pos = range.start;
            for h in held
                .iter()
                .filter(|h| h.start < range.end && h.end > range.start)
            {
                let hs = h.start.max(range.start);
                let he = h.end.min(range.end);
                if pos < hs {
                    let s = &data[(pos - range.start) as usize..(hs - range.start) as usize];
                    write_at(&file, &mut direct, s, pos, &t.path)?;
                }
                kept.push((
                    hs,
                    data[(hs - range.start) as usize..(he - range.start) as usize].to_vec(),
                ));
                pos = pos.max(he);
            }
            if pos < range.end {
                write_at(
                    &file,
                    &mut direct,
                    &data[(pos - range.start) as usize..],
                    pos,
                    &t.path,
                )?;
            }
            out.bytes += data.len() as u64;
            progress.set(out.bytes);
        }
        let read = slot
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .unwrap_or_else(|| Err("the reader stopped".into()))
            .map_err(|reason| FlashError::SourceFailed {
                target: t.path.clone(),
                reason,
            })?;
        // Everything else is on the device before the partition table makes it bootable.
        fdatasync(&file, &t.path)?;
        if direct {
            set_direct(&file, false).at(&t.path)?;
        }
        for (offset, data) in &kept {
            file.write_all_at(data, *offset).at(&t.path)?;
        }
        if t.disk.is_none() {
            let len = file.metadata().at(&t.path)?.len();
            if len < read.image_size {
                file.set_len(read.image_size).at(&t.path)?;
            }
        }
        fdatasync(&file, &t.path)?;
        if t.disk.is_some() {
            // SAFETY: ioctl without arguments on a descriptor we own. Failure (a loop device
            // without partition scanning, say) only means the kernel keeps its old view.
            unsafe { libc::ioctl(file.as_raw_fd(), BLKRRPART) };
        }
        out.write_secs = start.elapsed().as_secs_f64();
        if opts.verify {
            let vstart = Instant::now();
            progress.restart("verifying", "verified", Some(out.bytes));
            let r = verify_written(
                src,
                &t.path,
                &file,
                t.disk.is_some(),
                &read.written,
                &mut progress,
            );
            out.verify_secs = vstart.elapsed().as_secs_f64();
            r?;
        }
        Ok(())
    })();
    progress.finish(result.is_ok());
    if out.write_secs == 0.0 {
        out.write_secs = start.elapsed().as_secs_f64();
    }
    out.result = result;
    out
}

/// Drop the target's cached pages so reads come from the device.
fn drop_cache(f: &File, block: bool) {
    let fd = f.as_raw_fd();
    if block {
        // SAFETY: BLKFLSBUF takes no argument; a failure leaves reads possibly cached, which
        // fadvise below also addresses.
        unsafe { libc::ioctl(fd, BLKFLSBUF, 0) };
    }
    // SAFETY: advice on a descriptor we own; no memory is passed.
    unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Read each written range of `file` back and compare its sha256; on a mismatch find the first
/// bad byte by reading the image again. A reader thread keeps the next pieces coming while this
/// one hashes.
fn verify_written(
    src: &Source,
    path: &Path,
    file: &File,
    block: bool,
    written: &[Written],
    progress: &mut Progress,
) -> Result<(), FlashError> {
    drop_cache(file, block);
    let len = target_len(file, path)?;
    if let Some(end) = written.iter().map(|w| w.range.end).max()
        && end > len
    {
        return Err(FlashError::TooShort {
            target: path.to_owned(),
            len,
            needed: end,
        });
    }
    let bad = std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<(usize, Aligned, bool)>(QUEUE);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Aligned>();
        let reader = scope.spawn(move || -> Result<(), FlashError> {
            for (i, w) in written.iter().enumerate() {
                let mut pos = w.range.start;
                while pos < w.range.end {
                    let n = usize::try_from(w.range.end - pos)
                        .unwrap_or(CHUNK)
                        .min(CHUNK);
                    let mut buf = back_rx.try_recv().unwrap_or_else(|_| Aligned::new(CHUNK));
                    buf.set_len(n);
                    file.read_exact_at(buf.as_mut(), pos).at(path)?;
                    pos += n as u64;
                    if tx.send((i, buf, pos == w.range.end)).is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        });
        let mut hash = Sha256::new();
        let mut done = 0;
        let mut bad = None;
        for (i, buf, last) in rx {
            hash.update(buf.as_slice());
            done += buf.as_slice().len() as u64;
            progress.set(done);
            let _ = back_tx.send(buf);
            if last {
                let got: [u8; 32] = std::mem::take(&mut hash).finalize().into();
                if got != written[i].sha256 {
                    bad = Some(i);
                    break;
                }
            }
        }
        match reader.join() {
            Ok(r) => r.map(|()| bad),
            Err(_) => Err(FlashError::Io(PathError {
                path: path.to_owned(),
                source: io::Error::other("the read-back thread failed"),
            })),
        }
    })?;
    match bad {
        Some(i) => Err(first_difference(src, path, file, &written[i].range)),
        None => Ok(()),
    }
}

/// The length of a file or block device.
fn target_len(f: &File, path: &Path) -> Result<u64, FlashError> {
    let meta = f.metadata().at(path)?;
    if meta.file_type().is_block_device() {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid.
        if unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut size) } < 0 {
            return Err(FlashError::Io(PathError {
                path: path.to_owned(),
                source: io::Error::last_os_error(),
            }));
        }
        Ok(size)
    } else {
        Ok(meta.len())
    }
}

/// The mismatch error for `range`, naming the first byte where target and image differ.
fn first_difference(src: &Source, path: &Path, file: &File, range: &Range<u64>) -> FlashError {
    let mismatch = |offset| FlashError::Mismatch {
        target: path.to_owned(),
        offset,
        image: src.path.display().to_string(),
    };
    let find = || -> Result<u64, FlashError> {
        let mut stream = src.stream()?;
        let mut scratch = vec![0u8; 1 << 20];
        stream
            .skip_to(range.start, &mut scratch)
            .map_err(|e| src.decode_err(e))?;
        let mut a = vec![0u8; 1 << 20];
        let mut b = vec![0u8; 1 << 20];
        let mut pos = range.start;
        while pos < range.end {
            let n = usize::try_from(range.end - pos)
                .unwrap_or(a.len())
                .min(a.len());
            stream.read(&mut a[..n]).map_err(|e| src.decode_err(e))?;
            file.read_exact_at(&mut b[..n], pos).at(path)?;
            if let Some(i) = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y) {
                return Ok(pos + i as u64);
            }
            pos += n as u64;
        }
        // The bytes agree now: they changed between the two reads. Name the range's start.
        Ok(range.start)
    };
    match find() {
        Ok(offset) => mismatch(offset),
        Err(e) => e,
    }
}

/// Check that `target` holds the image (its mapped ranges, or all of it), without writing.
pub fn verify(src: &Source, target: &Path, progress: bool) -> Result<u64, FlashError> {
    let file = File::open(target).at(target)?;
    let block = file.metadata().at(target)?.file_type().is_block_device();
    let read = read_source(src, false, true, &mut Vec::new())?;
    let total: u64 = read
        .written
        .iter()
        .map(|w| w.range.end - w.range.start)
        .sum();
    let mut p = Progress::new(
        "verifying",
        "verified",
        &target.display().to_string(),
        Some(total),
        progress,
        None,
    );
    let r = verify_written(src, target, &file, block, &read.written, &mut p);
    p.finish(r.is_ok());
    r.map(|()| total)
}

/// The summary table: target, image, result, bytes, write and verify throughput.
pub fn summary(outcomes: &[Outcome]) -> String {
    let mut out = format!(
        "{:<24} {:<28} {:<7} {:>10} {:>12} {:>12}\n",
        "target", "image", "result", "written", "write MiB/s", "verify MiB/s"
    );
    let rate = |bytes: u64, secs: f64| {
        if secs > 0.0 {
            format!("{:.1}", bytes as f64 / (1u64 << 20) as f64 / secs)
        } else {
            "-".into()
        }
    };
    for o in outcomes {
        out.push_str(&format!(
            "{:<24} {:<28} {:<7} {:>10} {:>12} {:>12}\n",
            o.target.display(),
            o.image
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            if o.result.is_ok() { "ok" } else { "FAILED" },
            devices::human(o.bytes),
            rate(o.bytes, o.write_secs),
            if o.verify_secs > 0.0 {
                rate(o.bytes, o.verify_secs)
            } else {
                "-".into()
            }
        ));
    }
    out
}
