//! The release's index files: `SHA256SUMS` (Ubuntu's format, covering every artifact) and
//! `os_list.json` (a Raspberry Pi Imager custom repository; not written for a shared-chunk
//! release, which Imager cannot read). Each node's files are put in place together with their
//! index entries ([`Index::replace`]), keeping the entries of earlier runs' artifacts that are
//! still in the directory; `sha256sum -c` passes at every moment.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{DistError, file_name};
use crate::image::PendingOutput;
use crate::io::{AtPath, PathError, sums};
use crate::profile::Target;

/// The checksum file, in the format of Ubuntu's (`<sha256> *<file>`, one line per file).
pub const SHA256SUMS: &str = "SHA256SUMS";
/// The Raspberry Pi Imager repository file.
pub const OS_LIST: &str = "os_list.json";

/// The icon of every entry: one Raspberry Pi Imager ships (a path starting `icons/` names its
/// own), so the list needs no icon file or other host.
pub const ICON: &str = "icons/cat_other_general_purpose_operating_systems.png";

/// Imager's device tags for the boards an image of `target` boots: the arm64 Ubuntu images
/// run on a Pi 3 and a Pi 4 (400, CM4) from an SD card, while the USB SSD path is written for
/// the Pi 4's firmware only. The Pi 5 is left out: nothing here was tried on one.
pub fn device_tags(target: Target) -> Vec<String> {
    let tags: &[&str] = match target {
        Target::Sd => &["pi3-64bit", "pi4-64bit"],
        Target::Ssd => &["pi4-64bit"],
    };
    tags.iter().map(|t| t.to_string()).collect()
}

/// An `os_list.json` entry, with the fields Raspberry Pi Imager's schema requires for an image
/// (`doc/json-schema/os-list-schema.json` in rpi-imager). There is no `init_format`: without it
/// Imager offers no OS customisation, which would overwrite the cloud-init files pi-image wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsEntry {
    /// Shown in the OS list.
    pub name: String,
    /// Shown under the name.
    pub description: String,
    /// The compressed image, relative to `os_list.json`.
    pub url: String,
    /// Size of the decompressed image in bytes.
    pub extract_size: u64,
    /// sha256 of the decompressed image, hex.
    pub extract_sha256: String,
    /// Size of the compressed file in bytes.
    pub image_download_size: u64,
    /// sha256 of the compressed file, hex.
    pub image_download_sha256: String,
    /// `YYYY-MM-DD`, from `SOURCE_DATE_EPOCH`.
    pub release_date: String,
    /// Shown beside the name ([`ICON`]).
    pub icon: String,
    /// Imager's tags of the boards the image boots ([`device_tags`]).
    pub devices: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct OsList {
    os_list: Vec<OsEntry>,
}

/// The index of a release directory: `SHA256SUMS` lines and `os_list.json` entries by file
/// name. Changed only through [`Index::replace`], which keeps the directory checking at every
/// moment.
#[derive(Debug, Clone, Default)]
pub struct Index {
    sums: BTreeMap<String, String>,
    list: BTreeMap<String, OsEntry>,
}

impl Index {
    /// The index files in `dir` (none yet is an empty index), without the entries whose file
    /// is no longer there. A broken index file is an error naming it.
    pub fn read(dir: &Path) -> Result<Index, DistError> {
        let still_there = |file: &str| !file.contains('/') && dir.join(file).is_file();
        Ok(Index {
            sums: read_sums(&dir.join(SHA256SUMS))?
                .into_iter()
                .filter(|(file, _)| still_there(file))
                .collect(),
            list: read_os_list(&dir.join(OS_LIST))?
                .into_iter()
                .filter(|e| still_there(&e.url))
                .map(|e| (e.url.clone(), e))
                .collect(),
        })
    }

    /// Put `files` into `dir` and the index, so that `sha256sum -c SHA256SUMS` passes at every
    /// moment, also if the run is killed: first the index is rewritten without the lines of the
    /// files about to change, then each file is renamed into place, then the index is written
    /// with their new lines. `files` are the pending files with their sha256; `entry` is the
    /// `os_list.json` entry of the image among them, if it has one.
    pub fn replace(
        &mut self,
        dir: &Path,
        files: Vec<(PendingOutput, String)>,
        entry: Option<OsEntry>,
    ) -> Result<(), DistError> {
        let names: Vec<(String, String)> = files
            .iter()
            .map(|(f, sha)| (file_name(f.target()), sha.clone()))
            .collect();
        let changes = names
            .iter()
            .any(|(name, sha)| self.sums.get(name).is_some_and(|old| old != sha));
        for (name, _) in &names {
            self.sums.remove(name);
            self.list.remove(name);
        }
        if changes {
            self.write(dir)?;
        }
        for (file, _) in files {
            file.commit()?;
        }
        self.sums.extend(names);
        if let Some(entry) = entry {
            self.list.insert(entry.url.clone(), entry);
        }
        self.write(dir)
    }

