//! Outputs written atomically (a temp file in the same directory, fsync, rename), so that a failed
//! run never leaves a file at the final path, and sparse copies (all-zero blocks become holes).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::ImageError;
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
}

impl PendingOutput {
    /// Create the temp file for `target` in the same directory (so the rename is atomic).
    pub fn create(target: &Path) -> Result<PendingOutput, ImageError> {
        let dir = parent_dir(target);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .at(&temp)?;
        Ok(PendingOutput {
            temp,
            target: target.to_owned(),
            file,
            committed: false,
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

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
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
}
