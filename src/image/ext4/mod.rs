//! The ext4 root filesystem, edited in place inside an image file.
//!
//! All reading and writing goes through e2fsprogs' libext2fs (the library behind `mke2fs`,
//! `e2fsck` and `debugfs`), reached through a small C shim (`src/image/ext4/shim.c`) so that no
//! libext2fs struct layout is mirrored in Rust. The filesystem is opened at a byte offset inside
//! the image file: no root, mounts or loop devices are needed, and bytes outside the
//! filesystem are never touched.
//!
//! Output is reproducible: every timestamp written comes from the caller's [`Attrs`] (or, for the
//! superblock and deleted inodes, from the filesystem itself), and libext2fs allocates inodes
//! and blocks deterministically, so the same edits on the same image give identical bytes.

use std::ffi::{CStr, CString, c_char, c_int, c_long, c_void};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use crate::plan::release::OsRelease;

/// The C shim's interface. Every function returns 0 or a libext2fs/errno error code.
mod ffi {
    use std::ffi::{c_char, c_int, c_long, c_void};

    /// An open filesystem (libext2fs `ext2_filsys`), opaque here.
    pub type Fs = *mut c_void;
    /// An open file inside it (libext2fs `ext2_file_t`), opaque here.
    pub type File = *mut c_void;
    /// Directory listing callback: context, name bytes, name length, `EXT2_FT_*` type.
    pub type DirentFn = unsafe extern "C" fn(*mut c_void, *const c_char, usize, c_int);
    /// Block run callback: context, first block, number of blocks.
    pub type RunFn = unsafe extern "C" fn(*mut c_void, u64, u64);

    /// Mirrors `struct pi_info` in shim.c (all fields 64-bit, so there is no padding to match).
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct Info {
        pub block_size: u64,
        pub blocks_count: u64,
        pub free_blocks: u64,
        pub reserved_blocks: u64,
        pub free_inodes: u64,
        pub feature_compat: u64,
        pub feature_incompat: u64,
        pub feature_ro_compat: u64,
        pub state: u64,
        pub last_orphan: u64,
    }

    /// Mirrors `struct pi_stat` in shim.c.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct Stat {
        pub mode: u64,
        pub uid: u64,
        pub gid: u64,
        pub size: u64,
        pub mtime: i64,
        pub links: u64,
        pub alloc_bytes: u64,
    }

    // SAFETY (for every function): `fs` must be a live handle from `pi_open` not yet passed to
    // `pi_close`, `file` a live handle from `pi_file_open`, strings NUL-terminated, and buffers
    // valid for the given length. The Rust wrappers below uphold this; libext2fs keeps no
    // pointer to our buffers after a call returns.
    unsafe extern "C" {
        pub fn pi_strerror(code: c_long) -> *const c_char;
        pub fn pi_is_not_found(code: c_long) -> c_int;
        pub fn pi_open(path: *const c_char, offset: u64, writable: c_int, out: *mut Fs) -> c_long;
        pub fn pi_info(fs: Fs, out: *mut Info);
        pub fn pi_set_now(fs: Fs, now: i64);
        pub fn pi_close(fs: Fs) -> c_long;
        pub fn pi_namei(fs: Fs, path: *const c_char, follow: c_int, ino: *mut u32) -> c_long;
        pub fn pi_lookup(fs: Fs, dir: u32, name: *const c_char, ino: *mut u32) -> c_long;
        pub fn pi_stat(fs: Fs, ino: u32, out: *mut Stat) -> c_long;
        pub fn pi_set_attrs(fs: Fs, ino: u32, mode: u32, uid: u32, gid: u32, time: i64) -> c_long;
        pub fn pi_mkdir(fs: Fs, parent: u32, name: *const c_char, ino: *mut u32) -> c_long;
        pub fn pi_symlink(
            fs: Fs,
            parent: u32,
            name: *const c_char,
            target: *const c_char,
            ino: *mut u32,
        ) -> c_long;
        pub fn pi_create(fs: Fs, parent: u32, name: *const c_char, ino: *mut u32) -> c_long;
        pub fn pi_file_open(fs: Fs, ino: u32, write: c_int, out: *mut File) -> c_long;
        pub fn pi_file_write(file: File, buf: *const c_void, len: usize) -> c_long;
        pub fn pi_file_read(file: File, buf: *mut c_void, len: usize, got: *mut usize) -> c_long;
        pub fn pi_file_close(file: File) -> c_long;
        pub fn pi_unlink(fs: Fs, parent: u32, name: *const c_char, ino: u32) -> c_long;
        pub fn pi_list_dir(fs: Fs, dir: u32, f: DirentFn, ctx: *mut c_void) -> c_long;
        pub fn pi_used_block_runs(fs: Fs, f: RunFn, ctx: *mut c_void) -> c_long;
    }
}

/// The root directory's inode number.
const ROOT_INO: u32 = 2;
/// The longest name an ext4 directory entry holds.
const MAX_NAME: usize = 255;
/// Upper limit for [`Ext4Fs::read_file`], which is meant for small configuration files.
const MAX_READ: u64 = 16 << 20;
/// How much of a source file is held in memory at once while writing.
const CHUNK: usize = 1 << 20;
/// Symlink targets shorter than this live in the inode itself (ext4 "fast" symlinks).
const FAST_SYMLINK_MAX: usize = 60;
/// Blocks a new directory entry may cost its parent: a split leaf plus a new index block (or a
/// new block and an extent block for an unindexed directory).
const DIR_ENTRY_SLACK_BLOCKS: u64 = 2;
/// The block size [`bytes_needed`] callers assume when they do not have the filesystem at hand.
pub const TYPICAL_BLOCK_SIZE: u64 = 4096;

