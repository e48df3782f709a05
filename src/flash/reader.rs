//! The reader: one thread per image streams it once and hands [`PIECE_SIZE`] pieces of the
//! ranges to write to every writer, and, when verification needs it, to a hasher thread that
//! keeps a sha256 per piece (for a compressed image, which cannot be read again cheaply) and
//! checks a `.bmap`'s own range checksums. Pieces live in 4096-byte aligned buffers (for
//! `O_DIRECT`), reused through a small pool once every writer is done with them.

use std::ops::Range;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};

use sha2::{Digest, Sha256};

use super::source::Source;
use super::{FlashError, PIECE_SIZE, QUEUE};
use crate::image::blockmap::{ChecksumKind, RangeChecksums, is_zero};

/// Buffer alignment for `O_DIRECT` (covers 512 and 4096-byte logical blocks).
const ALIGN: usize = 4096;

/// A buffer whose data starts at a 4096-byte aligned address (for `O_DIRECT`), made without
/// unsafe code by over-allocating and starting at the first aligned byte.
pub(super) struct Aligned {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    pub(super) fn new(len: usize) -> Aligned {
        let vec = vec![0u8; len + ALIGN];
        let start = vec.as_ptr().align_offset(ALIGN).min(ALIGN);
        Aligned { vec, start, len }
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }

    pub(super) fn as_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }

    /// Use the first `len` bytes (at most the allocated length).
    pub(super) fn set_len(&mut self, len: usize) {
        self.len = len.min(self.vec.len() - self.start);
    }
}

/// A piece of the image on its way to the writers: the `seq`th piece read, part of range
/// number `range`.
pub(super) struct Piece {
    pub(super) seq: usize,
    pub(super) offset: u64,
    pub(super) data: Aligned,
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

    /// A buffer of `len` bytes (at most [`PIECE_SIZE`]).
    fn take(&mut self, len: usize) -> Aligned {
        let mut data = match self.sent.front() {
            Some(p) if Arc::strong_count(p) == 1 => self
                .sent
                .pop_front()
                .and_then(|p| Arc::try_unwrap(p).ok())
                .map_or_else(|| Aligned::new(PIECE_SIZE), |p| p.data),
            _ => Aligned::new(PIECE_SIZE),
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

/// The sha256 of every piece, in the reader's order, as the hasher thread computes them: what
/// the read-back of a compressed image is compared with.
#[derive(Default)]
pub(super) struct Digests {
    /// The digests so far, and whether no more will come.
    list: Mutex<(Vec<[u8; 32]>, bool)>,
    added: Condvar,
}

impl Digests {
    fn push(&self, digest: [u8; 32]) {
        if let Ok(mut l) = self.list.lock() {
            l.0.push(digest);
        }
        self.added.notify_all();
    }

    fn close(&self) {
        if let Ok(mut l) = self.list.lock() {
            l.1 = true;
        }
        self.added.notify_all();
    }

    /// The digest of piece `seq`, waiting for the hasher; `None` if it stopped before it.
    pub(super) fn wait(&self, seq: usize) -> Option<[u8; 32]> {
        let mut l = self.list.lock().ok()?;
        loop {
            if let Some(d) = l.0.get(seq) {
                return Some(*d);
            }
            if l.1 {
                return None;
            }
            l = self.added.wait(l).ok()?;
        }
    }
}

/// Closes [`Digests`] when the hasher ends, however it ends, so that nobody waits for it.
struct CloseOnDrop<'a>(Option<&'a Digests>);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.0 {
            d.close();
        }
    }
}

/// What the reader saw.
#[derive(Debug, Clone)]
pub(super) struct ReadResult {
    /// The raw image's length.
    pub(super) image_size: u64,
}

/// Where the reader leaves its result for the writers: set before the channels close.
pub(super) type Slot = Arc<Mutex<Option<Result<ReadResult, String>>>>;

