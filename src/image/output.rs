//! Outputs written atomically (a temp file in the same directory, fsync, rename), so that a failed
//! run never leaves a file at the final path, and sparse copies: of a stream (all-zero blocks
//! become holes), or of a file by its data extents (a reflink, or `copy_file_range`).
//! The temp file is created exclusively under an unpredictable name and never through a symlink
//! ([`crate::io::tempfiles`]); the rename replaces whatever is at the final path (a symlink
//! itself, never the file it points to).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::ImageError;
use super::blockmap::next_data;
use crate::io::tempfiles::{self, Registered, parent_dir};
use crate::io::{AtPath, hex, read_full};

/// Holes are made for all-zero runs of this many bytes (the usual filesystem block size).
const SPARSE_BLOCK: usize = 4096;
/// Copy buffer: large enough for few syscalls, small enough to never matter for memory.
const COPY_BUF: usize = 4 << 20;

/// Copy `src` into `dst` from its current position, leaving holes where whole 4 KiB blocks are
/// zero, and set `dst`'s length to what was copied. Returns the number of bytes copied.
pub fn copy_sparse(src: &mut dyn Read, dst: &mut File) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut written: u64 = 0;
    loop {
        let filled = read_full(src, &mut buf)?;
        if filled == 0 {
            break;
        }
        let mut pending_seek = false;
        for block in buf[..filled].chunks(SPARSE_BLOCK) {
            if block.iter().all(|&b| b == 0) {
                pending_seek = true;
            } else {
                if pending_seek {
                    dst.seek(SeekFrom::Start(written))?;
                    pending_seek = false;
                }
                dst.write_all(block)?;
            }
            written += block.len() as u64;
        }
        if pending_seek {
            dst.seek(SeekFrom::Start(written))?;
        }
    }
    dst.set_len(written)?;
    Ok(written)
}

/// The data extents of `file` (from `SEEK_DATA`/`SEEK_HOLE`, as the filesystem allocated them):
/// everything else reads as zeros. Where the filesystem cannot tell, the whole file is data.
pub fn data_ranges(file: &File) -> io::Result<Vec<Range<u64>>> {
    let size = file.metadata()?.len();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Some((data, hole)) = next_data(file, pos)? else {
            break;
        };
        let end = hole.min(size);
        if data < end {
            out.push(data..end);
        }
        pos = end.max(pos + 1);
    }
    Ok(out)
}

/// How [`copy_file`] made the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// `FICLONE`: the copy shares the source's blocks (btrfs, XFS) until either is written.
    Reflink,
    /// `copy_file_range` of each data extent, in the kernel.
    CopyFileRange,
    /// Read and written, with zero blocks left as holes ([`copy_sparse`]).
    ReadWrite,
}

/// Make the empty file `dst` a copy of `src`, whose data extents are `data` (from
/// [`data_ranges`], which a caller copying one file several times computes once): a reflink
/// where the filesystem can share blocks, else `copy_file_range` of the data extents (holes stay
/// holes and nothing is read to find zeros), else reading and writing it. Returns the length
/// copied and how.
pub fn copy_file(src: &File, dst: &mut File, data: &[Range<u64>]) -> io::Result<(u64, CopyMethod)> {
    let size = src.metadata()?.len();
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are ours.
    if unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0 {
        return Ok((size, CopyMethod::Reflink));
    }
    for (i, r) in data.iter().enumerate() {
        match copy_range(src, dst, r.clone()) {
            Ok(()) => {}
            // Not between these files (another filesystem on older kernels, say): nothing of
            // this range was copied, so do it the old way.
            Err(e) if i == 0 && unsupported(&e) => {
                let mut reader = src;
                reader.rewind()?;
                return Ok((copy_sparse(&mut reader, dst)?, CopyMethod::ReadWrite));
            }
            Err(e) => return Err(e),
        }
    }
    dst.set_len(size)?;
    Ok((size, CopyMethod::CopyFileRange))
}

/// Errors by which `copy_file_range` says it cannot copy between these two files.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
    )
}

/// Bytes copied between starting their write-back.
const WRITE_BEHIND: u64 = 64 << 20;

