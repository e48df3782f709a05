//! The image cache: verified, decompressed base images under `$XDG_CACHE_HOME/pi-image` (or
//! `--cache-dir`), keyed by the sha256 of the file that was downloaded.
//!
//! Layout of the cache directory:
//!
//! ```text
//! lock                     held (flock) by every pi-image run that reads or changes the cache
//! <sha256>.img             the raw image, sparse; only ever created by rename once verified
//! <sha256>.toml            its metadata (source URL, sizes, both sha256s, release, times)
//! partial/<sha256>.part    an interrupted download's compressed bytes, for an HTTP Range resume
//! ```
//!
//! An entry counts only when both its image and its metadata exist: the image is renamed into
//! place first, then the metadata, so a crash in between leaves an orphan that `list` ignores and
//! `clean` removes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::PendingOutput;
use crate::io::calendar::UtcDateTime;
use crate::io::{AtPath, PathError, sums, tempfiles};

/// Errors reading or changing the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// I/O on a file or directory of the cache failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// A metadata file is not what pi-image writes.
    #[error("{}: unreadable cache metadata: {reason} (remove it, or run `pi-image cache clean`)", path.display())]
    Metadata {
        /// The metadata file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// No cache directory was given and neither `XDG_CACHE_HOME` nor `HOME` is set.
    #[error("no cache directory: set XDG_CACHE_HOME or HOME, or pass --cache-dir")]
    NoDefaultDir,
    /// An image or partial download could not be moved into place.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
}

/// What is known about one cached image; stored as `<sha256>.toml` beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Where it was downloaded from.
    pub source_url: String,
    /// The release, when known (`Ubuntu 20.04.5`).
    pub release: Option<String>,
    /// Compression of the downloaded file: `xz`, `gzip`, `zstd` or `raw`.
    pub format: String,
    /// sha256 of the downloaded (compressed) file: the cache key, verified.
    pub compressed_sha256: String,
    /// Size of the downloaded file in bytes.
    pub compressed_size: u64,
    /// sha256 of the raw image as stored.
    pub raw_sha256: String,
    /// Size of the raw image in bytes.
    pub raw_size: u64,
    /// How the sha256 of the download was established; `None` for images cached by a
    /// pi-image that did not record it (treated as unverified).
    #[serde(default)]
    pub verification: Option<Verification>,
    /// What older versions wrote instead of `verification` (a URL or `pinned`); read so their
    /// entries still list, never trusted.
    #[serde(default, skip_serializing)]
    pub verified_by: Option<String>,
    /// When it was fetched (RFC 3339, UTC).
    pub fetched_at: String,
    /// When a build last used it (RFC 3339, UTC).
    pub last_used: String,
}

/// How a download's sha256 was established, strongest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Verification {
    /// Equal to the `base_sha256` pinned in the profile.
    PinnedSha256,
    /// Equal to its line in a `SHA256SUMS` whose OpenPGP signature by this key was checked.
    SignedSha256sums {
        /// The `SHA256SUMS` URL.
        sums_url: String,
        /// The primary key fingerprint of the trusted key, uppercase hex.
        key_fingerprint: String,
    },
    /// Equal to its line in a `SHA256SUMS` whose signature was NOT checked
    /// (`--insecure-skip-signature`): anyone on the network path could have chosen both.
    UnsignedSha256sums {
        /// The `SHA256SUMS` URL.
        sums_url: String,
    },
}

impl Verification {
    /// Whether this is a real verification (not an unsigned checksum file).
    pub fn is_verified(&self) -> bool {
        !matches!(self, Verification::UnsignedSha256sums { .. })
    }

    /// A few words for tables: `pinned`, `signed <last 16 hex digits of the key>`, `UNSIGNED`.
    pub fn short(v: Option<&Verification>) -> String {
        match v {
            Some(Verification::PinnedSha256) => "pinned".into(),
            Some(Verification::SignedSha256sums {
                key_fingerprint, ..
            }) => format!(
                "signed {}",
                &key_fingerprint[key_fingerprint.len().saturating_sub(16)..]
            ),
            Some(Verification::UnsignedSha256sums { .. }) => "UNSIGNED".into(),
            None => "unknown".into(),
        }
    }
}

/// One sentence on how an image was verified, saying "NOT verified" when it was not.
impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verification::PinnedSha256 => f.write_str("verified: sha256 pinned in the profile"),
            Verification::SignedSha256sums {
                sums_url,
                key_fingerprint,
            } => write!(f, "verified: {sums_url} signed by key {key_fingerprint}"),
            Verification::UnsignedSha256sums { sums_url } => write!(
                f,
                "NOT verified: sha256 from {sums_url}, whose signature was not checked (--insecure-skip-signature)"
            ),
        }
    }
}

/// One complete, verified cached image.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The raw image file.
    pub image: PathBuf,
    /// Its metadata.
    pub meta: Metadata,
}

/// What `clean` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Files removed.
    pub files: usize,
    /// Bytes of disk space they used (allocated blocks: images are sparse).
    pub bytes: u64,
}