/// Read `src` and send the pieces to write to every sender still listening. With `digests`, a
/// hasher thread records each piece's sha256 there; with `check_bmap`, it also checks the
/// `.bmap`'s own checksums, whose mismatch fails the read. With a map, its ranges; without,
/// every block (every non-zero block when `skip_zero`).
pub(super) fn read_source(
    src: &Source,
    skip_zero: bool,
    check_bmap: bool,
    digests: Option<&Digests>,
    txs: &mut Vec<SyncSender<Arc<Piece>>>,
) -> Result<ReadResult, FlashError> {
    let checksums = src
        .map
        .as_ref()
        .and_then(|m| m.checksums.as_ref())
        .filter(|_| check_bmap);
    std::thread::scope(|scope| {
        let hasher = (checksums.is_some() || digests.is_some()).then(|| {
            let (tx, rx) = sync_channel::<Arc<Piece>>(QUEUE);
            (
                tx,
                scope.spawn(move || {
                    let _closed = CloseOnDrop(digests);
                    hash_pieces(src, rx, digests, checksums)
                }),
            )
        });
        let (hash_tx, handle) = match hasher {
            Some((tx, h)) => (Some(tx), Some(h)),
            None => (None, None),
        };
        let read = send_pieces(src, skip_zero, txs, hash_tx);
        match handle.map(|h| h.join()) {
            Some(Ok(r)) => r?,
            Some(Err(_)) => {
                return Err(FlashError::Source {
                    path: src.path.clone(),
                    reason: "the hashing thread failed".into(),
                });
            }
            None => {}
        }
        Ok(ReadResult { image_size: read? })
    })
}

/// The reader proper: returns the image's size.
fn send_pieces(
    src: &Source,
    skip_zero: bool,
    txs: &mut Vec<SyncSender<Arc<Piece>>>,
    hash_tx: Option<SyncSender<Arc<Piece>>>,
) -> Result<u64, FlashError> {
    let mut stream = src.stream()?;
    let mut scratch = vec![0u8; 1 << 20];
    let mut pool = Pool {
        sent: std::collections::VecDeque::new(),
    };
    let had_writers = !txs.is_empty();
    let mut hash_tx = hash_tx;
    let mut seq = 0;
    let mut send = |mut piece: Piece, txs: &mut Vec<SyncSender<Arc<Piece>>>, pool: &mut Pool| {
        piece.seq = seq;
        seq += 1;
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
                    let n = usize::try_from(r.end - pos)
                        .unwrap_or(PIECE_SIZE)
                        .min(PIECE_SIZE);
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
                            seq: 0,
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
            }
            Ok(map.image_size)
        }
        None => {
            let mut pos = 0u64;
            let mut buf = Aligned::new(PIECE_SIZE);
            let mut runs_sent = 0;
            loop {
                if had_writers && txs.is_empty() {
                    break;
                }
                buf.set_len(PIECE_SIZE);
                let got = stream.read(buf.as_mut()).map_err(|e| src.decode_err(e))?;
                if got == 0 {
                    break;
                }
                buf.set_len(got);
                // Runs of blocks to pass on: all of them, or the non-zero ones.
                let mut runs: Vec<Range<usize>> = Vec::new();
                for (i, block) in buf.as_slice().chunks(4096).enumerate() {
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
                    data.as_mut().copy_from_slice(&buf.as_slice()[run.clone()]);
                    send(
                        Piece {
                            seq: 0,
                            offset: pos + run.start as u64,
                            data,
                            range: runs_sent,
                            last: true,
                        },
                        txs,
                        &mut pool,
                    );
                    runs_sent += 1;
                }
                pos += got as u64;
            }
            Ok(pos)
        }
    }
}

/// The hasher thread: sha256 per piece into `digests`, and the `.bmap`'s `checksums` checked.
fn hash_pieces(
    src: &Source,
    rx: Receiver<Arc<Piece>>,
    digests: Option<&Digests>,
    checksums: Option<&RangeChecksums>,
) -> Result<(), FlashError> {
    let mut theirs = checksums.map(|c| c.kind.hasher());
    for piece in rx {
        let data = piece.data.as_slice();
        if let Some(d) = digests {
            d.push(Sha256::digest(data).into());
        }
        if let Some(h) = &mut theirs {
            h.update(data);
        }
        if !piece.last {
            continue;
        }
        if let (Some(h), Some(c)) = (theirs.take(), checksums) {
            theirs = Some(c.kind.hasher());
            // A range the .bmap gives no checksum for is not checked (the caller says so).
            let expected = c.hex.get(piece.range).cloned().flatten();
            if expected.is_some_and(|e| e != h.hex()) {
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
    Ok(())
}