/// `copy_file_range` of bytes `range` of `src` to the same place in `dst`, starting the
/// write-back of each [`WRITE_BEHIND`] bytes copied, so that the disk writes while the kernel
/// copies on (an fsync of the whole copy afterwards would wait for all of it).
fn copy_range(src: &File, dst: &File, range: Range<u64>) -> io::Result<()> {
    let mut pos = range.start;
    let mut unsynced = pos;
    while pos < range.end {
        if pos - unsynced >= WRITE_BEHIND {
            start_write_back(dst, unsynced..pos);
            unsynced = pos;
        }
        let mut off_in = libc::loff_t::try_from(pos).map_err(io::Error::other)?;
        let mut off_out = off_in;
        let len = usize::try_from(range.end - pos)
            .unwrap_or(usize::MAX)
            .min(WRITE_BEHIND as usize);
        // SAFETY: both descriptors are ours and the offsets are valid pointers to locals.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                len,
                0,
            )
        };
        match n {
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the source ends at byte {pos}, before byte {}", range.end),
                ));
            }
            n => pos += n as u64,
        }
    }
    start_write_back(dst, unsynced..pos);
    Ok(())
}

/// Start writing `range` of `f` back to disk, without waiting (`sync_file_range`). Only a
/// head start for the fsync that follows, which reports any error.
fn start_write_back(f: &File, range: Range<u64>) {
    let (Ok(at), Ok(len)) = (
        libc::off64_t::try_from(range.start),
        libc::off64_t::try_from(range.end - range.start),
    ) else {
        return;
    };
    // SAFETY: a hint on a descriptor we own; no memory is passed.
    unsafe { libc::sync_file_range(f.as_raw_fd(), at, len, libc::SYNC_FILE_RANGE_WRITE) };
}

