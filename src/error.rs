//! The library's error type: one variant per module error, each already naming its file and field.

use std::path::PathBuf;

/// Errors the library reports. Each names the file (and where known the field) it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file the error is about.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A profile is invalid.
    #[error(transparent)]
    Profile(#[from] crate::profile::ProfileError),
    /// A partition table is missing, invalid or truncated.
    #[error(transparent)]
    Partition(#[from] crate::image::partition::PartitionError),
    /// A base image cannot be read or an output cannot be written.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// The FAT boot partition cannot be read or changed.
    #[error(transparent)]
    BootFs(#[from] crate::image::bootfs::BootFsError),
    /// The ext4 root filesystem cannot be read or changed.
    #[error(transparent)]
    Ext4(#[from] crate::image::ext4::Ext4Error),
    /// An overlay tree is invalid.
    #[error(transparent)]
    Overlay(#[from] crate::profile::overlay::OverlayError),
    /// A base image could not be downloaded or verified.
    #[error(transparent)]
    Fetch(#[from] crate::base::fetch::FetchError),
    /// The image cache could not be read or changed.
    #[error(transparent)]
    Cache(#[from] crate::base::cache::CacheError),
    /// An image's block map could not be made.
    #[error(transparent)]
    BlockMap(#[from] crate::image::blockmap::BlockMapError),
    /// An image could not be compressed into chunks.
    #[error(transparent)]
    Chunk(#[from] crate::dist::chunks::ChunkError),
    /// The release index files could not be read or written.
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    /// Anything else, already phrased for the user.
    #[error("{0}")]
    Msg(String),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