impl Cleaned {
    /// Remove the file at `path` and count it.
    pub fn remove(&mut self, path: &Path) -> Result<(), PathError> {
        use std::os::unix::fs::MetadataExt;
        let used = fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0);
        fs::remove_file(path).at(path)?;
        self.files += 1;
        self.bytes += used;
        Ok(())
    }

    /// Remove the directory at `path` with everything in it, counting its files.
    pub fn remove_dir(&mut self, path: &Path) -> Result<(), PathError> {
        for entry in fs::read_dir(path).at(path)? {
            let entry = entry.at(path)?;
            let p = entry.path();
            if entry.file_type().at(&p)?.is_dir() {
                self.remove_dir(&p)?;
            } else {
                self.remove(&p)?;
            }
        }
        fs::remove_dir(path).at(path)
    }

    /// Remove every temp file or directory ([`tempfiles`]) in `dir`, whoever made it.
    pub fn remove_temps(&mut self, dir: &Path) -> Result<(), PathError> {
        for temp in tempfiles::temps_in(dir).at(dir)? {
            if temp.is_dir {
                self.remove_dir(&temp.path)?;
            } else {
                self.remove(&temp.path)?;
            }
        }
        Ok(())
    }
}

/// An open cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// The cache's lock, held until dropped. Every run that reads or changes the cache takes it, so
/// two runs never download into the same `.part` or rename over each other.
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl Cache {
    /// `$XDG_CACHE_HOME/pi-image`, else `$HOME/.cache/pi-image` (the XDG default).
    pub fn default_dir() -> Result<PathBuf, CacheError> {
        let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(x) = nonempty("XDG_CACHE_HOME") {
            return Ok(PathBuf::from(x).join("pi-image"));
        }
        match nonempty("HOME") {
            Some(h) => Ok(PathBuf::from(h).join(".cache").join("pi-image")),
            None => Err(CacheError::NoDefaultDir),
        }
    }

    /// Open the cache at `dir`, or at the default place ([`Cache::default_dir`]).
    pub fn open_or_default(dir: Option<&Path>) -> Result<Cache, CacheError> {
        match dir {
            Some(d) => Cache::open(d),
            None => Cache::open(&Cache::default_dir()?),
        }
    }

    /// Open (creating if needed) the cache at `dir`.
    pub fn open(dir: &Path) -> Result<Cache, CacheError> {
        fs::create_dir_all(dir.join("partial")).at(dir)?;
        Ok(Cache {
            dir: dir.to_owned(),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Take the cache lock, waiting (and saying so on stderr) while another run holds it. Then
    /// remove the temps that runs killed earlier left in the cache.
    pub fn lock(&self) -> Result<CacheLock, CacheError> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .at(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                eprintln!(
                    "pi-image: waiting for another pi-image run to release {}",
                    path.display()
                );
                file.lock().at(&path)?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(PathError::new(&path, e).into()),
        }
        for dir in [self.dir.clone(), self.dir.join("partial")] {
            tempfiles::sweep_stale(&dir).at(&dir)?;
        }
        Ok(CacheLock { _file: file })
    }

    /// Where the raw image keyed by `sha256` lives (whether or not it exists).
    pub fn image_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.img"))
    }

    fn meta_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.toml"))
    }

    /// Where an interrupted download of the file with this sha256 keeps its bytes.
    pub fn part_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("partial").join(format!("{sha256}.part"))
    }

    /// The complete entry keyed by `sha256`, if there is one.
    pub fn get(&self, sha256: &str) -> Result<Option<Entry>, CacheError> {
        let image = self.image_path(sha256);
        let meta = self.meta_path(sha256);
        if !image.is_file() || !meta.is_file() {
            return Ok(None);
        }
        Ok(Some(Entry {
            image,
            meta: read_meta(&meta)?,
        }))
    }

    /// The most recently fetched complete entry downloaded from `url`, if any.
    pub fn find_url(&self, url: &str) -> Result<Option<Entry>, CacheError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|e| e.meta.source_url == url)
            .max_by(|a, b| a.meta.fetched_at.cmp(&b.meta.fetched_at)))
    }

    /// Every complete entry, sorted by fetch time.
    pub fn list(&self) -> Result<Vec<Entry>, CacheError> {
        let mut out = Vec::new();
        for dirent in fs::read_dir(&self.dir).at(&self.dir)? {
            let dirent = dirent.at(&self.dir)?;
            let name = dirent.file_name();
            let Some(sha) = name.to_str().and_then(|n| n.strip_suffix(".toml")) else {
                continue;
            };
            if sums::is_sha256(sha)
                && let Some(e) = self.get(sha)?
            {
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.meta.fetched_at.cmp(&b.meta.fetched_at));
        Ok(out)
    }

    /// Move a verified image (written to a [`PendingOutput`] for [`Cache::image_path`]) into
    /// place and write its metadata.
    pub fn insert(&self, image: PendingOutput, meta: Metadata) -> Result<Entry, CacheError> {
        let path = image.commit()?;
        self.write_meta(&meta)?;
        Ok(Entry { image: path, meta })
    }

    /// Record a stronger verification of `entry` (its SHA256SUMS signature, checked now).
    pub fn reverified(
        &self,
        entry: &mut Entry,
        verification: Verification,
    ) -> Result<(), CacheError> {
        entry.meta.verification = Some(verification);
        self.write_meta(&entry.meta)
    }

    /// Record that a build used `entry` now.
    pub fn touch(&self, entry: &mut Entry) -> Result<(), CacheError> {
        entry.meta.last_used = now_rfc3339();
        self.write_meta(&entry.meta)
    }

    fn write_meta(&self, meta: &Metadata) -> Result<(), CacheError> {
        let path = self.meta_path(&meta.compressed_sha256);
        let text = toml::to_string(meta).map_err(|e| CacheError::Metadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut out = PendingOutput::create(&path)?;
        out.file().write_all(text.as_bytes()).at(out.temp_path())?;
        out.commit()?;
        Ok(())
    }

    /// Remove every image, metadata file, partial download and leftover temp file or directory
    /// (the caller holds the lock, so no other run is writing one).
    pub fn clean(&self) -> Result<Cleaned, CacheError> {
        let mut cleaned = Cleaned::default();
        for dir in [self.dir.clone(), self.dir.join("partial")] {
            cleaned.remove_temps(&dir)?;
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(PathError::new(&dir, e).into()),
            };
            for dirent in entries {
                let path = dirent.at(&dir)?.path();
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // Only what pi-image itself writes here: never the lock (another run may be
                // waiting on it) nor files someone else put in the directory.
                let ours =
                    name.ends_with(".img") || name.ends_with(".toml") || name.ends_with(".part");
                if ours && path.is_file() {
                    cleaned.remove(&path)?;
                }
                // `flash-<pid>`: node images of `flash --node` before temp directories were
                // named like temp files.
                let old_flash_dir = name
                    .strip_prefix("flash-")
                    .and_then(|pid| pid.parse::<u32>().ok());
                if old_flash_dir.is_some_and(|pid| !tempfiles::pid_alive(pid)) && path.is_dir() {
                    cleaned.remove_dir(&path)?;
                }
            }
        }
        Ok(cleaned)
    }
}

