//! Outputs written atomically (a temp file in the same directory, fsync, rename), so that a failed
//! run never leaves a file at the final path, and sparse copies (all-zero blocks become holes).
//! The temp file is created exclusively under an unpredictable name and never through a symlink
//! ([`crate::io::tempfiles`]); the rename replaces whatever is at the final path (a symlink
//! itself, never the file it points to).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::ImageError;
use crate::io::tempfiles::{self, Registered, parent_dir};
use crate::io::{AtPath, read_full};

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
    pub fn commit(mut self) -> Result<PathBuf, ImageError> {
        self.file.sync_all().at(&self.temp)?;
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
