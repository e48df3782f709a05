//! The FAT boot partition (`system-boot`): read, write and list files in place.
//!
//! [`BootFs`] wraps the vendored, patched `fatfs` crate (see `vendor/fatfs/PATCHES.md`) over any
//! `Read + Write + Seek` — in production a [`PartitionView`](crate::image::partview::PartitionView) of
//! the boot partition. Output is deterministic: every entry created or modified gets the one
//! [`FatTimestamp`] given to [`BootFs::open`], never the clock.
//!
//! Paths are relative to the partition root, `/`-separated (`"config.txt"`,
//! `"overlays/foo.dtbo"`); a leading `/` is ignored. As on any FAT filesystem, names are matched
//! case-insensitively: writing `CONFIG.TXT` replaces `config.txt` and keeps its original name.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Mutex, PoisonError};

use fatfs::{Date, DateTime, Dir, DirEntry, FileSystem, FsOptions, Time, TimeProvider};

use crate::io::calendar::UtcDateTime;

/// Errors from the boot partition. Each names the path inside the partition it is about.
#[derive(Debug, thiserror::Error)]
pub enum BootFsError {
    /// The partition does not hold a FAT filesystem fatfs can mount.
    #[error("boot partition is not a FAT filesystem: {reason}")]
    NotFat {
        /// What is wrong with its boot sector.
        reason: String,
    },
    /// A path that cannot name anything inside the partition.
    #[error("boot partition: invalid path {path:?}: {reason}")]
    BadPath {
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The path does not exist.
    #[error("boot partition: {path}: no such file or directory")]
    NotFound {
        /// The path inside the partition.
        path: String,
    },
    /// A file was expected but the path is a directory.
    #[error("boot partition: {path} is a directory, not a file")]
    IsDir {
        /// The path inside the partition.
        path: String,
    },
    /// Not enough free space for a file of known size; nothing was written.
    #[error("boot partition full writing {path}: need {need} bytes, {free} free")]
    Full {
        /// The file being written.
        path: String,
        /// Bytes the content needs, rounded up to whole clusters.
        need: u64,
        /// Bytes available, counting the clusters of the file being replaced.
        free: u64,
    },
    /// The partition filled up while streaming content of unknown size; the file is incomplete.
    #[error("boot partition full writing {path}: no space left after {written} bytes")]
    RanOutOfSpace {
        /// The file being written.
        path: String,
        /// Bytes written before space ran out.
        written: u64,
    },
    /// Reading the content to write failed (the caller's reader, not the partition).
    #[error("boot partition: reading the content for {path}: {source}")]
    Source {
        /// The file being written.
        path: String,
        /// The reader's error.
        source: io::Error,
    },
    /// Writing a file's content to the caller's writer failed.
    #[error("boot partition: copying {path} out: {source}")]
    Sink {
        /// The file being copied.
        path: String,
        /// The writer's error.
        source: io::Error,
    },
    /// An operation on the filesystem failed.
    #[error("boot partition: {op} {path}: {source}")]
    Io {
        /// What was being done, e.g. "writing".
        op: &'static str,
        /// The path inside the partition ("/" for the filesystem as a whole).
        path: String,
        /// The underlying error (from fatfs or the storage).
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, BootFsError>;

/// A FAT date and time (2-second resolution, years 1980..=2107, no time zone: UTC here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FatTimestamp {
    year: u16,
    month: u16,
    day: u16,
    hour: u16,
    min: u16,
    sec: u16,
}

impl FatTimestamp {
    /// The UTC date and time of `secs` seconds since the Unix epoch (e.g. `SOURCE_DATE_EPOCH`),
    /// clamped to what FAT can store: 1980-01-01 00:00:00 to 2107-12-31 23:59:59.
    pub fn from_unix(secs: i64) -> Self {
        const MIN: i64 = 315_532_800; // 1980-01-01T00:00:00Z
        const MAX: i64 = 4_354_819_199; // 2107-12-31T23:59:59Z
        let t = UtcDateTime::from_unix(secs.clamp(MIN, MAX));
        // The clamp keeps the year within u16.
        FatTimestamp {
            year: t.year as u16,
            month: t.month.into(),
            day: t.day.into(),
            hour: t.hour.into(),
            min: t.min.into(),
            sec: t.sec.into(),
        }
    }

    fn date(self) -> Date {
        Date {
            year: self.year,
            month: self.month,
            day: self.day,
        }
    }

    fn date_time(self) -> DateTime {
        DateTime {
            date: self.date(),
            time: Time {
                hour: self.hour,
                min: self.min,
                sec: self.sec,
                millis: 0,
            },
        }
    }
}

impl fmt::Display for FatTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.min, self.sec
        )
    }
}

