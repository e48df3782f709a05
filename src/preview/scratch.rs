//! The scratch directory a preview boots from: a copy of the image (the guest writes to its
//! disk; the image itself is never opened for writing), the kernel and initramfs taken out of
//! it, the console log. Removed when dropped, whatever happened. And Ctrl-C: a flag set by
//! SIGINT/SIGTERM while a preview runs, which the boot loop polls.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::image::copy_sparse;
use crate::io::{AtPath, PathError};

/// A directory of our own, removed with everything in it when dropped.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Create `.pi-image-preview.<label>.<pid>.<n>` beside `image` (same filesystem: a reflink
    /// copy is possible, and /tmp may be RAM), or in the system's temp directory when that
    /// directory is not writable. Created exclusively, mode 0700.
    pub fn create(image: &Path, label: &str) -> Result<Scratch, PathError> {
        let near = match image.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        match Self::create_in(&near, label) {
            Err(e)
                if matches!(
                    e.source.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                Self::create_in(&std::env::temp_dir(), label)
            }
            other => other,
        }
    }

    fn create_in(parent: &Path, label: &str) -> Result<Scratch, PathError> {
        let mut n = 0u32;
        loop {
            let dir = parent.join(format!(
                ".pi-image-preview.{label}.{}.{n}",
                std::process::id()
            ));
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Scratch { dir }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(PathError::new(&dir, e)),
            }
        }
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A new file inside the directory (never an existing one).
    pub fn create_file(&self, name: &str) -> Result<(File, PathBuf), PathError> {
        let path = self.path(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .at(&path)?;
        Ok((file, path))
    }

    /// Copy `image` to `name` here: a reflink where the filesystem shares blocks (instant), else
    /// a sparse copy (zero blocks become holes).
    pub fn copy_image(&self, image: &Path, name: &str) -> Result<PathBuf, PathError> {
        let mut src = File::open(image).at(image)?;
        let (mut dst, path) = self.create_file(name)?;
        // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are
        // open files of ours. On any error nothing was written and we copy instead.
        let cloned = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0;
        if !cloned {
            copy_sparse(&mut src, &mut dst).at(&path)?;
        }
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Set by SIGINT/SIGTERM while an [`InterruptGuard`] lives.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether Ctrl-C (or SIGTERM) came since the guard was made.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// While alive, SIGINT and SIGTERM only set the flag [`interrupted`] reads, so that a preview
/// stops QEMU and removes its scratch copy instead of dying with them in place. The handlers
/// that were there before come back when it is dropped.
pub struct InterruptGuard {
    old: [(libc::c_int, libc::sigaction); 2],
}

impl InterruptGuard {
    /// Install the handler.
    pub fn install() -> InterruptGuard {
        INTERRUPTED.store(false, Ordering::SeqCst);
        let signals = [libc::SIGINT, libc::SIGTERM];
        // SAFETY: sigaction with a zeroed (empty mask, no flags) struct and an async-signal-safe
        // handler that only stores to an atomic; `old` receives the previous action.
        let old = signals.map(|sig| unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut new.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, &new, &mut old);
            (sig, old)
        });
        InterruptGuard { old }
    }
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        for (sig, old) in &self.old {
            // SAFETY: restores an action sigaction gave us.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn a_copy_keeps_the_bytes_and_the_holes_and_goes_away() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("node.img");
        let mut f = File::create(&image).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let scratch = Scratch::create(&image, "node").unwrap();
        let copy = scratch.copy_image(&image, "disk.img").unwrap();
        assert!(copy.starts_with(tmp.path()));
        assert_eq!(fs::read(&copy).unwrap(), fs::read(&image).unwrap());
        use std::os::unix::fs::MetadataExt;
        assert!(fs::metadata(&copy).unwrap().blocks() * 512 < 1 << 20);
        // Never over an existing file.
        assert!(scratch.copy_image(&image, "disk.img").is_err());
        let dir = copy.parent().unwrap().to_owned();
        let second = Scratch::create(&image, "node").unwrap();
        assert_ne!(second.path("x"), scratch.path("x"));
        drop(scratch);
        assert!(!dir.exists());
        assert!(image.exists());
    }
}
