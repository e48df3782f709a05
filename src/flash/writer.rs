//! A target's writer: takes the disk opened when it was checked (exclusively, with `O_DIRECT`
//! where it allows), or makes a new file beside a `--to-file` path, writes the reader's pieces
//! except the held-back partition tables, `fdatasync`, then the held ranges, `fdatasync` again
//! and `BLKRRPART`. By default it hands what it wrote to a verifier in batches as it goes, so
//! that batch k is read back while batch k+1 is written. A new file is renamed into place once
//! written and verified.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use super::reader::{Piece, Slot};
use super::source::Source;
use super::target::{OpenDevice, Target};
use super::verify::{Check, Expected, Feed, with_verifier};
use super::{FlashError, FlashOptions, Outcome};
use crate::image::PendingOutput;
use crate::io::progress::Progress;
use crate::io::{AtPath, PathError};

/// Held back and written last: the MBR and primary GPT header...
const HEAD_HELD: u64 = 4096;
/// ...and the backup GPT (entries and header) at the image's end.
const TAIL_HELD: u64 = 33 * 512;
/// `BLKRRPART` from <linux/fs.h> (`_IO(0x12, 95)`): re-read the partition table.
const BLKRRPART: libc::c_ulong = 0x125f;
/// Written bytes handed to the verifier at a time (after one `fdatasync`): small enough that
/// verifying the last batch adds little after writing ends, large enough that flushes are few.
/// (Smaller in unit tests, so that small images span several batches.)
pub(super) const VERIFY_BATCH: u64 = if cfg!(test) { 8 << 20 } else { 64 << 20 };

/// The ranges written last: the first 4 KiB and, when the size is known, the last 16.5 KiB.
fn held_ranges(size: Option<u64>) -> Vec<Range<u64>> {
    std::iter::once(0..HEAD_HELD)
        .chain(size.map(|s| s.saturating_sub(TAIL_HELD).max(HEAD_HELD)..s))
        .collect()
}

/// Where a writer writes: the disk opened when it was checked, or a new file beside the
/// `--to-file` path, renamed over it only once written (and verified).
enum Opened {
    Disk(Arc<OpenDevice>),
    File(PendingOutput, File),
}

impl Opened {
    fn open(t: &Target) -> Result<Opened, FlashError> {
        match &t.device {
            Some(d) => Ok(Opened::Disk(Arc::clone(d))),
            None => {
                let mut out = PendingOutput::create(&t.path)?;
                let file = out.file().try_clone().at(out.temp_path())?;
                Ok(Opened::File(out, file))
            }
        }
    }

    fn file(&self) -> &File {
        match self {
            Opened::Disk(d) => &d.file,
            Opened::File(_, f) => f,
        }
    }

    /// Whether `O_DIRECT` is on.
    fn direct(&self) -> bool {
        matches!(self, Opened::Disk(d) if d.direct)
    }

    /// A new file takes the target's path; a disk has nothing more to do.
    fn commit(self) -> Result<(), FlashError> {
        if let Opened::File(pending, _) = self {
            pending.commit()?;
        }
        Ok(())
    }
}