const S_IFMT: u64 = 0o170000;
const S_IFDIR: u64 = 0o040000;
const S_IFREG: u64 = 0o100000;
const S_IFLNK: u64 = 0o120000;

const FT_REG_FILE: c_int = 1;
const FT_DIR: c_int = 2;
const FT_SYMLINK: c_int = 7;

const STATE_VALID: u64 = 0x1;
const STATE_ERROR: u64 = 0x2;

const INCOMPAT_RECOVER: u64 = 0x4;
/// Incompatible features we know how to write with: filetype, meta_bg, extent, 64bit, flex_bg,
/// metadata_csum_seed, large_dir. Everything else (inline_data, encrypt, casefold, mmp,
/// ea_inode, ...) would need handling the shim does not do.
const INCOMPAT_OK: u64 = 0x2 | 0x10 | 0x40 | 0x80 | 0x200 | 0x2000 | 0x4000;
/// Read-only-compatible features we keep consistent while writing: sparse_super, large_file,
/// huge_file, uninit_bg, dir_nlink, extra_isize, metadata_csum. (quota, for one, would need
/// usage updates.)
const RO_COMPAT_OK: u64 = 0x1 | 0x2 | 0x8 | 0x10 | 0x20 | 0x40 | 0x400;
const INCOMPAT_NAMES: &[(u64, &str)] = &[
    (0x1, "compression"),
    (0x8, "journal_dev"),
    (0x100, "mmp"),
    (0x400, "ea_inode"),
    (0x1000, "dirdata"),
    (0x8000, "inline_data"),
    (0x10000, "encrypt"),
    (0x20000, "casefold"),
];
const RO_COMPAT_NAMES: &[(u64, &str)] = &[
    (0x4, "btree_dir"),
    (0x80, "snapshot"),
    (0x100, "quota"),
    (0x200, "bigalloc"),
    (0x800, "replica"),
    (0x1000, "read-only"),
    (0x2000, "project"),
    (0x4000, "shared_blocks"),
    (0x8000, "verity"),
    (0x10000, "orphan_present"),
];

/// Errors from the ext4 module. Each names the image file, and the path inside the filesystem
/// where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// libext2fs could not open the filesystem.
    #[error("{image}: cannot open the ext4 filesystem at byte offset {offset}: {message}")]
    Open {
        /// The image file.
        image: PathBuf,
        /// Where the filesystem starts in it.
        offset: u64,
        /// libext2fs' explanation.
        message: String,
    },
    /// The journal holds changes not yet applied; editing around them would corrupt the fs.
    #[error(
        "{image}: the ext4 filesystem needs journal recovery (it was not cleanly unmounted); mount it once or run e2fsck -fy on it first"
    )]
    NeedsRecovery {
        /// The image file.
        image: PathBuf,
    },
    /// The filesystem uses features this module cannot keep consistent.
    #[error("{image}: the ext4 filesystem uses features pi-image cannot edit safely: {features}")]
    Unsupported {
        /// The image file.
        image: PathBuf,
        /// The offending feature names, comma-separated.
        features: String,
    },
    /// The filesystem is marked as having errors or pending cleanup.
    #[error("{image}: the ext4 filesystem {problem}; run e2fsck -fy on it first")]
    Unclean {
        /// The image file.
        image: PathBuf,
        /// What is wrong, e.g. "has errors recorded".
        problem: &'static str,
    },
    /// The superblock claims more bytes than the partition holds.
    #[error(
        "{image}: the ext4 filesystem claims {fs_bytes} bytes but its partition holds only {len}"
    )]
    TooBig {
        /// The image file.
        image: PathBuf,
        /// Size according to the superblock.
        fs_bytes: u64,
        /// Size of the byte range given to [`Ext4Fs::open`].
        len: u64,
    },
    /// A libext2fs operation failed.
    #[error("{image}: {path}: {op}: {message}")]
    Lib {
        /// The image file.
        image: PathBuf,
        /// The path inside the filesystem.
        path: String,
        /// What was being done.
        op: &'static str,
        /// libext2fs' explanation.
        message: String,
    },
    /// The request cannot be carried out on this path (bad path, wrong file type, missing
    /// parent, ...).
    #[error("{image}: {path}: {problem}")]
    Path {
        /// The image file.
        image: PathBuf,
        /// The path inside the filesystem.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// Not enough free space; nothing was changed.
    #[error("{image}: {path}: not enough space in the ext4 filesystem: need {missing} bytes more")]
    NoSpace {
        /// The image file.
        image: PathBuf,
        /// The path that was to be written.
        path: String,
        /// How many more free bytes the write needs.
        missing: u64,
    },
    /// No free inodes; nothing was changed.
    #[error("{image}: {path}: no free inodes left in the ext4 filesystem")]
    NoInodes {
        /// The image file.
        image: PathBuf,
        /// The path that was to be created.
        path: String,
    },
    /// Reading the content to write failed, or it had a different length than announced.
    #[error("{image}: {path}: reading the content to write: {source}")]
    Source {
        /// The image file.
        image: PathBuf,
        /// The path being written.
        path: String,
        /// The reader's error.
        source: std::io::Error,
    },
    /// The filesystem was opened read-only.
    #[error("{image}: the ext4 filesystem was opened read-only")]
    ReadOnly {
        /// The image file.
        image: PathBuf,
    },
    /// `/etc/os-release` is missing or lacks what we need.
    #[error("{image}: /etc/os-release: {problem}")]
    OsRelease {
        /// The image file.
        image: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// Ownership, permissions and time for something written into the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    /// Permission bits including setuid/setgid/sticky (`0o7777` mask; the file type is implied).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Seconds since the epoch, used for mtime, ctime, atime and crtime alike.
    pub mtime: i64,
}

/// The type of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// One entry of [`Ext4Fs::list_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Entry {
    /// The name (bytes that are not UTF-8 are shown as U+FFFD).
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
}

