//! Where an image goes: a disk that passes every safety rule of [`Disk::check`], or with
//! `--to-file` a regular file (never a block device, a symlink or the image itself).
//!
//! A disk is opened first (`O_EXCL`, which the kernel refuses while anything else holds it) and
//! every rule is then checked for the device behind the open descriptor (`fstat`), not for
//! whatever the path names later: the descriptor is the one written, so a path swapped after
//! the question is not.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::FlashError;
use super::devices::{self, DeviceError, Disk, SysRoot};
use crate::io::{AtPath, PathError};

/// Where an image goes: a checked disk, or a regular file (`--to-file`).
#[derive(Debug, Clone)]
pub struct Target {
    /// The device node or file.
    pub path: PathBuf,
    /// The disk, for block devices.
    pub disk: Option<Disk>,
    /// The disk, opened exclusively when it was checked.
    pub device: Option<Arc<OpenDevice>>,
    /// Unwritten ranges already read as zero: true for files, which are written as a new file
    /// beside the path and renamed over it when complete.
    pub fresh: bool,
}

/// A disk opened for writing, exclusively.
#[derive(Debug)]
pub struct OpenDevice {
    /// The open device.
    pub file: File,
    /// Whether it was opened with `O_DIRECT`.
    pub direct: bool,
}

impl Target {
    /// Check `path` as a target for an image of `image_size` bytes: a disk passing every
    /// safety rule of [`Disk::check`] (opened first, checked through the open descriptor), or
    /// with `to_file` a regular file or a new one (never a block device, a symlink or the image
    /// itself).
    pub fn check(
        path: &Path,
        image: &Path,
        image_size: u64,
        to_file: bool,
        force: bool,
        root: &SysRoot,
    ) -> Result<Target, FlashError> {
        if to_file {
            check_file(path, image)?;
            return Ok(Target {
                path: path.to_owned(),
                disk: None,
                device: None,
                fresh: true,
            });
        }
        devices::block_device(path)?;
        let device = match open_exclusive(path) {
            Ok(d) => d,
            Err(e) if e.source.raw_os_error() == Some(libc::EBUSY) => {
                // Held by someone: the rules usually say by whom (mounted, swap, holders).
                let disk = devices::disk_for(root, path)?;
                disk.check(path, image_size, force)?;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let rdev = device.file.metadata().at(path)?.rdev();
        root.allows(path, rdev)?;
        let disk = devices::disk_for_dev(root, path, rdev)?;
        disk.check(path, image_size, force)?;
        Ok(Target {
            path: path.to_owned(),
            disk: Some(disk),
            device: Some(Arc::new(device)),
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

/// `--to-file`: `path` may be missing or a regular file, but not a symlink (a link is the user's
/// pointer to something else: give that instead), a block device or the image itself.
fn check_file(path: &Path, image: &Path) -> Result<(), FlashError> {
    let refuse = |reason: &str| -> FlashError {
        DeviceError::Refused {
            path: path.to_owned(),
            reason: reason.into(),
        }
        .into()
    };
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let ft = m.file_type();
    if ft.is_symlink() {
        return Err(refuse(
            "it is a symlink; --to-file writes regular files only (give the file it points to)",
        ));
    }
    if ft.is_block_device() {
        return Err(refuse(
            "--to-file writes regular files, this is a block device",
        ));
    }
    if !ft.is_file() {
        return Err(refuse("--to-file writes regular files, this is not one"));
    }
    let im = std::fs::metadata(image).at(image)?;
    if im.dev() == m.dev() && im.ino() == m.ino() {
        return Err(refuse("it is the image itself"));
    }
    Ok(())
}

/// Open a disk for writing, exclusively (`O_EXCL`: the kernel refuses while it is mounted or
/// otherwise held), with `O_DIRECT` where the device allows it.
fn open_exclusive(path: &Path) -> Result<OpenDevice, PathError> {
    let open = |direct: bool| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_EXCL | libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 })
            .open(path)
    };
    match open(true) {
        Ok(file) => Ok(OpenDevice { file, direct: true }),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(OpenDevice {
            file: open(false).at(path)?,
            direct: false,
        }),
        Err(e) => Err(PathError::new(path, e)),
    }
}
