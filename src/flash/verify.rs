//! Read-back verification: every written range read again past the page cache and its sha256
//! compared with what the reader saw; on a mismatch the first differing byte is found by reading
//! the image again. [`verify`] does the same for a target written earlier.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::mpsc::sync_channel;

use sha2::{Digest, Sha256};

use super::reader::{Aligned, Written, read_source};
use super::source::Source;
use super::{FlashError, PIECE_SIZE, QUEUE};
use crate::io::progress::Progress;
use crate::io::{AtPath, PathError};

/// `BLKFLSBUF` and `BLKGETSIZE64` from <linux/fs.h> (`_IO(0x12, 97)`, `_IOR(0x12, 114, size_t)`).
const BLKFLSBUF: libc::c_ulong = 0x1261;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

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
pub(super) fn verify_written(
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
                        .unwrap_or(PIECE_SIZE)
                        .min(PIECE_SIZE);
                    let mut buf = back_rx
                        .try_recv()
                        .unwrap_or_else(|_| Aligned::new(PIECE_SIZE));
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
            Err(_) => {
                Err(PathError::new(path, io::Error::other("the read-back thread failed")).into())
            }
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
            return Err(PathError::new(path, io::Error::last_os_error()).into());
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
