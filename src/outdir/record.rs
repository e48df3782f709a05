//! The build record, `<out>/.pi-image/build.json`: per node the image `build` wrote there, its
//! sha256 and the [`Inputs`] it was built from, and which nodes the last `pi-image build` wrote.
//! Rewritten atomically (temp file, fsync, rename) after every build; entries whose image file
//! is gone are dropped.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::OutDirError;
use super::identity::{FileStamp, HashedFile, Inputs};
use crate::image::PendingOutput;
use crate::io::AtPath;

/// The directory in the output directory that holds the record.
pub const DIR: &str = ".pi-image";
/// The record's file name in [`DIR`].
pub const FILE: &str = "build.json";
/// The [`ImageEntry::format`] of a node's image in a shared-chunk release (`build --chunked`),
/// whose `file` is the node's index, `<node>.chunks.json`.
pub const CHUNKED: &str = "chunked";
/// The record format this pi-image reads and writes.
const FORMAT: u32 = 1;

/// Everything recorded about an output directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The record's format, [`FORMAT`].
    pub format: u32,
    /// What the last `pi-image build` into this directory wrote.
    pub last_build: Option<LastBuild>,
    /// The images in the directory, by node name.
    pub images: BTreeMap<String, ImageEntry>,
}

impl Default for Record {
    fn default() -> Record {
        Record {
            format: FORMAT,
            last_build: None,
            images: BTreeMap::new(),
        }
    }
}

/// The last `pi-image build`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastBuild {
    /// When it finished (RFC 3339, UTC).
    pub finished_at: String,
    /// The nodes it wrote, in the order built.
    pub nodes: Vec<String>,
}

/// One node's image in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// The image's file name in the directory (`pi3.img`, `pi3.img.xz`, `w017.chunks.json`).
    pub file: String,
    /// `raw`, `xz`, `zstd`, `gz` or [`CHUNKED`].
    pub format: String,
    /// The file's sha256 and its stamp when written.
    pub written: HashedFile,
    /// The node's FQDN.
    pub hostname: String,
    /// Its static address with prefix; `None` for DHCP.
    pub address: Option<String>,
    /// Its boot target, `sd` or `ssd`.
    pub target: String,
    /// The base's release, `Ubuntu 20.04 (focal)`.
    pub release: String,
    /// When it was written (RFC 3339, UTC).
    pub built_at: String,
    /// The profile (absolute path).
    pub profile: PathBuf,
    /// The base: its absolute path, or its URL.
    pub base: String,
    /// For a local base file: its sha256 and stamp, so the next look need not hash it again.
    pub base_file: Option<HashedFile>,
    /// What the image was built from.
    pub inputs: Inputs,
}

impl ImageEntry {
    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        self.written.stamp.size
    }

    /// The image's sha256, hex.
    pub fn sha256(&self) -> &str {
        &self.written.sha256
    }
}

impl Record {
    /// Where the record of `out_dir` lives.
    pub fn path(out_dir: &Path) -> PathBuf {
        out_dir.join(DIR).join(FILE)
    }

    /// The record of `out_dir`; an empty one if there is none yet.
    pub fn read(out_dir: &Path) -> Result<Record, OutDirError> {
        let path = Record::path(out_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Record::default()),
            Err(e) => return Err(crate::io::PathError::new(&path, e).into()),
        };
        let bad = |reason: String| OutDirError::Record {
            path: path.clone(),
            reason,
        };
        let record: Record = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if record.format != FORMAT {
            return Err(bad(format!(
                "format {} (this pi-image reads format {FORMAT})",
                record.format
            )));
        }
        Ok(record)
    }

    /// Add `entries` (replacing those of the same nodes), drop entries whose image is gone or
    /// no longer the file recorded, set `last_build` if given, and write the record of `out_dir`.
    pub fn update(
        mut self,
        out_dir: &Path,
        entries: Vec<(String, ImageEntry)>,
        last_build: Option<LastBuild>,
    ) -> Result<(), OutDirError> {
        self.images.extend(entries);
        self.images.retain(|_, e| {
            FileStamp::of(&out_dir.join(&e.file)).is_ok_and(|s| s.ino == e.written.stamp.ino)
        });
        if last_build.is_some() {
            self.last_build = last_build;
        }
        let path = Record::path(out_dir);
        let dir = out_dir.join(DIR);
        std::fs::create_dir_all(&dir).at(&dir)?;
        let json = serde_json::to_string_pretty(&self).map_err(|e| OutDirError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut out = PendingOutput::create(&path)?;
        out.file()
            .write_all(format!("{json}\n").as_bytes())
            .at(out.temp_path())?;
        out.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: &Path, file: &str) -> ImageEntry {
        let path = dir.join(file);
        std::fs::write(&path, file).unwrap();
        ImageEntry {
            file: file.into(),
            format: "raw".into(),
            written: HashedFile::of(&path, None).unwrap(),
            hostname: "h".into(),
            address: None,
            target: "sd".into(),
            release: "r".into(),
            built_at: "t".into(),
            profile: "p".into(),
            base: "b".into(),
            base_file: None,
            inputs: Inputs {
                pi_image: "v".into(),
                profile_sha256: "p".into(),
                ssh_keys_sha256: "k".into(),
                overlays: vec![],
                eeprom_sha256: None,
                base_sha256: "b".into(),
                source_date_epoch: 0,
            },
        }
    }

    #[test]
    fn update_keeps_what_is_still_there_and_last_build_until_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let last = |nodes: &[&str]| LastBuild {
            finished_at: "t".into(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        };
        let (a, b) = (entry(d, "a.img"), entry(d, "b.img"));
        Record::read(d)
            .unwrap()
            .update(
                d,
                vec![("a".into(), a.clone()), ("b".into(), b)],
                Some(last(&["a", "b"])),
            )
            .unwrap();
        // b.img replaced by another file (made first, so surely another inode): its entry no
        // longer holds.
        std::fs::write(d.join("b.new"), "other").unwrap();
        std::fs::rename(d.join("b.new"), d.join("b.img")).unwrap();
        let c = entry(d, "c.img");
        Record::read(d)
            .unwrap()
            .update(d, vec![("c".into(), c.clone())], None)
            .unwrap();
        let r = Record::read(d).unwrap();
        assert_eq!(r.images.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!((&r.images["a"], &r.images["c"]), (&a, &c));
        assert_eq!(r.last_build, Some(last(&["a", "b"])));
    }

    #[test]
    fn a_broken_or_newer_record_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Record::read(dir.path()).unwrap(), Record::default());
        std::fs::create_dir(dir.path().join(DIR)).unwrap();
        let path = Record::path(dir.path());
        for (text, want) in [
            ("{\"format\": 1", "EOF while parsing"),
            (
                "{\"format\": 2, \"last_build\": null, \"images\": {}}",
                "format 2 (this pi-image reads format 1)",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Record::read(dir.path()).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{}: ", path.display()))
                    && err.contains(want)
                    && err.ends_with("(remove it; the next build writes a new one)"),
                "{err}"
            );
        }
    }
}