    /// Write both index files (each atomically); `os_list.json` only if it lists an image or
    /// is there already (a shared-chunk release has none).
    pub fn write(&self, dir: &Path) -> Result<(), DistError> {
        let list_path = dir.join(OS_LIST);
        let text: String = self
            .sums
            .iter()
            .map(|(file, sha)| sums::line(sha, file))
            .collect();
        write_atomic(&dir.join(SHA256SUMS), text.as_bytes())?;
        if self.list.is_empty() && !list_path.exists() {
            return Ok(());
        }
        let json = serde_json::to_string_pretty(&OsList {
            os_list: self.list.values().cloned().collect(),
        })
        .map_err(|e| DistError::Index {
            path: list_path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&list_path, format!("{json}\n").as_bytes())
    }
}

/// The (file, sha256) pairs of an existing `SHA256SUMS`; none if there is no such file.
fn read_sums(path: &Path) -> Result<Vec<(String, String)>, DistError> {
    let Some(text) = read_existing(path)? else {
        return Ok(Vec::new());
    };
    sums::parse(text.as_bytes()).map_err(|e| DistError::Index {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The entries of an existing `os_list.json`; none if there is no such file.
fn read_os_list(path: &Path) -> Result<Vec<OsEntry>, DistError> {
    let Some(text) = read_existing(path)? else {
        return Ok(Vec::new());
    };
    serde_json::from_str::<OsList>(&text)
        .map(|l| l.os_list)
        .map_err(|e| DistError::Index {
            path: path.to_owned(),
            reason: format!(
                "{e} (expected {{\"os_list\": [...]}} with name, description, url, extract_size, \
                 extract_sha256, image_download_size, image_download_sha256, release_date, icon \
                 and devices in every entry)"
            ),
        })
}

fn read_existing(path: &Path) -> Result<Option<String>, DistError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PathError::new(path, e).into()),
    }
}

/// Write `bytes` to `path` through a temp file, fsync and rename.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DistError> {
    pending_with(path, bytes)?.commit()?;
    Ok(())
}

/// A pending file at `path` holding `bytes`, not yet renamed into place.
pub(super) fn pending_with(path: &Path, bytes: &[u8]) -> Result<PendingOutput, DistError> {
    let mut out = PendingOutput::create(path)?;
    out.file().write_all(bytes).at(out.temp_path())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(url: &str, sha: &str) -> OsEntry {
        OsEntry {
            name: url.into(),
            description: "d".into(),
            url: url.into(),
            extract_size: 2,
            extract_sha256: "e".repeat(64),
            image_download_size: 1,
            image_download_sha256: sha.into(),
            release_date: "2022-09-01".into(),
            icon: ICON.into(),
            devices: device_tags(Target::Sd),
        }
    }

    /// A pending file `name` in `dir` holding `text`, with its sha256.
    fn pending(dir: &Path, name: &str, text: &str) -> (PendingOutput, String) {
        let sha = crate::io::hex(&<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
        (pending_with(&dir.join(name), text.as_bytes()).unwrap(), sha)
    }

    #[test]
    fn index_keeps_other_files_still_present_and_drops_gone_ones() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut index = Index::read(d).unwrap();
        for name in ["b.img.xz", "c.img.xz"] {
            let file = pending(d, name, name);
            let sha = file.1.clone();
            index
                .replace(d, vec![file], Some(entry(name, &sha)))
                .unwrap();
        }
        fs::remove_file(d.join("c.img.xz")).unwrap();
        let mut index = Index::read(d).unwrap();
        let file = pending(d, "a.img.xz", "a");
        let sha = file.1.clone();
        index
            .replace(d, vec![file], Some(entry("a.img.xz", &sha)))
            .unwrap();
        let sums = fs::read_to_string(d.join(SHA256SUMS)).unwrap();
        let names: Vec<&str> = sums.lines().map(|l| &l[66..]).collect();
        assert_eq!(names, ["a.img.xz", "b.img.xz"]);
        let list: OsList =
            serde_json::from_str(&fs::read_to_string(d.join(OS_LIST)).unwrap()).unwrap();
        let urls: Vec<_> = list.os_list.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(urls, ["a.img.xz", "b.img.xz"]);
    }

    /// Replacing a file: its old line is gone from SHA256SUMS before the file changes.
    #[test]
    fn a_changing_file_is_unlisted_before_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut index = Index::read(d).unwrap();
        let old = pending(d, "a.img.xz", "old");
        let sha = old.1.clone();
        index
            .replace(d, vec![old], Some(entry("a.img.xz", &sha)))
            .unwrap();
        // A file whose commit fails (its directory made unwritable is not possible as root, so
        // a pending file whose temp was removed): the index was already rewritten without it.
        let mut index = Index::read(d).unwrap();
        let (new, new_sha) = pending(d, "a.img.xz", "new");
        fs::remove_file(new.temp_path()).unwrap();
        assert!(
            index
                .replace(
                    d,
                    vec![(new, new_sha.clone())],
                    Some(entry("a.img.xz", &new_sha))
                )
                .is_err()
        );
        assert_eq!(fs::read_to_string(d.join(SHA256SUMS)).unwrap(), "");
        assert_eq!(fs::read_to_string(d.join("a.img.xz")).unwrap(), "old");
        // The same content again changes nothing and rewrites the index once.
        let mut index = Index::read(d).unwrap();
        let again = pending(d, "a.img.xz", "old");
        index
            .replace(d, vec![again], Some(entry("a.img.xz", &sha)))
            .unwrap();
        assert_eq!(
            fs::read_to_string(d.join(SHA256SUMS)).unwrap(),
            sums::line(&sha, "a.img.xz")
        );
    }

    #[test]
    fn a_broken_index_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SHA256SUMS), "not a checksum\n").unwrap();
        let err = Index::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("SHA256SUMS: line 1") && err.contains("expected"),
            "{err}"
        );
        fs::remove_file(dir.path().join(SHA256SUMS)).unwrap();
        fs::write(dir.path().join(OS_LIST), "{\"os_list\": [{\"name\": 1}]}").unwrap();
        let err = Index::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("os_list.json") && err.contains("expected"),
            "{err}"
        );
    }
}
