//! The release's index files: `SHA256SUMS` (Ubuntu's format, covering every artifact) and
//! `os_list.json` (a Raspberry Pi Imager custom repository). Each run rewrites both and keeps the
//! entries of earlier runs' artifacts that are still in the directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::DistError;
use crate::image::PendingOutput;
use crate::io::{AtPath, PathError, sums};

/// The checksum file, in the format of Ubuntu's (`<sha256> *<file>`, one line per file).
pub const SHA256SUMS: &str = "SHA256SUMS";
/// The Raspberry Pi Imager repository file.
pub const OS_LIST: &str = "os_list.json";

/// An `os_list.json` entry, with the fields Raspberry Pi Imager reads for a custom image.
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
}

#[derive(Serialize, Deserialize)]
struct OsList {
    os_list: Vec<OsEntry>,
}

/// Rewrite `<dir>/SHA256SUMS` and `<dir>/os_list.json` with `entries` (and, in SHA256SUMS only,
/// the (file, sha256) pairs of `other_files`), keeping the existing entries for other files that
/// are still in `dir`. Both are sorted by file name.
pub fn write_index(
    dir: &Path,
    entries: &[OsEntry],
    other_files: &[(String, String)],
) -> Result<(), DistError> {
    let list_path = dir.join(OS_LIST);
    let mut list: BTreeMap<String, OsEntry> = read_os_list(&list_path)?
        .into_iter()
        .filter(|e| still_there(dir, &e.url))
        .map(|e| (e.url.clone(), e))
        .collect();
    let mut files = Vec::new();
    for e in entries {
        files.push((e.url.clone(), e.image_download_sha256.clone()));
        list.insert(e.url.clone(), e.clone());
    }
    files.extend(other_files.iter().cloned());
    write_sums(dir, &files)?;
    let json = serde_json::to_string_pretty(&OsList {
        os_list: list.into_values().collect(),
    })
    .map_err(|e| DistError::Index {
        path: list_path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&list_path, format!("{json}\n").as_bytes())
}

/// Rewrite `<dir>/SHA256SUMS` with the (file, sha256) pairs of `files`, keeping the existing
/// entries for other files that are still in `dir`; sorted by file name.
pub fn write_sums(dir: &Path, files: &[(String, String)]) -> Result<(), DistError> {
    let sums_path = dir.join(SHA256SUMS);
    let mut sums: BTreeMap<String, String> = read_sums(&sums_path)?
        .into_iter()
        .filter(|(file, _)| still_there(dir, file))
        .collect();
    sums.extend(files.iter().cloned());
    let text: String = sums
        .iter()
        .map(|(file, sha)| sums::line(sha, file))
        .collect();
    write_atomic(&sums_path, text.as_bytes())
}

/// Whether an index entry's file is (still) a file directly in `dir`.
fn still_there(dir: &Path, file: &str) -> bool {
    !file.contains('/') && dir.join(file).is_file()
}

/// Read the index files already in `dir`, if any, so that a broken one fails before anything
/// is built.
pub fn check_existing(dir: &Path) -> Result<(), DistError> {
    read_sums(&dir.join(SHA256SUMS))?;
    read_os_list(&dir.join(OS_LIST))?;
    Ok(())
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
                 extract_sha256, image_download_size, image_download_sha256 and release_date in \
                 every entry)"
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

pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DistError> {
    let mut out = PendingOutput::create(path)?;
    out.file().write_all(bytes).at(out.temp_path())?;
    out.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(url: &str, sha: char) -> OsEntry {
        OsEntry {
            name: url.into(),
            description: "d".into(),
            url: url.into(),
            extract_size: 2,
            extract_sha256: "e".repeat(64),
            image_download_size: 1,
            image_download_sha256: sha.to_string().repeat(64),
            release_date: "2022-09-01".into(),
        }
    }

    #[test]
    fn index_keeps_other_files_still_present_and_drops_gone_ones() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.img.xz", "b.img.xz", "c.img.xz"] {
            fs::write(dir.path().join(f), "x").unwrap();
        }
        write_index(
            dir.path(),
            &[entry("b.img.xz", 'b'), entry("c.img.xz", 'c')],
            &[],
        )
        .unwrap();
        fs::remove_file(dir.path().join("c.img.xz")).unwrap();
        write_index(dir.path(), &[entry("a.img.xz", 'a')], &[]).unwrap();
        let sums = fs::read_to_string(dir.path().join(SHA256SUMS)).unwrap();
        assert_eq!(
            sums,
            format!(
                "{} *a.img.xz\n{} *b.img.xz\n",
                "a".repeat(64),
                "b".repeat(64)
            )
        );
        let list: OsList =
            serde_json::from_str(&fs::read_to_string(dir.path().join(OS_LIST)).unwrap()).unwrap();
        let urls: Vec<_> = list.os_list.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(urls, ["a.img.xz", "b.img.xz"]);
    }

    #[test]
    fn a_broken_index_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SHA256SUMS), "not a checksum\n").unwrap();
        let err = write_index(dir.path(), &[], &[]).unwrap_err().to_string();
        assert!(
            err.contains("SHA256SUMS: line 1") && err.contains("expected"),
            "{err}"
        );
        fs::remove_file(dir.path().join(SHA256SUMS)).unwrap();
        fs::write(dir.path().join(OS_LIST), "{\"os_list\": [{\"name\": 1}]}").unwrap();
        let err = write_index(dir.path(), &[], &[]).unwrap_err().to_string();
        assert!(
            err.contains("os_list.json") && err.contains("expected"),
            "{err}"
        );
    }
}
