//! File stamps: what the kernel says about a file that changes whenever its contents do, so
//! that a hash taken of a file can be reused while its stamp holds.

use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{AtPath, PathError};

/// What the kernel says about a file that changes whenever its contents do: size, inode,
/// modification and change times. `ctime` cannot be set back by `touch` or `cp -p`, so an equal
/// stamp means the contents a recorded hash was taken from are unchanged (short of a clock set
/// back), and hashing a multi-GB file again can be skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Device number of the filesystem.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Modification time, nanoseconds since 1970.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since 1970.
    pub ctime_ns: i64,
}

impl FileStamp {
    /// The stamp of the file at `path` (following symlinks).
    pub fn of(path: &Path) -> Result<FileStamp, PathError> {
        Ok(FileStamp::of_metadata(&fs::metadata(path).at(path)?))
    }

    /// The stamp in `m` (of an open file: `File::metadata`).
    pub fn of_metadata(m: &Metadata) -> FileStamp {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        FileStamp {
            size: m.len(),
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }
}