/// The sha256 of all of `file`, in hex: its data extents read, its holes hashed as the zeros
/// they read as without reading them.
pub fn sha256_sparse(file: &File) -> io::Result<String> {
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    let size = file.metadata()?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut pos = 0;
    let zeros = |hasher: &mut Sha256, mut n: u64| {
        while n > 0 {
            let k = n.min(ZEROS.len() as u64);
            hasher.update(&ZEROS[..k as usize]);
            n -= k;
        }
    };
    for r in data_ranges(file)? {
        zeros(&mut hasher, r.start - pos);
        pos = r.start;
        while pos < r.end {
            let n = usize::try_from(r.end - pos)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            file.read_exact_at(&mut buf[..n], pos)?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
    }
    zeros(&mut hasher, size - pos);
    Ok(hex(&hasher.finalize()))
}

/// An output file being written: a temp file beside the final path, renamed into place by
/// [`PendingOutput::commit`]. Dropped without commit, the temp file is removed.
#[derive(Debug)]
pub struct PendingOutput {
    temp: PathBuf,
    target: PathBuf,
    file: File,
    committed: bool,
    /// Removes the temp file on SIGINT/SIGTERM while it exists.
    _registered: Registered,
}

impl PendingOutput {
    /// Create the temp file for `target` in the same directory (so the rename is atomic).
    pub fn create(target: &Path) -> Result<PendingOutput, ImageError> {
        let (temp, file, registered) =
            tempfiles::create_file_beside(target).at(&parent_dir(target))?;
        Ok(PendingOutput {
            temp,
            target: target.to_owned(),
            file,
            committed: false,
            _registered: registered,
        })
    }

    /// The open temp file.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The temp file's path (for tools that open it by name).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// fsync the temp file, rename it to the final path and fsync the directory.
    pub fn commit(self) -> Result<PathBuf, ImageError> {
        self.file.sync_all().at(&self.temp)?;
        self.rename()
    }

    /// [`commit`](Self::commit), and the file's sha256 (hex), computed on another thread while
    /// fsync waits for the disk.
    pub fn commit_hashed(self) -> Result<(PathBuf, String), ImageError> {
        let sha256 = std::thread::scope(|scope| {
            let hashing = scope.spawn(|| sha256_sparse(&self.file));
            let synced = self.file.sync_all();
            let hashed = hashing
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the hashing thread panicked")));
            synced.and(hashed)
        })
        .at(&self.temp)?;
        Ok((self.rename()?, sha256))
    }

    /// Rename the (synced) temp file to the final path and fsync the directory.
    fn rename(mut self) -> Result<PathBuf, ImageError> {
        fs::rename(&self.temp, &self.target).at(&self.target)?;
        self.committed = true;
        let dir = parent_dir(&self.target);
        File::open(&dir).and_then(|d| d.sync_all()).at(&dir)?;
        Ok(self.target.clone())
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_bytes_and_makes_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 10 << 20];
        data[5] = 1;
        data[(9 << 20) + 17] = 2;
        let path = dir.path().join("out");
        let mut out = File::create(&path).unwrap();
        let n = copy_sparse(&mut &data[..], &mut out).unwrap();
        assert_eq!(n, data.len() as u64);
        drop(out);
        assert_eq!(fs::read(&path).unwrap(), data);
        // Two 4 KiB blocks hold data; allow for filesystem allocation granularity.
        assert!(fs::metadata(&path).unwrap().blocks() * 512 < 1 << 20);
    }

    #[test]
    fn trailing_zeros_still_give_the_full_length() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![0u8; 12345];
        let mut out = File::create(dir.path().join("z")).unwrap();
        assert_eq!(copy_sparse(&mut &data[..], &mut out).unwrap(), 12345);
        assert_eq!(out.metadata().unwrap().len(), 12345);
    }

    /// A sparse file of `len` bytes with `data` written at each offset.
    fn sparse_file(path: &Path, len: u64, data: &[(u64, &[u8])]) -> File {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap();
        f.set_len(len).unwrap();
        for (at, bytes) in data {
            f.write_all_at(bytes, *at).unwrap();
        }
        f
    }

    #[test]
    fn a_file_copy_keeps_bytes_and_holes_and_its_sha256_is_sha256sums() {
        let dir = tempfile::tempdir().unwrap();
        let len = 64 << 20;
        let block = vec![0xa5u8; 1 << 20];
        let src = sparse_file(
            &dir.path().join("src"),
            len,
            &[(0, b"head"), (20 << 20, &block), (len - 3, b"end")],
        );
        let data = data_ranges(&src).unwrap();
        assert!(data.len() >= 3 && data.iter().all(|r| r.start < r.end && r.end <= len));
        assert!(data.iter().map(|r| r.end - r.start).sum::<u64>() < 8 << 20);
        let mut dst = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("dst"))
            .unwrap();
        let (n, how) = copy_file(&src, &mut dst, &data).unwrap();
        assert_eq!(n, len);
        assert_ne!(
            how,
            CopyMethod::ReadWrite,
            "copy_file_range works on this filesystem"
        );
        drop(dst);
        let cmp = std::process::Command::new("cmp")
            .arg(dir.path().join("src"))
            .arg(dir.path().join("dst"))
            .status()
            .unwrap();
        assert!(cmp.success());
        let dst = File::open(dir.path().join("dst")).unwrap();
        assert!(
            dst.metadata().unwrap().blocks() * 512 < 8 << 20,
            "holes stayed holes"
        );
        let ours = sha256_sparse(&dst).unwrap();
        let out = std::process::Command::new("sha256sum")
            .arg(dir.path().join("dst"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout)[..64], ours);
    }

    #[test]
    fn uncommitted_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("node.img");
        {
            let mut pending = PendingOutput::create(&target).unwrap();
            pending.file().write_all(b"half").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut pending = PendingOutput::create(&target).unwrap();
        pending.file().write_all(b"whole").unwrap();
        pending.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"whole");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn two_outputs_for_one_target_do_not_share_a_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("node.img");
        let mut a = PendingOutput::create(&target).unwrap();
        let mut b = PendingOutput::create(&target).unwrap();
        assert_ne!(a.temp_path(), b.temp_path());
        a.file().write_all(b"a").unwrap();
        b.file().write_all(b"b").unwrap();
        drop(b);
        a.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"a");
    }

    #[test]
    fn a_symlink_at_the_final_path_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let target = dir.path().join("node.img");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        let mut out = PendingOutput::create(&target).unwrap();
        out.file().write_all(b"image").unwrap();
        out.commit().unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(
            !fs::symlink_metadata(&target)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&target).unwrap(), b"image");
    }
}