/// `cache list` output: one line per image with release, raw size, sha256 (the cache key),
/// how it was verified, last use and source URL.
pub fn list_table(entries: &[Entry]) -> String {
    let mut out = format!(
        "{:<16} {:>9}  {:<64}  {:<23}  {:<20}  {}\n",
        "release", "raw MiB", "sha256", "verification", "last used", "source"
    );
    for e in entries {
        let m = &e.meta;
        out.push_str(&format!(
            "{:<16} {:>9}  {:<64}  {:<23}  {:<20}  {}\n",
            m.release.as_deref().unwrap_or("-"),
            m.raw_size >> 20,
            m.compressed_sha256,
            Verification::short(m.verification.as_ref()),
            m.last_used,
            m.source_url
        ));
    }
    out
}

fn read_meta(path: &Path) -> Result<Metadata, CacheError> {
    let text = fs::read_to_string(path).at(path)?;
    toml::from_str(&text).map_err(|e| CacheError::Metadata {
        path: path.to_owned(),
        reason: e.message().trim().to_string(),
    })
}

/// The current time as RFC 3339 in UTC, to the second.
pub fn now_rfc3339() -> String {
    UtcDateTime::now().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(sha: &str, url: &str, at: &str) -> Metadata {
        Metadata {
            source_url: url.into(),
            release: None,
            format: "xz".into(),
            compressed_sha256: sha.into(),
            compressed_size: 3,
            raw_sha256: sha.into(),
            raw_size: 5,
            verification: Some(Verification::PinnedSha256),
            verified_by: None,
            fetched_at: at.into(),
            last_used: at.into(),
        }
    }

    #[test]
    fn insert_list_find_clean() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let _lock = cache.lock().unwrap();
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        for (sha, at) in [(&a, "2026-01-01T00:00:00Z"), (&b, "2026-01-02T00:00:00Z")] {
            let mut img = PendingOutput::create(&cache.image_path(sha)).unwrap();
            img.file().write_all(b"image").unwrap();
            cache.insert(img, meta(sha, "http://x/i.img", at)).unwrap();
        }
        // An orphan image without metadata is not an entry.
        fs::write(cache.image_path(&"c".repeat(64)), b"x").unwrap();
        assert_eq!(cache.list().unwrap().len(), 2);
        let found = cache.find_url("http://x/i.img").unwrap().unwrap();
        assert_eq!(found.meta.compressed_sha256, b);
        assert!(cache.get(&"c".repeat(64)).unwrap().is_none());
        let cleaned = cache.clean().unwrap();
        assert_eq!(cleaned.files, 5);
        assert!(cache.list().unwrap().is_empty());
        assert!(dir.path().join("lock").exists());
    }
}