/// What a write will allocate, for [`bytes_needed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A regular file of this many bytes.
    File(u64),
    /// A directory.
    Dir,
    /// A symlink whose target is this many bytes long.
    Symlink(usize),
}

/// An upper bound on the bytes a new file, directory or symlink takes from the free space of a
/// filesystem with `block_size`-byte blocks: its data blocks, the extent tree blocks a fully
/// fragmented layout would need, and what adding its name may cost the parent directory.
/// [`Ext4Fs`] refuses a write when this exceeds [`Ext4Fs::free_bytes`], so a batch whose summed
/// need fits is guaranteed to complete.
pub fn bytes_needed(need: Need, block_size: u64) -> u64 {
    let data = match need {
        Need::File(size) => size.div_ceil(block_size),
        Need::Dir => 1,
        Need::Symlink(len) if len < FAST_SYMLINK_MAX => 0,
        Need::Symlink(_) => 1,
    };
    // Four extents fit in the inode; beyond that leaves of (block_size - 12) / 12 extents, and
    // one index block above them.
    let per_leaf = (block_size - 12) / 12;
    let extent_blocks = if data > 4 {
        data.div_ceil(per_leaf) + 1
    } else {
        0
    };
    (data + extent_blocks + DIR_ENTRY_SLACK_BLOCKS) * block_size
}

/// An ext4 filesystem inside an image file, open for reading or editing.
///
/// Changes are written through to the image as they are made; [`Ext4Fs::close`] writes the
/// bitmaps, group descriptors and superblock. Dropping without `close` does the same but can
/// only ignore errors, so call `close`.
pub struct Ext4Fs {
    /// Never null while the value is alive; set to null by `close`.
    fs: ffi::Fs,
    image: PathBuf,
    writable: bool,
    block_size: u64,
}

/// The text of a libext2fs error code.
fn message(code: c_long) -> String {
    // SAFETY: pi_strerror returns a pointer to a static, NUL-terminated string.
    unsafe { CStr::from_ptr(ffi::pi_strerror(code)) }
        .to_string_lossy()
        .into_owned()
}

fn is_not_found(code: c_long) -> bool {
    // SAFETY: a pure function of an integer.
    unsafe { ffi::pi_is_not_found(code) != 0 }
}

/// Splits an absolute, '/'-separated path into its names, refusing what ext4 cannot hold or
/// what would make the path ambiguous.
fn components(path: &str) -> Result<Vec<&str>, String> {
    if !path.starts_with('/') {
        return Err("path must be absolute".into());
    }
    let names: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for name in &names {
        if *name == "." || *name == ".." {
            return Err("'.' and '..' are not allowed in paths".into());
        }
        if name.len() > MAX_NAME {
            return Err(format!("name longer than {MAX_NAME} bytes"));
        }
        if name.contains('\0') {
            return Err("name contains a NUL byte".into());
        }
    }
    Ok(names)
}

