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
//!
//! [`used_ranges`] reads which clusters a FAT uses straight from the on-disk tables, for block
//! maps (`crate::image::blockmap`).

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use fatfs::{Date, DateTime, Dir, DirEntry, FileSystem, FsOptions, Time, TimeProvider};

use crate::io::calendar::UtcDateTime;
use crate::io::read_full;

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
        self.walk(path, comps, true)
    }

    /// The existing directory `comps` (a prefix of `path`).
    fn open_dir(&self, path: &str, comps: &[&str]) -> Result<Dir<'_, F>> {
        self.walk(path, comps, false)
    }

    /// Walk down `comps` from the root, creating missing directories when `create`.
    fn walk(&self, path: &str, comps: &[&str], create: bool) -> Result<Dir<'_, F>> {
        let mut dir = self.fs.root_dir();
        for (i, comp) in comps.iter().enumerate() {
            dir = match self.lookup(path, &dir, comp)? {
                Some(e) if e.is_dir() => e.to_dir(),
                Some(_) => {
                    return Err(BootFsError::BadPath {
                        path: path.into(),
                        reason: "a file stands where a directory is needed",
                    });
                }
                None if create => dir
                    .create_dir(comp)
                    .map_err(|e| io_err("creating directory", &comps[..=i].join("/"), e))?,
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

/// The clusters a FAT12/16/32 filesystem at byte `start` of `file` (at most `len` bytes) uses, as
/// absolute byte ranges (reserved sectors, FATs and the FAT12/16 root directory included), and
/// the filesystem's length. `None` when the boot sector does not describe a consistent FAT
/// filesystem. Read straight from the boot sector and the first FAT, not through fatfs: this
/// is for block maps of whole images, where the partition is only a byte range of the file.
pub fn used_ranges<R: Read + Seek>(
    file: &mut R,
    start: u64,
    len: u64,
) -> io::Result<Option<(Vec<Range<u64>>, u64)>> {
    let mut bs = [0u8; 512];
    file.seek(SeekFrom::Start(start))?;
    if read_full(file, &mut bs)? < bs.len() {
        return Ok(None);
    }
    let u16_at = |o: usize| u64::from(u16::from_le_bytes([bs[o], bs[o + 1]]));
    let u32_at = |o: usize| u64::from(u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]));
    let bps = u16_at(11);
    let spc = u64::from(bs[13]);
    let reserved = u16_at(14);
    let fats = u64::from(bs[16]);
    let root_entries = u16_at(17);
    let total = if u16_at(19) != 0 {
        u16_at(19)
    } else {
        u32_at(32)
    };
    let fat_sectors = if u16_at(22) != 0 {
        u16_at(22)
    } else {
        u32_at(36)
    };
    if !matches!(bps, 512 | 1024 | 2048 | 4096)
        || !spc.is_power_of_two()
        || reserved == 0
        || fats == 0
        || fat_sectors == 0
    {
        return Ok(None);
    }
    let root_sectors = (root_entries * 32).div_ceil(bps);
    let first_data = reserved + fats * fat_sectors + root_sectors;
    if total <= first_data || total * bps > len {
        return Ok(None);
    }
    let clusters = (total - first_data) / spc;
    let entry_bits: u64 = if clusters < 4085 {
        12
    } else if clusters < 65525 {
        16
    } else {
        32
    };
    if (clusters + 2) * entry_bits > fat_sectors * bps * 8 {
        return Ok(None);
    }
    let cluster_bytes = spc * bps;
    let data_start = start + first_data * bps;
    // The reserved sectors, FATs and root directory, then each run of allocated clusters.
    let mut used: Vec<Range<u64>> = std::iter::once(start..data_start).collect();
    // Stream the first FAT, entry by entry, turning runs of non-free clusters into ranges.
    let fat_bytes = ((clusters + 2) * entry_bits).div_ceil(8);
    file.seek(SeekFrom::Start(start + reserved * bps))?;
    let mut reader = io::BufReader::with_capacity(1 << 20, file.take(fat_bytes));
    let mut run: Option<u64> = None;
    let mut pair = [0u8; 3];
    let mut entry = [0u8; 4];
    let mut cluster = 0u64;
    while cluster < clusters + 2 {
        // FAT12 packs two entries in three bytes.
        let values: [Option<u64>; 2] = match entry_bits {
            12 => {
                let n = if cluster + 1 < clusters + 2 { 3 } else { 2 };
                reader.read_exact(&mut pair[..n])?;
                let a = u64::from(pair[0]) | (u64::from(pair[1] & 0x0f) << 8);
                let b = (u64::from(pair[1]) >> 4) | (u64::from(pair[2]) << 4);
                [Some(a), (n == 3).then_some(b)]
            }
            16 => {
                reader.read_exact(&mut entry[..2])?;
                [
                    Some(u64::from(u16::from_le_bytes([entry[0], entry[1]]))),
                    None,
                ]
            }
            _ => {
                reader.read_exact(&mut entry)?;
                [
                    Some(u64::from(u32::from_le_bytes(entry) & 0x0fff_ffff)),
                    None,
                ]
            }
        };
        for v in values.into_iter().flatten() {
            if cluster >= 2 {
                let at = data_start + (cluster - 2) * cluster_bytes;
                match (v != 0, run) {
                    (true, None) => run = Some(at),
                    (false, Some(s)) => {
                        used.push(s..at);
                        run = None;
                    }
                    _ => {}
                }
            }
            cluster += 1;
        }
    }
    if let Some(s) = run {
        used.push(s..data_start + clusters * cluster_bytes);
    }
    Ok(Some((used, total * bps)))
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
    fn used_ranges_are_the_metadata_and_the_allocated_clusters() {
        // A small (FAT12) volume holding one file, at byte 4096 of an image.
        let mut vol = io::Cursor::new(vec![0u8; 4 << 20]);
        fatfs::format_volume(&mut vol, fatfs::FormatVolumeOptions::new()).unwrap();
        let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 + 1).collect();
        let fs = BootFs::open(&mut vol, FatTimestamp::from_unix(0)).unwrap();
        fs.write_bytes("a.bin", &content).unwrap();
        fs.unmount().unwrap();
        let mut image = vec![0u8; 4096];
        image.extend(vol.into_inner());
        let len = image.len() as u64 - 4096;
        let (used, fs_len) = used_ranges(&mut io::Cursor::new(&image[..]), 4096, len)
            .unwrap()
            .unwrap();
        assert_eq!(fs_len, len);
        assert_eq!(used[0].start, 4096);
        let at = image.windows(64).position(|w| w == &content[..64]).unwrap() as u64;
        assert!(
            used.iter()
                .any(|r| r.start <= at && at + content.len() as u64 <= r.end),
            "{used:?}"
        );
        let total: u64 = used.iter().map(|r| r.end - r.start).sum();
        assert!(total < 256 << 10, "{used:?}");
        let zeros = vec![0u8; 8192];
        assert!(
            used_ranges(&mut io::Cursor::new(&zeros[..]), 0, 8192)
                .unwrap()
                .is_none()
        );
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
