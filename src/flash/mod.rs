//! Writing an image to disks (or image files), several at once, and verifying what was written.
//!
//! One reader thread streams the image (raw, or `.xz`/`.gz`/`.zst` decompressed once) and hands
//! [`PIECE_SIZE`] pieces of the ranges that matter (its [`BlockMap`](crate::image::blockmap::BlockMap))
//! over bounded channels to one writer thread per target. The first 4 KiB (MBR and GPT header)
//! and the last 16.5 KiB (backup GPT) are held back and written only after everything else has
//! reached the device, so a card pulled halfway has no partition table. Then `fdatasync`,
//! `BLKRRPART`, and by default a read-back of every written range past the page cache, compared
//! by sha256 with what the reader saw.
//!
//! The parts: `source` (the image, its block map, its raw bytes), `target` (the `--to-file`
//! rules; disks are checked by [`devices`]), `reader` (the reader and hasher threads, pieces and
//! their buffers), `writer` (one target's writes, held ranges, sync), `verify` (read-back) and
//! `report` (the question before, the table after). This file ties them together: [`flash`].

pub mod devices;
mod reader;
mod report;
mod source;
mod target;
mod verify;
mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

use self::devices::DeviceError;
use self::reader::{Piece, Slot, read_source};
pub use self::report::{About, NodeFacts, confirm, summary};
pub use self::source::Source;
pub use self::target::Target;
pub use self::verify::verify;
use self::writer::{held_ranges, write_target};
use crate::image::{self, blockmap::BlockMapError};
use crate::io::PathError;

/// Size of the pieces handed from the reader to the writers, and of each write.
pub const PIECE_SIZE: usize = 4 << 20;
/// Pieces queued per writer: bounds memory at about QUEUE × 4 MiB per device.
const QUEUE: usize = 3;

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
                    result: Err(PathError::new(
                        Path::new("<writer>"),
                        io::Error::other("writer thread panicked"),
                    )
                    .into()),
                })
            })
            .collect()
    })
}