fn kind_of(mode: u64) -> EntryKind {
    match mode & S_IFMT {
        S_IFREG => EntryKind::File,
        S_IFDIR => EntryKind::Dir,
        S_IFLNK => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

impl Ext4Fs {
    /// Opens the ext4 filesystem occupying bytes `offset..offset+len` of `image`.
    ///
    /// Refuses filesystems that need journal recovery, have errors or orphans recorded, are
    /// larger than `len`, or use features libext2fs or this module cannot handle. With
    /// `writable` false nothing is ever written; with it true, only the filesystem's own range
    /// is written to, and only when something is changed.
    pub fn open(image: &Path, offset: u64, len: u64, writable: bool) -> Result<Ext4Fs, Ext4Error> {
        Self::open_as(image, image, offset, len, writable)
    }

    /// [`Ext4Fs::open`] on the file `path`, whose errors name `image` instead (the image the user
    /// gave, when `path` is a decompressed or edited copy of it).
    pub fn open_as(
        path: &Path,
        image: &Path,
        offset: u64,
        len: u64,
        writable: bool,
    ) -> Result<Ext4Fs, Ext4Error> {
        let open_err = |message: String| Ext4Error::Open {
            image: image.to_owned(),
            offset,
            message,
        };
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| open_err("the image path contains a NUL byte".into()))?;
        let mut fs: ffi::Fs = std::ptr::null_mut();
        // SAFETY: c_path is NUL-terminated and fs is a valid out-pointer.
        let code = unsafe { ffi::pi_open(c_path.as_ptr(), offset, c_int::from(writable), &mut fs) };
        if code != 0 {
            return Err(open_err(message(code)));
        }
        let mut this = Ext4Fs {
            fs,
            image: image.to_owned(),
            writable,
            block_size: 0,
        };
        let info = this.info();
        this.block_size = info.block_size;
        if let Err(e) = this.check(&info, len) {
            // Nothing was changed, so closing writes nothing.
            this.discard();
            return Err(e);
        }
        Ok(this)
    }

    /// The refusals of [`Ext4Fs::open`].
    fn check(&self, info: &ffi::Info, len: u64) -> Result<(), Ext4Error> {
        let image = self.image.clone();
        let fs_bytes = info.blocks_count.saturating_mul(info.block_size);
        if fs_bytes > len {
            return Err(Ext4Error::TooBig {
                image,
                fs_bytes,
                len,
            });
        }
        if info.feature_incompat & INCOMPAT_RECOVER != 0 {
            return Err(Ext4Error::NeedsRecovery { image });
        }
        let mut bad = Vec::new();
        let unknown_incompat = info.feature_incompat & !INCOMPAT_OK;
        list_features(unknown_incompat, INCOMPAT_NAMES, "incompat", &mut bad);
        if self.writable {
            list_features(
                info.feature_ro_compat & !RO_COMPAT_OK,
                RO_COMPAT_NAMES,
                "ro_compat",
                &mut bad,
            );
        }
        if !bad.is_empty() {
            return Err(Ext4Error::Unsupported {
                image,
                features: bad.join(", "),
            });
        }
        if info.state & STATE_ERROR != 0 {
            return Err(Ext4Error::Unclean {
                image,
                problem: "has errors recorded",
            });
        }
        if self.writable && info.state & STATE_VALID == 0 {
            return Err(Ext4Error::Unclean {
                image,
                problem: "was not cleanly unmounted",
            });
        }
        if self.writable && info.last_orphan != 0 {
            return Err(Ext4Error::Unclean {
                image,
                problem: "has orphaned inodes waiting for cleanup",
            });
        }
        Ok(())
    }

    fn info(&self) -> ffi::Info {
        let mut info = ffi::Info::default();
        // SAFETY: self.fs is live (see the field's invariant); info is a valid out-pointer.
        unsafe { ffi::pi_info(self.fs, &mut info) };
        info
    }

    /// The filesystem's block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Free bytes available for new content: free blocks minus the blocks reserved for root,
    /// so that edits never eat into the reserve the running system relies on.
    pub fn free_bytes(&self) -> u64 {
        let info = self.info();
        info.free_blocks.saturating_sub(info.reserved_blocks) * info.block_size
    }

    /// The filesystem's size in bytes according to its superblock.
    pub fn size_bytes(&self) -> u64 {
        let info = self.info();
        info.blocks_count.saturating_mul(info.block_size)
    }

    /// The runs of blocks in use, as byte ranges relative to the start of the filesystem,
    /// ascending: everything the block bitmaps mark (metadata, journal and inode tables
    /// included), plus the boot block area in front of the first data block.
    pub fn used_byte_ranges(&self) -> Result<Vec<std::ops::Range<u64>>, Ext4Error> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        // SAFETY: self.fs is live; `runs` outlives the call and push_run only appends to it.
        let code =
            unsafe { ffi::pi_used_block_runs(self.fs, push_run, (&raw mut runs).cast::<c_void>()) };
        if code != 0 {
            return Err(self.lib_err("/", "reading the block bitmaps", code));
        }
        let bs = self.block_size;
        // Bytes 0..1024 lie outside the bitmaps when blocks are 1 KiB (first data block 1).
        let mut out = Vec::with_capacity(runs.len() + 1);
        out.push(0..1024);
        out.extend(runs.iter().map(|&(first, n)| first * bs..(first + n) * bs));
        Ok(out)
    }

    /// Writes everything out (without fsync: the image's owner syncs it) and closes the
    /// filesystem.
    pub fn close(mut self) -> Result<(), Ext4Error> {
        let fs = std::mem::replace(&mut self.fs, std::ptr::null_mut());
        // SAFETY: fs is live and, with self.fs nulled, is not used again (Drop skips it).
        let code = unsafe { ffi::pi_close(fs) };
        if code != 0 {
            return Err(self.lib_err("/", "writing out the filesystem", code));
        }
        Ok(())
    }

    /// Closes after a failed check in `open`; nothing was modified, so nothing is written.
    fn discard(mut self) {
        let fs = std::mem::replace(&mut self.fs, std::ptr::null_mut());
        // SAFETY: as in close. Errors are impossible to act on here and nothing was changed.
        unsafe { ffi::pi_close(fs) };
    }

    fn lib_err(&self, path: &str, op: &'static str, code: c_long) -> Ext4Error {
        Ext4Error::Lib {
            image: self.image.clone(),
            path: path.to_owned(),
            op,
            message: message(code),
        }
    }

    fn path_err(&self, path: &str, problem: impl Into<String>) -> Ext4Error {
        Ext4Error::Path {
            image: self.image.clone(),
            path: path.to_owned(),
            problem: problem.into(),
        }
    }

    fn names<'p>(&self, path: &'p str) -> Result<Vec<&'p str>, Ext4Error> {
        components(path).map_err(|p| self.path_err(path, p))
    }

    fn cstr(&self, path: &str, s: &str) -> Result<CString, Ext4Error> {
        CString::new(s).map_err(|_| self.path_err(path, "contains a NUL byte"))
    }

    fn require_writable(&self) -> Result<(), Ext4Error> {
        if self.writable {
            Ok(())
        } else {
            Err(Ext4Error::ReadOnly {
                image: self.image.clone(),
            })
        }
    }

    /// Resolves a path (intermediate symlinks are always followed; the last one only with
    /// `follow`). `None` when it does not exist.
    fn resolve(&self, path: &str, follow: bool) -> Result<Option<u32>, Ext4Error> {
        let names = self.names(path)?;
        let joined = format!("/{}", names.join("/"));
        let c = self.cstr(path, &joined)?;
        let mut ino = 0;
        // SAFETY: live fs, NUL-terminated path, valid out-pointer.
        let code = unsafe { ffi::pi_namei(self.fs, c.as_ptr(), c_int::from(follow), &mut ino) };
        match code {
            0 => Ok(Some(ino)),
            c if is_not_found(c) => Ok(None),
            c => Err(self.lib_err(path, "looking up", c)),
        }
    }

    fn lookup(&self, path: &str, dir: u32, name: &str) -> Result<Option<u32>, Ext4Error> {
        let c = self.cstr(path, name)?;
        let mut ino = 0;
        // SAFETY: live fs, NUL-terminated name, valid out-pointer.
        let code = unsafe { ffi::pi_lookup(self.fs, dir, c.as_ptr(), &mut ino) };
        match code {
            0 => Ok(Some(ino)),
            c if is_not_found(c) => Ok(None),
            c => Err(self.lib_err(path, "looking up", c)),
        }
    }

    fn stat(&self, path: &str, ino: u32) -> Result<ffi::Stat, Ext4Error> {
        let mut st = ffi::Stat::default();
        // SAFETY: live fs, valid out-pointer.
        let code = unsafe { ffi::pi_stat(self.fs, ino, &mut st) };
        if code != 0 {
            return Err(self.lib_err(path, "reading the inode", code));
        }
        Ok(st)
    }

    /// The parent directory's inode and the last name of `path`; the parent must exist.
    fn parent<'p>(&self, path: &'p str) -> Result<(u32, &'p str), Ext4Error> {
        let names = self.names(path)?;
        let Some((name, dirs)) = names.split_last() else {
            return Err(self.path_err(path, "the root directory cannot be replaced"));
        };
        let dir_path = format!("/{}", dirs.join("/"));
        let Some(dir) = self.resolve(&dir_path, true)? else {
            return Err(self.path_err(path, format!("parent directory {dir_path} does not exist")));
        };
        if kind_of(self.stat(path, dir)?.mode) != EntryKind::Dir {
            return Err(self.path_err(path, format!("{dir_path} is not a directory")));
        }
        Ok((dir, name))
    }

    /// Fails, changing nothing, unless `need` bytes (plus what removing an existing entry
    /// frees) and an inode are available.
    fn check_space(
        &self,
        path: &str,
        need: Need,
        freed: u64,
        freed_inode: bool,
    ) -> Result<(), Ext4Error> {
        let needed = bytes_needed(need, self.block_size);
        let available = self.free_bytes() + freed;
        if needed > available {
            return Err(Ext4Error::NoSpace {
                image: self.image.clone(),
                path: path.to_owned(),
                missing: needed - available,
            });
        }
        if self.info().free_inodes == 0 && !freed_inode {
            return Err(Ext4Error::NoInodes {
                image: self.image.clone(),
                path: path.to_owned(),
            });
        }
        Ok(())
    }

    /// What replacing `name` in `dir` would free: `(bytes, inode)`, and an error for
    /// directories, which are never replaced.
    fn replaced(&self, path: &str, existing: Option<u32>) -> Result<(u64, bool), Ext4Error> {
        let Some(ino) = existing else {
            return Ok((0, false));
        };
        let st = self.stat(path, ino)?;
        if kind_of(st.mode) == EntryKind::Dir {
            return Err(self.path_err(path, "is a directory"));
        }
        Ok(if st.links == 1 {
            (st.alloc_bytes, true)
        } else {
            (0, false)
        })
    }

    fn unlink(&self, path: &str, dir: u32, name: &str, ino: u32) -> Result<(), Ext4Error> {
        let c = self.cstr(path, name)?;
        // SAFETY: live fs, NUL-terminated name.
        let code = unsafe { ffi::pi_unlink(self.fs, dir, c.as_ptr(), ino) };
        if code != 0 {
            return Err(self.lib_err(path, "removing", code));
        }
        Ok(())
    }

    /// Refuses, before anything changes, a time ext4 cannot store: 1901-12-13 to 2446-05-10
    /// (32-bit seconds plus two epoch bits).
    fn check_time(&self, path: &str, attrs: &Attrs) -> Result<(), Ext4Error> {
        const RANGE: std::ops::RangeInclusive<i64> = -(1 << 31)..=(1 << 31) - 1 + (3 << 32);
        if RANGE.contains(&attrs.mtime) {
            Ok(())
        } else {
            Err(self.path_err(
                path,
                format!("time {} is outside what ext4 can store", attrs.mtime),
            ))
        }
    }

    fn set_now(&self, time: i64) {
        // SAFETY: live fs.
        unsafe { ffi::pi_set_now(self.fs, time) };
    }

    fn apply_attrs(&self, path: &str, ino: u32, attrs: &Attrs) -> Result<(), Ext4Error> {
        // SAFETY: live fs.
        let code = unsafe {
            ffi::pi_set_attrs(
                self.fs,
                ino,
                attrs.mode & 0o7777,
                attrs.uid,
                attrs.gid,
                attrs.mtime,
            )
        };
        if code != 0 {
            return Err(self.lib_err(path, "setting owner, mode and times", code));
        }
        Ok(())
    }

    /// Creates `path` and any missing parents as directories with `attrs`. Directories that
    /// already exist (also through a symlink, such as Ubuntu's `/lib -> usr/lib`) are left as
    /// they are.
    pub fn mkdir_p(&mut self, path: &str, attrs: &Attrs) -> Result<(), Ext4Error> {
        self.require_writable()?;
        self.check_time(path, attrs)?;
        let names = self.names(path)?;
        let mut dir = ROOT_INO;
        for (i, name) in names.iter().enumerate() {
            let prefix = format!("/{}", names[..=i].join("/"));
            if let Some(ino) = self.lookup(&prefix, dir, name)? {
                let target = match kind_of(self.stat(&prefix, ino)?.mode) {
                    EntryKind::Dir => Some(ino),
                    EntryKind::Symlink => self.resolve(&prefix, true)?,
                    _ => None,
                };
                match target {
                    Some(t) if kind_of(self.stat(&prefix, t)?.mode) == EntryKind::Dir => dir = t,
                    _ => return Err(self.path_err(&prefix, "exists and is not a directory")),
                }
                continue;
            }
            self.check_space(&prefix, Need::Dir, 0, false)?;
            let c = self.cstr(&prefix, name)?;
            let mut ino = 0;
            self.set_now(attrs.mtime);
            // SAFETY: live fs, NUL-terminated name, valid out-pointer.
            let code = unsafe { ffi::pi_mkdir(self.fs, dir, c.as_ptr(), &mut ino) };
            if code != 0 {
                return Err(self.lib_err(&prefix, "creating the directory", code));
            }
            self.apply_attrs(&prefix, ino, attrs)?;
            dir = ino;
        }
        Ok(())
    }

    /// Creates or replaces the regular file `path` with `size` bytes read from `reader`, in
    /// chunks. The parent directory must exist. An existing file or symlink is replaced by a
    /// new inode (hard links to the old one keep the old content); a directory is refused.
    ///
    /// Space is checked first, and nothing changes when it is short. If `reader` fails or
    /// yields other than `size` bytes, the error is returned after the file was created, so
    /// callers work on a copy of the image.
    pub fn write_file(
        &mut self,
        path: &str,
        reader: &mut dyn Read,
        size: u64,
        attrs: &Attrs,
    ) -> Result<(), Ext4Error> {
        self.require_writable()?;
        self.check_time(path, attrs)?;
        let (dir, name) = self.parent(path)?;
        let existing = self.lookup(path, dir, name)?;
        let (freed, freed_inode) = self.replaced(path, existing)?;
        self.check_space(path, Need::File(size), freed, freed_inode)?;
        self.set_now(attrs.mtime);
        if let Some(old) = existing {
            self.unlink(path, dir, name, old)?;
        }
        let c = self.cstr(path, name)?;
        let mut ino = 0;
        // SAFETY: live fs, NUL-terminated name, valid out-pointer.
        let code = unsafe { ffi::pi_create(self.fs, dir, c.as_ptr(), &mut ino) };
        if code != 0 {
            return Err(self.lib_err(path, "creating the file", code));
        }
        self.fill(path, ino, reader, size)?;
        self.apply_attrs(path, ino, attrs)
    }

    /// Streams the content into the new, empty inode `ino`.
    fn fill(
        &self,
        path: &str,
        ino: u32,
        reader: &mut dyn Read,
        size: u64,
    ) -> Result<(), Ext4Error> {
        let mut file: ffi::File = std::ptr::null_mut();
        // SAFETY: live fs, valid out-pointer.
        let code = unsafe { ffi::pi_file_open(self.fs, ino, 1, &mut file) };
        if code != 0 {
            return Err(self.lib_err(path, "opening the new file", code));
        }
        let written = self.copy_into(path, file, reader, size);
        // SAFETY: file is live and not used after this.
        let code = unsafe { ffi::pi_file_close(file) };
        written?;
        if code != 0 {
            return Err(self.lib_err(path, "writing the file", code));
        }
        Ok(())
    }

    fn copy_into(
        &self,
        path: &str,
        file: ffi::File,
        reader: &mut dyn Read,
        size: u64,
    ) -> Result<(), Ext4Error> {
        let source_err = |source| Ext4Error::Source {
            image: self.image.clone(),
            path: path.to_owned(),
            source,
        };
        let mut buf = vec![0u8; usize::try_from(size).unwrap_or(CHUNK).clamp(1, CHUNK)];
        let mut done = 0u64;
        loop {
            // Reading one byte past `size` is how a source longer than announced is caught.
            let want = usize::try_from((size - done).min(buf.len() as u64))
                .unwrap_or(buf.len())
                .max(1);
            let n = match reader.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(source_err(e)),
            };
            if n == 0 {
                break;
            }
            if done + n as u64 > size {
                return Err(source_err(std::io::Error::other(format!(
                    "longer than the expected {size} bytes"
                ))));
            }
            // SAFETY: file is live; buf holds n initialised bytes.
            let code = unsafe { ffi::pi_file_write(file, buf.as_ptr().cast::<c_void>(), n) };
            if code != 0 {
                return Err(self.lib_err(path, "writing the file", code));
            }
            done += n as u64;
        }
        if done != size {
            return Err(source_err(std::io::Error::other(format!(
                "got {done} bytes, expected {size}"
            ))));
        }
        Ok(())
    }

    /// Creates or replaces `path` with a symlink to `target` (stored as given; absolute targets
    /// resolve inside this filesystem when the system runs). A directory is refused.
    pub fn symlink(&mut self, path: &str, target: &str, attrs: &Attrs) -> Result<(), Ext4Error> {
        self.require_writable()?;
        self.check_time(path, attrs)?;
        if target.is_empty() || target.len() as u64 >= self.block_size {
            return Err(self.path_err(
                path,
                format!(
                    "symlink target must be 1 to {} bytes long",
                    self.block_size - 1
                ),
            ));
        }
        let c_target = self.cstr(path, target)?;
        let (dir, name) = self.parent(path)?;
        let existing = self.lookup(path, dir, name)?;
        let (freed, freed_inode) = self.replaced(path, existing)?;
        self.check_space(path, Need::Symlink(target.len()), freed, freed_inode)?;
        self.set_now(attrs.mtime);
        if let Some(old) = existing {
            self.unlink(path, dir, name, old)?;
        }
        let c = self.cstr(path, name)?;
        let mut ino = 0;
        // SAFETY: live fs, NUL-terminated strings, valid out-pointer.
        let code =
            unsafe { ffi::pi_symlink(self.fs, dir, c.as_ptr(), c_target.as_ptr(), &mut ino) };
        if code != 0 {
            return Err(self.lib_err(path, "creating the symlink", code));
        }
        self.apply_attrs(path, ino, attrs)
    }

    /// Sets mode, owner and times of `path` itself (a final symlink is not followed).
    pub fn set_attrs(&mut self, path: &str, attrs: &Attrs) -> Result<(), Ext4Error> {
        self.require_writable()?;
        self.check_time(path, attrs)?;
        let Some(ino) = self.resolve(path, false)? else {
            return Err(self.path_err(path, "does not exist"));
        };
        self.set_now(attrs.mtime);
        self.apply_attrs(path, ino, attrs)
    }

    /// Removes the regular file or symlink `path`, freeing its blocks and inode when this was
    /// its last link. Directories are refused.
    pub fn remove(&mut self, path: &str) -> Result<(), Ext4Error> {
        self.require_writable()?;
        let (dir, name) = self.parent(path)?;
        let Some(ino) = self.lookup(path, dir, name)? else {
            return Err(self.path_err(path, "does not exist"));
        };
        self.replaced(path, Some(ino))?;
        self.unlink(path, dir, name, ino)
    }

    /// Whether `path` exists (a dangling symlink counts).
    pub fn exists(&self, path: &str) -> Result<bool, Ext4Error> {
        Ok(self.resolve(path, false)?.is_some())
    }

    /// The content of the regular file at `path` (symlinks followed, relative or absolute), or
    /// `None` when there is nothing there. Meant for small files: refuses more than 16 MiB.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, Ext4Error> {
        let Some(ino) = self.resolve(path, true)? else {
            return Ok(None);
        };
        let st = self.stat(path, ino)?;
        if kind_of(st.mode) != EntryKind::File {
            return Err(self.path_err(path, "is not a regular file"));
        }
        if st.size > MAX_READ {
            return Err(self.path_err(
                path,
                format!("is {} bytes, more than the {MAX_READ} this reads", st.size),
            ));
        }
        let mut file: ffi::File = std::ptr::null_mut();
        // SAFETY: live fs, valid out-pointer; opened for reading only.
        let code = unsafe { ffi::pi_file_open(self.fs, ino, 0, &mut file) };
        if code != 0 {
            return Err(self.lib_err(path, "opening", code));
        }
        let mut data = vec![0u8; st.size as usize];
        let mut filled = 0;
        let mut result = Ok(());
        while filled < data.len() {
            let mut got = 0;
            // SAFETY: file is live; the slice is valid for its length.
            let code = unsafe {
                ffi::pi_file_read(
                    file,
                    data[filled..].as_mut_ptr().cast::<c_void>(),
                    data.len() - filled,
                    &mut got,
                )
            };
            if code != 0 {
                result = Err(self.lib_err(path, "reading", code));
                break;
            }
            if got == 0 {
                result = Err(self.path_err(path, "ended before its recorded size"));
                break;
            }
            filled += got;
        }
        // SAFETY: file is live and not used after this; a read-only file writes nothing back.
        unsafe { ffi::pi_file_close(file) };
        result.map(|()| Some(data))
    }

    /// The entries of the directory at `path` (symlinks followed), sorted by name, without
    /// `.` and `..`.
    pub fn list_dir(&self, path: &str) -> Result<Vec<Ext4Entry>, Ext4Error> {
        let Some(ino) = self.resolve(path, true)? else {
            return Err(self.path_err(path, "does not exist"));
        };
        if kind_of(self.stat(path, ino)?.mode) != EntryKind::Dir {
            return Err(self.path_err(path, "is not a directory"));
        }
        let mut entries: Vec<Ext4Entry> = Vec::new();
        // SAFETY: live fs; the callback only runs during this call and `entries` outlives it.
        let code = unsafe {
            ffi::pi_list_dir(
                self.fs,
                ino,
                push_entry,
                (&mut entries as *mut Vec<Ext4Entry>).cast(),
            )
        };
        if code != 0 {
            return Err(self.lib_err(path, "listing", code));
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }
}

