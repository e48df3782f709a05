//! Disk images and the formats inside them: compressed streams ([`compressed`]), atomic sparse
//! outputs ([`output`]), copy-on-write images over a base ([`cow`]), the partition table ([`partition`]) and a byte-range view of one
//! partition ([`partview`]), the FAT boot partition ([`bootfs`]), the ext4 root ([`ext4`]), and
//! which blocks of an image matter ([`blockmap`]).

pub mod blockmap;
pub mod bmap;
pub mod bootfs;
pub mod compressed;
pub mod cow;
pub mod ext4;
pub mod output;
pub mod partition;
pub mod partview;

pub use self::compressed::{Format, decoder, is_compressed, open_base};
pub use self::output::{CopyMethod, PendingOutput, copy_file, copy_sparse, data_ranges};

use std::path::PathBuf;

use crate::io::PathError;

/// Errors reading a base image or writing an output.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// I/O on a named file failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The compressed base is corrupt or truncated.
    #[error("{path}: cannot decompress: {reason}")]
    Decompress {
        /// The base image.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
}
