//! The library's error type: one variant per module error, each already naming its file and field.

use crate::base::{cache::CacheError, fetch::FetchError};
use crate::build::{BuildError, eeprom::EepromCardError, overlay::OverlayError};
use crate::dist::{DistError, chunks::ChunkError};
use crate::image::{
    ImageError, blockmap::BlockMapError, bootfs::BootFsError, ext4::Ext4Error,
    partition::PartitionError,
};
use crate::io::PathError;
use crate::profile::ProfileError;

/// Errors the library reports. Each names the file (and where known the field) it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error(transparent)]
    Io(#[from] PathError),
    /// A profile is invalid.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// A partition table is missing, invalid or truncated.
    #[error(transparent)]
    Partition(#[from] PartitionError),
    /// A base image cannot be read or an output cannot be written.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The FAT boot partition cannot be read or changed.
    #[error(transparent)]
    BootFs(#[from] BootFsError),
    /// The ext4 root filesystem cannot be read or changed.
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
    /// An overlay tree is invalid.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// A node image cannot be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// EEPROM update files or the EEPROM card cannot be made.
    #[error(transparent)]
    EepromCard(#[from] EepromCardError),
    /// A base image could not be downloaded or verified.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The image cache could not be read or changed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// An image's block map could not be made.
    #[error(transparent)]
    BlockMap(#[from] BlockMapError),
    /// An image could not be compressed into chunks.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// The release index files could not be read or written.
    #[error(transparent)]
    Dist(#[from] DistError),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