/// The `pi_list_dir` callback: appends one entry to the `Vec<Ext4Entry>` behind `ctx`.
///
/// # Safety
/// `ctx` must point to a live `Vec<Ext4Entry>` not otherwise borrowed, and `name` to `len`
/// readable bytes.
unsafe extern "C" fn push_entry(ctx: *mut c_void, name: *const c_char, len: usize, ftype: c_int) {
    // SAFETY: guaranteed by the caller (list_dir passes its own Vec; shim passes the dirent).
    let (entries, bytes) = unsafe {
        (
            &mut *ctx.cast::<Vec<Ext4Entry>>(),
            std::slice::from_raw_parts(name.cast::<u8>(), len),
        )
    };
    let kind = match ftype {
        FT_REG_FILE => EntryKind::File,
        FT_DIR => EntryKind::Dir,
        FT_SYMLINK => EntryKind::Symlink,
        _ => EntryKind::Other,
    };
    entries.push(Ext4Entry {
        name: String::from_utf8_lossy(bytes).into_owned(),
        kind,
    });
}

/// The `pi_used_block_runs` callback: appends one (first block, count) run.
///
/// # Safety
/// `ctx` must point to a live `Vec<(u64, u64)>` not otherwise borrowed.
unsafe extern "C" fn push_run(ctx: *mut c_void, first: u64, count: u64) {
    // SAFETY: guaranteed by the caller (used_byte_ranges passes its own Vec).
    let runs = unsafe { &mut *ctx.cast::<Vec<(u64, u64)>>() };
    runs.push((first, count));
}

