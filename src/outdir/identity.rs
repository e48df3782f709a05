//! What a node's image is made of, as hashes: the profile's text, the node's SSH keys, its
//! overlay trees, its EEPROM files, the base image, `SOURCE_DATE_EPOCH` and pi-image's version.
//! Two builds with equal [`Inputs`] write the same bytes (builds are reproducible), so an image
//! whose recorded inputs equal the current ones is current; anything else is stale.

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::OutDirError;
use crate::build::overlay::{self, OverlayKind};
pub use crate::io::stamp::FileStamp;
use crate::io::{AtPath, hex, sha256_hex};
use crate::profile::{Node, Profile};

/// The inputs of one node's image, each as a sha256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// pi-image's version (`CARGO_PKG_VERSION`).
    pub pi_image: String,
    /// The profile file's text.
    pub profile_sha256: String,
    /// The node's SSH public keys as the profile resolved them (inline, or read from key files),
    /// one per line.
    pub ssh_keys_sha256: String,
    /// Each overlay of the node, in order: its name and the hash of its trees.
    pub overlays: Vec<OverlayHash>,
    /// The EEPROM firmware and recovery files, when the node has an `eeprom` table.
    pub eeprom_sha256: Option<String>,
    /// The base image file: a local file as it is, a download as verified when fetched.
    pub base_sha256: String,
    /// The timestamp every file in the image gets.
    pub source_date_epoch: i64,
}

/// One overlay's name and the sha256 of everything it copies: for each entry of its `boot/`
/// and `rootfs/` trees the path, kind, mode, owner and contents (or link target).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayHash {
    /// The overlay's name (its directory under `overlays_dir`).
    pub name: String,
    /// The hash of its trees.
    pub sha256: String,
}

impl Inputs {
    /// The inputs of `node`'s image: `profile_sha256` and `base_sha256` are the same for every
    /// node of a run, so the caller hashes them once.
    pub fn of(
        profile: &Profile,
        profile_sha256: &str,
        node: &Node,
        base_sha256: &str,
        epoch: i64,
    ) -> Result<Inputs, OutDirError> {
        let overlays = node
            .overlays
            .iter()
            .map(|name| overlay_hash(profile, node, name))
            .collect::<Result<_, _>>()?;
        let eeprom_sha256 = match &node.eeprom {
            Some(spec) => {
                let mut h = Sha256::new();
                for file in [&spec.firmware, &spec.recovery].into_iter().flatten() {
                    h.update(file_sha256(file)?.as_bytes());
                }
                Some(hex(&h.finalize()))
            }
            None => None,
        };
        Ok(Inputs {
            pi_image: env!("CARGO_PKG_VERSION").to_string(),
            profile_sha256: profile_sha256.to_string(),
            ssh_keys_sha256: hex(&Sha256::digest(node.ssh_keys.join("\n").as_bytes())),
            overlays,
            eeprom_sha256,
            base_sha256: base_sha256.to_string(),
            source_date_epoch: epoch,
        })
    }

    /// What differs from `earlier`, in words ("profile", "base image", ...); empty when equal.
    pub fn changes_since(&self, earlier: &Inputs) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut differs = |what, yes: bool| {
            if yes {
                changed.push(what);
            }
        };
        differs("pi-image version", self.pi_image != earlier.pi_image);
        differs("profile", self.profile_sha256 != earlier.profile_sha256);
        differs("SSH keys", self.ssh_keys_sha256 != earlier.ssh_keys_sha256);
        differs("overlays", self.overlays != earlier.overlays);
        differs("EEPROM files", self.eeprom_sha256 != earlier.eeprom_sha256);
        differs("base image", self.base_sha256 != earlier.base_sha256);
        differs(
            "SOURCE_DATE_EPOCH",
            self.source_date_epoch != earlier.source_date_epoch,
        );
        changed
    }
}

/// Hash overlay `name` of `node` as the build loads it (so the modes and owners are the ones
/// the image gets, manifest included, and a tree the build would refuse fails here too).
fn overlay_hash(profile: &Profile, node: &Node, name: &str) -> Result<OverlayHash, OutDirError> {
    let loaded = overlay::load_node(&profile.overlays_dir, &[name.to_string()], &node.name)?;
    let mut h = Sha256::new();
    for (tree, entries) in [("boot", &loaded.boot), ("rootfs", &loaded.rootfs)] {
        for e in entries {
            h.update(format!(
                "{tree}\0{}\0{:o} {}:{}\0",
                e.path, e.attrs.mode, e.attrs.uid, e.attrs.gid
            ));
            match &e.kind {
                OverlayKind::Dir => h.update(b"dir\0"),
                OverlayKind::File { source, .. } => {
                    h.update(format!("file {}\0", file_sha256(source)?));
                }
                OverlayKind::Symlink { target } => h.update(format!("link {target}\0")),
            }
        }
    }
    Ok(OverlayHash {
        name: name.to_string(),
        sha256: hex(&h.finalize()),
    })
}

/// The sha256 of the file at `path`, hex.
pub fn file_sha256(path: &Path) -> Result<String, OutDirError> {
    Ok(sha256_hex(&mut File::open(path).at(path)?).at(path)?)
}

/// A file's sha256 and the stamp it was taken at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashedFile {
    /// The sha256 of its contents, hex.
    pub sha256: String,
    /// Its stamp when hashed.
    pub stamp: FileStamp,
}

impl HashedFile {
    /// Hash the file at `path`, unless `known` was taken at the stamp it has now.
    pub fn of(path: &Path, known: Option<&HashedFile>) -> Result<HashedFile, OutDirError> {
        let stamp = FileStamp::of(path)?;
        if let Some(k) = known.filter(|k| k.stamp == stamp) {
            return Ok(k.clone());
        }
        let sha256 = file_sha256(path)?;
        // Changed while it was read: the hash may mix two versions, so it is kept but the next
        // look hashes again (the stamp will not match).
        let after = FileStamp::of(path)?;
        Ok(HashedFile {
            sha256,
            stamp: if after == stamp {
                stamp
            } else {
                FileStamp {
                    size: u64::MAX,
                    ..after
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_hash_is_reused_only_while_the_stamp_holds() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("base.img");
        fs::write(&f, b"one").unwrap();
        let first = HashedFile::of(&f, None).unwrap();
        assert_eq!(first.sha256, hex(&Sha256::digest(b"one")));
        // A made-up hash with the right stamp is trusted: proof that nothing was read.
        let fake = HashedFile {
            sha256: "f".repeat(64),
            stamp: first.stamp.clone(),
        };
        assert_eq!(HashedFile::of(&f, Some(&fake)).unwrap(), fake);
        // Same size, mtime put back: the ctime (and the inode, for a replaced file) still moved.
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&f, b"two").unwrap();
        File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let again = HashedFile::of(&f, Some(&fake)).unwrap();
        assert_eq!(again.sha256, hex(&Sha256::digest(b"two")));
    }

    #[test]
    fn changes_are_named() {
        let a = Inputs {
            pi_image: "1".into(),
            profile_sha256: "p".into(),
            ssh_keys_sha256: "k".into(),
            overlays: vec![],
            eeprom_sha256: None,
            base_sha256: "b".into(),
            source_date_epoch: 1,
        };
        assert!(a.changes_since(&a).is_empty());
        let b = Inputs {
            profile_sha256: "q".into(),
            base_sha256: "c".into(),
            ..a.clone()
        };
        assert_eq!(b.changes_since(&a), ["profile", "base image"]);
    }
}
