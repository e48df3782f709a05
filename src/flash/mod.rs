//! Writing an image to disks (or image files), several at once, and verifying what was written.
//!
//! One reader thread streams the image (raw, or `.xz`/`.gz`/`.zst` decompressed once) and hands
//! [`PIECE_SIZE`] pieces of the ranges that matter (its [`BlockMap`](crate::image::blockmap::BlockMap))
//! over bounded channels to one writer thread per target. The first 4 KiB (MBR and GPT header)
//! and the last 16.5 KiB (backup GPT) are held back and written only after everything else has
//! reached the device, so a card pulled halfway has no partition table. Then `fdatasync` and
//! `BLKRRPART`. By default every written range is read back past the page cache while the next
//! ones are written, once a flush made it durable, and compared with the image: byte for byte
//! with a raw image read again, by sha256 per piece for a compressed one.
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
use self::reader::{Digests, Piece, Slot, read_source};
pub use self::report::{About, NodeFacts, confirm, summary};
pub use self::source::{Source, Streamed};
pub use self::target::Target;
use self::verify::Expected;
pub use self::verify::verify;
use self::writer::write_target;
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
    /// Bytes read back and found equal to the image.
    pub verified: u64,
    /// Seconds spent verifying (from the first range handed to the verifier to the last one
    /// checked; mostly while writing).
    pub verify_secs: f64,
    /// Success, or why it failed.
    pub result: Result<(), FlashError>,
}

/// Flash every job, all at once: one reader per job, one writer per target. A failing target
/// does not stop the others. Returns one outcome per target, in order.
pub fn flash(jobs: &[Job], opts: FlashOptions) -> Vec<Outcome> {
    let multi = indicatif::MultiProgress::new();
    let digests: Vec<Digests> = jobs.iter().map(|_| Digests::default()).collect();
    let expected: Vec<Expected> = jobs
        .iter()
        .zip(&digests)
        .map(|(job, d)| Expected::for_source(&job.source, d))
        .collect();
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for ((job, expected), digests) in jobs.iter().zip(&expected).zip(&digests) {
            let slot: Slot = Arc::new(Mutex::new(None));
            let mut txs = Vec::new();
            for t in &job.targets {
                let (tx, rx) = sync_channel::<Arc<Piece>>(QUEUE);
                txs.push(tx);
                let slot = Arc::clone(&slot);
                let multi = &multi;
                let src = &job.source;
                let expected = opts.verify.then_some(expected);
                handles.push(
                    scope.spawn(move || write_target(src, t, rx, &slot, expected, opts, multi)),
                );
            }
            let skip_zero = job.targets.iter().all(|t| t.fresh);
            // Only a compressed image needs its pieces hashed to be compared with.
            let digests = match expected {
                Expected::Digests(..) if opts.verify => Some(digests),
                _ => None,
            };
            scope.spawn(move || {
                let result = read_source(&job.source, skip_zero, opts.verify, digests, &mut txs);
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
                    verified: 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::mpsc::sync_channel;

    /// `len` bytes of pseudo-random data (no all-zero 4 KiB block).
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn gzip(data: &[u8], path: &Path) {
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(path).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(data).unwrap();
        enc.finish().unwrap();
    }

    /// Flash `src` to a new file `target` through one writer whose read-back is compared with
    /// `expected` (another image, to play a card that returns other bytes than were written).
    fn flash_one(src: &Source, expected: &Expected, target: &Path) -> Outcome {
        let t = Target {
            path: target.to_owned(),
            disk: None,
            device: None,
            fresh: true,
        };
        let opts = FlashOptions {
            verify: true,
            progress: false,
        };
        let slot: Slot = Arc::new(Mutex::new(None));
        let multi = indicatif::MultiProgress::new();
        let (tx, rx) = sync_channel::<Arc<Piece>>(QUEUE);
        std::thread::scope(|scope| {
            let writer =
                scope.spawn(|| write_target(src, &t, rx, &slot, Some(expected), opts, &multi));
            let mut txs = vec![tx];
            let read = read_source(src, true, true, None, &mut txs);
            *slot.lock().unwrap() = Some(read.map_err(|e| e.to_string()));
            drop(txs);
            writer.join().unwrap()
        })
    }

    fn mismatch_at(o: &Outcome) -> Option<u64> {
        match &o.result {
            Err(FlashError::Mismatch { offset, .. }) => Some(*offset),
            _ => None,
        }
    }

    /// Three verify batches: some ranges are checked while others are being written.
    const LEN: usize = 3 * writer::VERIFY_BATCH as usize;
    /// Early (in the held first 4 KiB), in the first batch (checked while writing goes on), in
    /// the last batch, and late (in the held last 16.5 KiB).
    const FLIPS: [usize; 4] = [100, LEN / 4, LEN - (3 << 20) + 5, LEN - 1];

    #[test]
    fn a_raw_image_is_compared_byte_for_byte_and_a_flipped_byte_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let data = noise(LEN);
        let img = dir.path().join("a.img");
        std::fs::write(&img, &data).unwrap();
        let src = Source::open(&img).unwrap();
        let good = flash_one(&src, &Expected::Image(&src), &dir.path().join("t"));
        assert!(good.result.is_ok(), "{:?}", good.result);
        assert_eq!((good.bytes, good.verified), (LEN as u64, LEN as u64));
        for at in FLIPS {
            let mut other = data.clone();
            other[at] ^= 0x10;
            let other_img = dir.path().join("b.img");
            std::fs::write(&other_img, &other).unwrap();
            let other_src = Source::open(&other_img).unwrap();
            let target = dir.path().join(format!("t{at}"));
            let o = flash_one(&src, &Expected::Image(&other_src), &target);
            assert_eq!(mismatch_at(&o), Some(at as u64), "{:?}", o.result);
            // A new file that failed verification is not left at its path.
            assert!(!target.exists(), "{} left behind", target.display());
        }
    }

    #[test]
    fn a_compressed_image_is_compared_by_piece_sha256_and_a_flipped_byte_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let data = noise(LEN);
        let gz = dir.path().join("a.img.gz");
        gzip(&data, &gz);
        let src = Source::open(&gz).unwrap();
        let digests = Digests::default();
        read_source(&src, true, true, Some(&digests), &mut Vec::new()).unwrap();
        let good = flash_one(
            &src,
            &Expected::Digests(&src, &digests),
            &dir.path().join("t"),
        );
        assert!(good.result.is_ok(), "{:?}", good.result);
        assert_eq!((good.bytes, good.verified), (LEN as u64, LEN as u64));
        for at in FLIPS {
            let mut other = data.clone();
            other[at] ^= 0x01;
            let other_gz = dir.path().join("b.img.gz");
            gzip(&other, &other_gz);
            let other_src = Source::open(&other_gz).unwrap();
            let other_digests = Digests::default();
            read_source(
                &other_src,
                true,
                true,
                Some(&other_digests),
                &mut Vec::new(),
            )
            .unwrap();
            let target = dir.path().join(format!("t{at}"));
            let o = flash_one(
                &src,
                &Expected::Digests(&other_src, &other_digests),
                &target,
            );
            assert_eq!(mismatch_at(&o), Some(at as u64), "{:?}", o.result);
            // A new file that failed verification is not left at its path.
            assert!(!target.exists(), "{} left behind", target.display());
        }
    }
}