/// Hands fatfs the fixed timestamp instead of the clock.
#[derive(Debug)]
struct FixedTime(FatTimestamp);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date()
    }

    fn get_current_date_time(&self) -> DateTime {
        self.0.date_time()
    }
}

/// The provider for `ts`. fatfs only takes `&'static` providers, so one is leaked per distinct
/// timestamp (a build uses one) and reused after that.
fn time_provider(ts: FatTimestamp) -> &'static FixedTime {
    static PROVIDERS: Mutex<Vec<&'static FixedTime>> = Mutex::new(Vec::new());
    let mut providers = PROVIDERS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = providers.iter().find(|p| p.0 == ts) {
        return p;
    }
    let p: &'static FixedTime = Box::leak(Box::new(FixedTime(ts)));
    providers.push(p);
    p
}

/// One entry of [`BootFs::list_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// The long name (or the short name when there is no long one).
    pub name: String,
    /// True for a directory.
    pub is_dir: bool,
    /// Size in bytes (0 for directories).
    pub size: u64,
}

/// A mounted FAT boot partition. Call [`BootFs::unmount`] when done so errors writing the
/// FSInfo sector and clean flag are reported (dropping it unmounts too, silently).
pub struct BootFs<F: Read + Write + Seek> {
    fs: FileSystem<F>,
    timestamp: FatTimestamp,
}

impl<F: Read + Write + Seek> fmt::Debug for BootFs<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootFs")
            .field("fat_type", &self.fs.fat_type())
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

impl<F: Read + Write + Seek> BootFs<F> {
    /// Mounts the FAT filesystem held by `storage` (position 0 = its boot sector). Everything
    /// created or modified through it is stamped with `timestamp`.
    pub fn open(mut storage: F, timestamp: FatTimestamp) -> Result<Self> {
        check_boot_sector(&mut storage)?;
        let options = FsOptions::new().time_provider(time_provider(timestamp));
        let fs = FileSystem::new(storage, options).map_err(|e| BootFsError::NotFat {
            reason: e.to_string(),
        })?;
        Ok(BootFs { fs, timestamp })
    }