fn list_features(bits: u64, names: &[(u64, &str)], class: &str, out: &mut Vec<String>) {
    for bit in (0..64).map(|i| 1u64 << i).filter(|b| bits & b != 0) {
        match names.iter().find(|(b, _)| *b == bit) {
            Some((_, name)) => out.push((*name).to_owned()),
            None => out.push(format!("{class} bit {bit:#x}")),
        }
    }
}

impl Drop for Ext4Fs {
    /// Writes out and closes if [`Ext4Fs::close`] was not called, so the image is never left
    /// with allocation bitmaps that disagree with what was written. Errors cannot be reported
    /// here.
    fn drop(&mut self) {
        if !self.fs.is_null() {
            // SAFETY: fs is live and is not used again.
            unsafe { ffi::pi_close(self.fs) };
            self.fs = std::ptr::null_mut();
        }
    }
}

/// Reads the release of the installed system from `/etc/os-release` (following its symlink,
/// on Ubuntu `../usr/lib/os-release`), falling back to `/usr/lib/os-release`.
pub fn os_release(fs: &Ext4Fs) -> Result<OsRelease, Ext4Error> {
    let problem = |p: &str| Ext4Error::OsRelease {
        image: fs.image.clone(),
        problem: p.to_owned(),
    };
    let text = match fs.read_file("/etc/os-release")? {
        Some(t) => t,
        None => fs
            .read_file("/usr/lib/os-release")?
            .ok_or_else(|| problem("not found (nor /usr/lib/os-release)"))?,
    };
    let text = String::from_utf8(text).map_err(|_| problem("is not UTF-8 text"))?;
    OsRelease::parse(&text).ok_or_else(|| problem("has no VERSION_ID"))
}

