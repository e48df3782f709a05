//! Where an image goes: a disk that passes every safety rule of [`Disk::check`], or with
//! `--to-file` a regular file (never a block device, never the image itself).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::FlashError;
use super::devices::{self, DeviceError, Disk, SysRoot};
use crate::io::AtPath;

/// Where an image goes: a checked disk, or a regular file (`--to-file`).
#[derive(Debug, Clone)]
pub struct Target {
    /// The device node or file.
    pub path: PathBuf,
    /// The disk, for block devices.
    pub disk: Option<Disk>,
    /// A file that did not exist (or was empty) before: unwritten ranges already read as zero.
    pub fresh: bool,
}

impl Target {
    /// Check `path` as a target for an image of `image_size` bytes: a disk passing every
    /// safety rule of [`Disk::check`], or with `to_file` a regular file (never a block device,
    /// never the image itself).
    pub fn check(
        path: &Path,
        image: &Path,
        image_size: u64,
        to_file: bool,
        force: bool,
        root: &SysRoot,
    ) -> Result<Target, FlashError> {
        if to_file {
            let meta = std::fs::metadata(path);
            if let Ok(m) = &meta {
                if m.file_type().is_block_device() {
                    return Err(DeviceError::Refused {
                        path: path.to_owned(),
                        reason: "--to-file writes regular files, this is a block device".into(),
                    }
                    .into());
                }
                if !m.is_file() {
                    return Err(DeviceError::Refused {
                        path: path.to_owned(),
                        reason: "--to-file writes regular files, this is not one".into(),
                    }
                    .into());
                }
                let im = std::fs::metadata(image).at(image)?;
                if im.dev() == m.dev() && im.ino() == m.ino() {
                    return Err(DeviceError::Refused {
                        path: path.to_owned(),
                        reason: "it is the image itself".into(),
                    }
                    .into());
                }
            }
            return Ok(Target {
                path: path.to_owned(),
                disk: None,
                fresh: meta.map(|m| m.len() == 0).unwrap_or(true),
            });
        }
        let disk = devices::disk_for(root, path)?;
        disk.check(path, image_size, force)?;
        Ok(Target {
            path: path.to_owned(),
            disk: Some(disk),
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