    /// The whole content of the file at `path`, or `None` if there is no such file (or its
    /// directory is missing). Meant for small files; see [`BootFs::copy_file_to`] for large ones.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let mut content = Vec::new();
        match self.copy_file_to(path, &mut content) {
            Ok(_) => Ok(Some(content)),
            Err(BootFsError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Streams the file at `path` into `out`; returns the number of bytes copied.
    pub fn copy_file_to(&self, path: &str, out: &mut dyn Write) -> Result<u64> {
        let (parent, name) = split_file_path(path)?;
        let entry = self.require(path, &parent, name)?;
        if entry.is_dir() {
            return Err(BootFsError::IsDir { path: path.into() });
        }
        let mut file = entry.to_file();
        let mut buf = vec![0u8; 64 << 10];
        let mut copied = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => return Ok(copied),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("reading", path, e)),
            };
            out.write_all(&buf[..n])
                .map_err(|source| BootFsError::Sink {
                    path: path.into(),
                    source,
                })?;
            copied += n as u64;
        }
    }

    /// Creates or replaces the file at `path` with `data`, after checking that it fits.
    pub fn write_bytes(&self, path: &str, data: &[u8]) -> Result<()> {
        let (parent, name) = split_file_path(path)?;
        let dir = self.dir_all(path, &parent)?;
        let existing = self.lookup(path, &dir, name)?;
        let cluster = u64::from(self.fs.cluster_size());
        let held = existing
            .as_ref()
            .map_or(0, |e| e.len().div_ceil(cluster) * cluster);
        let need = (data.len() as u64).div_ceil(cluster) * cluster;
        let free = self.free_bytes()? + held;
        if need > free {
            return Err(BootFsError::Full {
                path: path.into(),
                need,
                free,
            });
        }
        self.write_into(path, &dir, name, existing, &mut &data[..])
            .map(|_| ())
    }

    /// Creates or replaces the file at `path` with everything `data` yields, creating missing
    /// parent directories; returns the number of bytes written. The size is not known in advance,
    /// so running out of space is reported only when it happens, leaving the file incomplete:
    /// use [`BootFs::write_bytes`] to check first.
    pub fn write_file(&self, path: &str, data: &mut dyn Read) -> Result<u64> {
        let (parent, name) = split_file_path(path)?;
        let dir = self.dir_all(path, &parent)?;
        let existing = self.lookup(path, &dir, name)?;
        self.write_into(path, &dir, name, existing, data)
    }

    /// Creates the directory at `path` and any missing parents; existing ones are kept.
    pub fn create_dir_all(&self, path: &str) -> Result<()> {
        let comps = components(path)?;
        self.dir_all(path, &comps).map(|_| ())
    }

    /// Removes the file or empty directory at `path`.
    pub fn remove(&self, path: &str) -> Result<()> {
        let (parent, name) = split_file_path(path)?;
        let dir = self.open_dir(path, &parent)?;
        let entry = self.require(path, &parent, name)?;
        // Remove by the entry's own name: fatfs matches it exactly as we did.
        dir.remove(&entry.file_name())
            .map_err(|e| io_err("removing", path, e))
    }

    /// True if a file or directory exists at `path` (the root always exists). Invalid paths and
    /// unreadable directories count as absent.
    pub fn exists(&self, path: &str) -> bool {
        match split_file_path(path) {
            Ok((parent, name)) => matches!(self.find(path, &parent, name), Ok(Some(_))),
            Err(_) => matches!(components(path), Ok(c) if c.is_empty()),
        }
    }

    /// The entries of the directory at `path` (`""` for the root), without `.` and `..`, in
    /// on-disk order.
    pub fn list_dir(&self, path: &str) -> Result<Vec<BootEntry>> {
        let comps = components(path)?;
        let dir = self.open_dir(path, &comps)?;
        let mut entries = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io_err("listing", path, e))?;
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            entries.push(BootEntry {
                name,
                is_dir: entry.is_dir(),
                size: if entry.is_dir() { 0 } else { entry.len() },
            });
        }
        Ok(entries)
    }

    /// The volume label, trimmed: the root directory's label entry (what blkid and
    /// `LABEL=system-boot` see), or the boot sector's if there is none.
    pub fn volume_label(&self) -> Result<String> {
        let label = self
            .fs
            .read_volume_label_from_root_dir()
            .map_err(|e| io_err("reading the volume label of", "/", e))?
            .unwrap_or_else(|| self.fs.volume_label());
        Ok(label.trim().to_string())
    }

    /// Free space in bytes (from the FSInfo sector on FAT32, as fatfs keeps it).
    pub fn free_bytes(&self) -> Result<u64> {
        let stats = self
            .fs
            .stats()
            .map_err(|e| io_err("counting free space on", "/", e))?;
        Ok(u64::from(stats.free_clusters()) * u64::from(stats.cluster_size()))
    }

    /// Writes the FSInfo sector and clears the dirty flag.
    pub fn unmount(self) -> Result<()> {
        self.fs.unmount().map_err(|e| io_err("unmounting", "/", e))
    }

    /// Truncates (or creates) `name` in `dir` and streams `data` into it.
    fn write_into(
        &self,
        path: &str,
        dir: &Dir<'_, F>,
        name: &str,
        existing: Option<DirEntry<'_, F>>,
        data: &mut dyn Read,
    ) -> Result<u64> {
        let mut file = match existing {
            Some(e) if e.is_dir() => return Err(BootFsError::IsDir { path: path.into() }),
            Some(e) => e.to_file(),
            None => dir
                .create_file(name)
                .map_err(|e| io_err("creating", path, e))?,
        };
        file.truncate().map_err(|e| io_err("truncating", path, e))?;
        // Truncating alone keeps the old modification time (and an empty write sets none).
        #[allow(deprecated)]
        file.set_modified(self.timestamp.date_time());
        let mut buf = vec![0u8; 64 << 10];
        let mut written = 0u64;
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(BootFsError::Source {
                        path: path.into(),
                        source,
                    });
                }
            };
            if let Err(e) = file.write_all(&buf[..n]) {
                // fatfs reports a full volume as a plain "other" error; the free count tells.
                return Err(if matches!(self.free_bytes(), Ok(0)) {
                    BootFsError::RanOutOfSpace {
                        path: path.into(),
                        written,
                    }
                } else {
                    io_err("writing", path, e)
                });
            }
            written += n as u64;
        }
        file.flush().map_err(|e| io_err("writing", path, e))?;
        Ok(written)
    }

    /// The directory `comps` (a prefix of `path`), created with its parents if missing.
    fn dir_all(&self, path: &str, comps: &[&str]) -> Result<Dir<'_, F>> {
        let mut dir = self.fs.root_dir();
        for (i, comp) in comps.iter().enumerate() {
            let here = comps[..=i].join("/");
            dir = match self.lookup(path, &dir, comp)? {
                Some(e) if e.is_dir() => e.to_dir(),
                Some(_) => {
                    return Err(BootFsError::BadPath {
                        path: path.into(),
                        reason: "a file stands where a directory is needed",
                    });
                }
                None => dir
                    .create_dir(comp)
                    .map_err(|e| io_err("creating directory", &here, e))?,
            };
        }
        Ok(dir)
    }

    /// The existing directory `comps` (a prefix of `path`).
    fn open_dir(&self, path: &str, comps: &[&str]) -> Result<Dir<'_, F>> {
        let mut dir = self.fs.root_dir();
        for comp in comps {
            dir = match self.lookup(path, &dir, comp)? {
                Some(e) if e.is_dir() => e.to_dir(),
                Some(_) => {
                    return Err(BootFsError::BadPath {
                        path: path.into(),
                        reason: "a file stands where a directory is needed",
                    });
                }
                None => return Err(BootFsError::NotFound { path: path.into() }),
            };
        }
        Ok(dir)
    }

    /// The entry `name` in directory `parent`, or `None` if it or its directory is missing.
    fn find(&self, path: &str, parent: &[&str], name: &str) -> Result<Option<DirEntry<'_, F>>> {
        match self.open_dir(path, parent) {
            Ok(dir) => self.lookup(path, &dir, name),
            Err(BootFsError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Like [`Self::find`] but a missing entry is an error.
    fn require(&self, path: &str, parent: &[&str], name: &str) -> Result<DirEntry<'_, F>> {
        self.find(path, parent, name)?
            .ok_or_else(|| BootFsError::NotFound { path: path.into() })
    }

    /// The entry `name` in `dir`, matched case-insensitively on its long or short name as fatfs
    /// itself does.
    fn lookup<'a>(
        &self,
        path: &str,
        dir: &Dir<'a, F>,
        name: &str,
    ) -> Result<Option<DirEntry<'a, F>>> {
        let upper: String = name.chars().flat_map(char::to_uppercase).collect();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io_err("looking up", path, e))?;
            let long: String = entry
                .file_name()
                .chars()
                .flat_map(char::to_uppercase)
                .collect();
            if long == upper || entry.short_file_name().eq_ignore_ascii_case(name) {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }
}