/// Switch `O_DIRECT` on or off for an open file.
pub(super) fn set_direct(f: &File, on: bool) -> io::Result<()> {
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

/// `fdatasync(2)`: `f`'s data is on the device when this returns.
pub(super) fn fdatasync(f: &File, path: &Path) -> Result<(), FlashError> {
    // SAFETY: fdatasync on a descriptor we own.
    if unsafe { libc::fdatasync(f.as_raw_fd()) } < 0 {
        return Err(PathError::new(path, io::Error::last_os_error()).into());
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
    let aligned = data.len().is_multiple_of(512)
        && offset.is_multiple_of(512)
        && data.as_ptr().align_offset(512) == 0;
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

/// One writer: the pieces from `rx`, held ranges last, then sync and re-read the partition
/// table; with `expected`, verified as it goes.
pub(super) fn write_target(
    src: &Source,
    t: &Target,
    rx: Receiver<Arc<Piece>>,
    slot: &Slot,
    expected: Option<&Expected>,
    opts: FlashOptions,
    multi: &indicatif::MultiProgress,
) -> Outcome {
    let start = Instant::now();
    let mut out = Outcome {
        target: t.path.clone(),
        image: src.path.clone(),
        bytes: 0,
        write_secs: 0.0,
        verified: 0,
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
    let held = held_ranges(src.size);
    let result = Opened::open(t).and_then(|opened| {
        let file = opened.file();
        let mut w = Writing {
            t,
            held: &held,
            file,
            direct: opened.direct(),
            start,
            out: &mut out,
            progress: &mut progress,
        };
        match expected {
            Some(e) => with_verifier(e, file, &t.path, Some(file), |feed| {
                w.write(rx, slot, Some(feed))
            })
            .and_then(|r| r),
            None => w.write(rx, slot, None),
        }?;
        opened.commit()
    });
    progress.finish(result.is_ok());
    if out.write_secs == 0.0 {
        out.write_secs = start.elapsed().as_secs_f64();
    }
    out.result = result;
    out
}

/// One target being written.
struct Writing<'a> {
    t: &'a Target,
    held: &'a [Range<u64>],
    file: &'a File,
    direct: bool,
    start: Instant,
    out: &'a mut Outcome,
    progress: &'a mut Progress,
}

impl Writing<'_> {
    fn write(
        &mut self,
        rx: Receiver<Arc<Piece>>,
        slot: &Slot,
        feed: Option<&Feed>,
    ) -> Result<(), FlashError> {
        let (t, file) = (self.t, self.file);
        let mut kept: Vec<(u64, Vec<u8>)> = Vec::new();
        // Checks of the pieces written since the last batch, and of those touching the held
        // ranges (complete only at the end).
        let mut batch: Vec<Check> = Vec::new();
        let mut batch_bytes = 0;
        let mut last: Vec<Check> = Vec::new();
        for piece in rx {
            let data = piece.data.as_slice();
            let range = piece.offset..piece.offset + data.len() as u64;
            // Split the piece around the held ranges.
            let mut pos = range.start;
            let mut touches_held = false;
            for h in self
                .held
                .iter()
                .filter(|h| h.start < range.end && h.end > range.start)
            {
                touches_held = true;
                let hs = h.start.max(range.start);
                let he = h.end.min(range.end);
                if pos < hs {
                    let s = &data[(pos - range.start) as usize..(hs - range.start) as usize];
                    write_at(file, &mut self.direct, s, pos, &t.path)?;
                }
                kept.push((
                    hs,
                    data[(hs - range.start) as usize..(he - range.start) as usize].to_vec(),
                ));
                pos = pos.max(he);
            }
            if pos < range.end {
                write_at(
                    file,
                    &mut self.direct,
                    &data[(pos - range.start) as usize..],
                    pos,
                    &t.path,
                )?;
            }
            self.out.bytes += data.len() as u64;
            self.progress.set(self.out.bytes);
            if let Some(feed) = feed {
                if touches_held {
                    last.push(Check::of(&piece));
                } else {
                    batch_bytes += data.len() as u64;
                    batch.push(Check::of(&piece));
                }
                if batch_bytes >= VERIFY_BATCH {
                    feed.after_flush(std::mem::take(&mut batch));
                    batch_bytes = 0;
                }
                if feed.failed() {
                    // A bad card: stop writing (it gets no partition table) and say where.
                    break;
                }
            }
        }
        if let Some(feed) = feed
            && feed.failed()
        {
            return feed.finish(self.progress);
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
        fdatasync(file, &t.path)?;
        if self.direct {
            set_direct(file, false).at(&t.path)?;
        }
        for (offset, data) in &kept {
            file.write_all_at(data, *offset).at(&t.path)?;
        }
        if t.disk.is_none() {
            // Exactly the image's length, so that `cmp` and `verify` agree on the whole file.
            file.set_len(read.image_size).at(&t.path)?;
        }
        fdatasync(file, &t.path)?;
        if t.disk.is_some() {
            // SAFETY: ioctl without arguments on a descriptor we own. Failure (a loop device
            // without partition scanning, say) only means the kernel keeps its old view.
            unsafe { libc::ioctl(file.as_raw_fd(), BLKRRPART) };
        }
        self.out.write_secs = self.start.elapsed().as_secs_f64();
        if let Some(feed) = feed {
            // All of it is durable now.
            batch.append(&mut last);
            feed.now(batch);
            self.progress
                .restart("verifying", "verified", Some(self.out.bytes));
            let r = feed.finish(self.progress);
            self.out.verify_secs = feed.secs();
            self.out.verified = feed.verified();
            r?;
        }
        Ok(())
    }
}