/// The kernel versions installed: the directory names under `/lib/modules` (or
/// `/usr/lib/modules`), sorted. Empty when neither exists.
pub fn kernel_versions(fs: &Ext4Fs) -> Result<Vec<String>, Ext4Error> {
    for dir in ["/lib/modules", "/usr/lib/modules"] {
        if fs.resolve(dir, true)?.is_some() {
            let entries = fs.list_dir(dir)?;
            return Ok(entries
                .into_iter()
                .filter(|e| e.kind == EntryKind::Dir)
                .map(|e| e.name)
                .collect());
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_paths_are_split_and_checked() {
        assert_eq!(components("/").unwrap(), Vec::<&str>::new());
        assert_eq!(components("//etc//ssh/").unwrap(), vec!["etc", "ssh"]);
        assert!(components("etc").is_err());
        assert!(components("/etc/../x").is_err());
        assert!(components("/./x").is_err());
        assert!(components(&format!("/{}", "a".repeat(256))).is_err());
        assert!(components(&format!("/{}", "a".repeat(255))).is_ok());
    }

    #[test]
    fn ext4_space_estimate_is_an_upper_bound() {
        assert_eq!(bytes_needed(Need::File(0), 4096), 2 * 4096);
        assert_eq!(bytes_needed(Need::File(1), 4096), 3 * 4096);
        assert_eq!(bytes_needed(Need::Symlink(10), 4096), 2 * 4096);
        assert_eq!(bytes_needed(Need::Symlink(100), 4096), 3 * 4096);
        // 20 MiB = 5120 blocks: 16 extent leaves worst case, one index block.
        assert_eq!(
            bytes_needed(Need::File(20 << 20), 4096),
            (5120 + 16 + 1 + 2) * 4096
        );
    }
}