fn io_err(op: &'static str, path: &str, source: io::Error) -> BootFsError {
    BootFsError::Io {
        op,
        path: path.into(),
        source,
    }
}

/// The components of `path`; empty for the root.
fn components(path: &str) -> Result<Vec<&str>> {
    let bad = |reason| BootFsError::BadPath {
        path: path.into(),
        reason,
    };
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    if path.contains('\\') {
        return Err(bad("use '/' to separate directories"));
    }
    trimmed
        .split('/')
        .map(|c| match c {
            "" => Err(bad("empty component")),
            "." | ".." => Err(bad("'.' and '..' are not allowed")),
            c => Ok(c),
        })
        .collect()
}

/// The parent components and last name of a path that must name a file or directory.
fn split_file_path(path: &str) -> Result<(Vec<&str>, &str)> {
    let mut comps = components(path)?;
    match comps.pop() {
        Some(name) => Ok((comps, name)),
        None => Err(BootFsError::BadPath {
            path: path.into(),
            reason: "names the root directory",
        }),
    }
}

/// Refuses storage that plainly does not start with a FAT boot sector, with a clearer message
/// than fatfs would give, and leaves it at position 0 as fatfs requires.
fn check_boot_sector<F: Read + Seek>(storage: &mut F) -> Result<()> {
    let not_fat = |reason: String| BootFsError::NotFat { reason };
    let io = |e: io::Error| not_fat(format!("cannot read its boot sector: {e}"));
    storage.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut sector = [0u8; 512];
    storage.read_exact(&mut sector).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            not_fat("the partition is smaller than one sector".into())
        } else {
            io(e)
        }
    })?;
    storage.seek(SeekFrom::Start(0)).map_err(io)?;
    if sector.iter().all(|&b| b == 0) {
        return Err(not_fat(
            "its first sector is all zeros (unformatted?)".into(),
        ));
    }
    if sector[510..512] != [0x55, 0xaa] {
        return Err(not_fat("no boot sector signature 55 AA at byte 510".into()));
    }
    let bytes_per_sector = u16::from_le_bytes([sector[11], sector[12]]);
    if !(512..=4096).contains(&bytes_per_sector) || !bytes_per_sector.is_power_of_two() {
        return Err(not_fat(format!(
            "bytes per sector is {bytes_per_sector} (a DOS/MBR sector, not a FAT boot sector?)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_and_clamp() {
        assert_eq!(
            FatTimestamp::from_unix(1_662_033_600).to_string(),
            "2022-09-01 12:00:00"
        );
        assert_eq!(
            FatTimestamp::from_unix(951_782_400).to_string(),
            "2000-02-29 00:00:00"
        );
        assert_eq!(
            FatTimestamp::from_unix(0).to_string(),
            "1980-01-01 00:00:00"
        );
        assert_eq!(
            FatTimestamp::from_unix(-5).to_string(),
            "1980-01-01 00:00:00"
        );
        assert_eq!(
            FatTimestamp::from_unix(i64::MAX).to_string(),
            "2107-12-31 23:59:59"
        );
        assert_eq!(
            FatTimestamp::from_unix(4_354_819_199 + 1).to_string(),
            "2107-12-31 23:59:59"
        );
    }

    #[test]
    fn paths_are_checked() {
        assert_eq!(components("/").unwrap(), Vec::<&str>::new());
        assert_eq!(
            components("overlays/x.dtbo").unwrap(),
            ["overlays", "x.dtbo"]
        );
        assert_eq!(components("/overlays/").unwrap(), ["overlays"]);
        for bad in ["a//b", "../x", "a/./b", "a\\b"] {
            assert!(
                matches!(components(bad), Err(BootFsError::BadPath { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            split_file_path(""),
            Err(BootFsError::BadPath { .. })
        ));
    }

    #[test]
    fn non_fat_storage_is_refused_clearly() {
        let zeros = io::Cursor::new(vec![0u8; 4096]);
        let err = BootFs::open(zeros, FatTimestamp::from_unix(0)).unwrap_err();
        assert!(err.to_string().contains("not a FAT filesystem"), "{err}");
        let tiny = io::Cursor::new(vec![1u8; 100]);
        let err = BootFs::open(tiny, FatTimestamp::from_unix(0)).unwrap_err();
        assert!(err.to_string().contains("smaller than one sector"), "{err}");
    }
}
