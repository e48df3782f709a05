//! Overlay trees: directories whose contents are copied into an image's filesystem.
//!
//! [`load`] turns a tree on the build host into an ordered list of entries (parents before
//! children, otherwise by name) with the ownership and permissions they get in the image:
//! `root:root`, files `0644` (`0755` when the source has any execute bit), directories `0755`,
//! unless an optional manifest says otherwise. Anything that could not be copied faithfully, or
//! could reach outside the tree, is refused before anything is written.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::image::ext4::{self, Attrs, Need};
use crate::io::{AtPath, PathError};

/// The longest name an ext4 directory entry holds, in bytes.
const MAX_NAME: usize = 255;
/// The longest symlink target an ext4 filesystem with 4 KiB blocks holds.
const MAX_TARGET: usize = 4095;

/// Errors from loading an overlay. Each names the overlay path or manifest it is about.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// Reading the overlay tree failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// Something in the tree cannot go into an image.
    #[error("{path}: {reason}")]
    Refused {
        /// The offending file in the overlay.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// A named overlay has nothing to copy.
    #[error("{}: overlay '{name}' (node {node}) has neither a boot/ nor a rootfs/ directory", dir.display())]
    Empty {
        /// The overlay's directory.
        dir: PathBuf,
        /// The overlay's name.
        name: String,
        /// The node that uses it.
        node: String,
    },
    /// A boot overlay path is a file pi-image generates for the node.
    #[error(
        "{}: boot overlay path '{path}' is the boot file pi-image generates as '{generated}' \
         (FAT names ignore case); it would silently replace the node's own. Put cloud-init \
         settings in the profile's user_data, and boot settings in config_txt and cmdline",
        overlay.display()
    )]
    Generated {
        /// The overlay file or directory.
        overlay: PathBuf,
        /// Its path in the boot partition.
        path: String,
        /// The generated file it collides with.
        generated: String,
    },
    /// The manifest is invalid.
    #[error("{manifest}: {problem}")]
    Manifest {
        /// The manifest file.
        manifest: PathBuf,
        /// What is wrong, naming the key where there is one.
        problem: String,
    },
}

/// Ownership and permissions of an overlay entry in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayAttrs {
    /// Permission bits, including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
}

impl OverlayAttrs {
    /// These attributes with all timestamps set to `mtime`, as the ext4 module takes them.
    pub fn with_mtime(self, mtime: i64) -> Attrs {
        Attrs {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime,
        }
    }
}

/// What an overlay entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayKind {
    /// A directory.
    Dir,
    /// A regular file, read from `source` when applied.
    File {
        /// The file on the build host.
        source: PathBuf,
        /// Its size when the overlay was loaded.
        size: u64,
    },
    /// A symbolic link, stored as is (absolute targets resolve inside the image).
    Symlink {
        /// The link target.
        target: String,
    },
}

/// One thing to create in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayEntry {
    /// Path relative to the overlay root, '/'-separated, e.g. `etc/sysctl.d/99-k8s.conf`.
    pub path: String,
    /// What it is.
    pub kind: OverlayKind,
    /// Owner and permissions in the image.
    pub attrs: OverlayAttrs,
}

const ROOT: (u32, u32) = (0, 0);

/// Loads the overlay tree at `dir` (its contents, not `dir` itself), applying `manifest` if
/// given.
///
/// The manifest is TOML, one table per path relative to `dir`, each with optional `mode`
/// (octal string, e.g. `"0440"`) and `owner` (`"uid:gid"`, each a number or `root`; or just
/// `"root"`):
///
/// ```toml
/// ["etc/sudoers.d/k8s"]
/// mode = "0440"
/// owner = "root:root"
/// ```
///
/// Unknown fields and paths that match nothing in the tree are errors. Refused in the tree:
/// symlinks whose relative target climbs out of `dir`, device files, FIFOs and sockets, and
/// names ext4 cannot hold or that are not UTF-8.
pub fn load(dir: &Path, manifest: Option<&Path>) -> Result<Vec<OverlayEntry>, OverlayError> {
    let meta = std::fs::metadata(dir).at(dir)?;
    if !meta.is_dir() {
        return Err(OverlayError::Refused {
            path: dir.to_owned(),
            reason: "is not a directory".into(),
        });
    }
    let mut entries = Vec::new();
    walk(dir, &[], &mut entries)?;
    // Component-wise order puts every directory right before its contents.
    entries.sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
    if let Some(manifest) = manifest {
        apply_manifest(manifest, &mut entries)?;
    }
    Ok(entries)
}

/// A node's overlays, each loaded in profile order.
#[derive(Debug, Clone, Default)]
pub struct NodeOverlays {
    /// What goes into the FAT boot partition (`<overlay>/boot/`).
    pub boot: Vec<OverlayEntry>,
    /// What goes into the ext4 root filesystem (`<overlay>/rootfs/`, with `rootfs.toml`).
    pub rootfs: Vec<OverlayEntry>,
}

/// Load the overlays `names` (directories under `overlays_dir`) of node `node`: every `boot/`
/// tree (which may hold no symlinks: FAT has none) and every `rootfs/` tree with its manifest.
pub fn load_node(
    overlays_dir: &Path,
    names: &[String],
    node: &str,
) -> Result<NodeOverlays, OverlayError> {
    let mut loaded = NodeOverlays::default();
    for name in names {
        let dir = overlays_dir.join(name);
        let (boot, rootfs) = (dir.join("boot"), dir.join("rootfs"));
        if !boot.is_dir() && !rootfs.is_dir() {
            return Err(OverlayError::Empty {
                dir,
                name: name.clone(),
                node: node.to_owned(),
            });
        }
        if boot.is_dir() {
            for entry in load(&boot, None)? {
                if let OverlayKind::Symlink { .. } = entry.kind {
                    return Err(OverlayError::Refused {
                        path: boot.join(&entry.path),
                        reason: "the FAT boot partition cannot hold symlinks".into(),
                    });
                }
                loaded.boot.push(entry);
            }
        }
        if rootfs.is_dir() {
            let manifest = dir.join("rootfs.toml");
            loaded.rootfs.extend(load(
                &rootfs,
                manifest.is_file().then_some(manifest.as_path()),
            )?);
        }
    }
    Ok(loaded)
}

/// Refuse boot overlay `entries` at a path pi-image writes itself (`generated`: the plan's boot
/// files, `vmlinux`, the EEPROM update files), compared as FAT does, ignoring case: an overlay
/// `USER-DATA` would otherwise replace the node's cloud-init seed (hostname, keys, password
/// rules) while `meta-data` kept an instance id for the old one.
pub fn check_not_generated<'a>(
    entries: &[OverlayEntry],
    generated: impl IntoIterator<Item = &'a str> + Clone,
) -> Result<(), OverlayError> {
    for entry in entries {
        let hit = generated
            .clone()
            .into_iter()
            .find(|g| g.to_lowercase() == entry.path.to_lowercase());
        if let Some(generated) = hit {
            return Err(OverlayError::Generated {
                overlay: match &entry.kind {
                    OverlayKind::File { source, .. } => source.clone(),
                    _ => PathBuf::from(&entry.path),
                },
                path: entry.path.clone(),
                generated: generated.to_string(),
            });
        }
    }
    Ok(())
}

/// An upper bound on the free bytes applying `entries` takes from a filesystem with 4 KiB
/// blocks (what [`ext4::Ext4Fs`] checks per write, summed): compare it with
/// [`ext4::Ext4Fs::free_bytes`] before writing anything.
pub fn total_bytes(entries: &[OverlayEntry]) -> u64 {
    entries
        .iter()
        .map(|e| {
            let need = match &e.kind {
                OverlayKind::Dir => Need::Dir,
                OverlayKind::File { size, .. } => Need::File(*size),
                OverlayKind::Symlink { target } => Need::Symlink(target.len()),
            };
            ext4::bytes_needed(need, ext4::TYPICAL_BLOCK_SIZE)
        })
        .sum()
}

/// Why a name cannot go into an ext4 image, if it cannot.
fn name_problem(name: &OsStr) -> Option<&'static str> {
    let bytes = name.as_encoded_bytes();
    if bytes.len() > MAX_NAME {
        Some("name is longer than the 255 bytes ext4 allows")
    } else if bytes.contains(&0) {
        Some("name contains a NUL byte")
    } else if name.to_str().is_none() {
        Some("name is not valid UTF-8")
    } else {
        None
    }
}

fn walk(dir: &Path, rel: &[String], out: &mut Vec<OverlayEntry>) -> Result<(), OverlayError> {
    let mut children = Vec::new();
    for item in std::fs::read_dir(dir).at(dir)? {
        children.push(item.at(dir)?);
    }
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let path = child.path();
        let refuse = |reason: String| OverlayError::Refused {
            path: path.clone(),
            reason,
        };
        let name = child.file_name();
        if let Some(problem) = name_problem(&name) {
            return Err(refuse(problem.into()));
        }
        let mut child_rel = rel.to_vec();
        child_rel.push(name.to_string_lossy().into_owned());
        let meta = std::fs::symlink_metadata(&path).at(&path)?;
        let ft = meta.file_type();
        let (kind, mode) = if ft.is_dir() {
            (OverlayKind::Dir, 0o755)
        } else if ft.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            (
                OverlayKind::File {
                    source: path.clone(),
                    size: meta.len(),
                },
                mode,
            )
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).at(&path)?;
            let target = target
                .to_str()
                .ok_or_else(|| refuse("symlink target is not valid UTF-8".into()))?
                .to_owned();
            check_target(&target, rel.len()).map_err(refuse)?;
            (OverlayKind::Symlink { target }, 0o777)
        } else {
            let what = if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_block_device() || ft.is_char_device() {
                "a device file"
            } else {
                "not a regular file, directory or symlink"
            };
            return Err(refuse(format!(
                "is {what}; overlays may only hold files, directories and symlinks"
            )));
        };
        out.push(OverlayEntry {
            path: child_rel.join("/"),
            kind: kind.clone(),
            attrs: OverlayAttrs {
                mode,
                uid: ROOT.0,
                gid: ROOT.1,
            },
        });
        if kind == OverlayKind::Dir {
            walk(&path, &child_rel, out)?;
        }
    }
    Ok(())
}

/// Checks a symlink target for a link `depth` directories below the overlay root: relative
/// targets may not climb above the root (absolute ones resolve inside the image).
fn check_target(target: &str, depth: usize) -> Result<(), String> {
    if target.len() > MAX_TARGET {
        return Err(format!(
            "symlink target is longer than the {MAX_TARGET} bytes ext4 holds"
        ));
    }
    if target.starts_with('/') {
        return Ok(());
    }
    let mut level = depth;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                level = level.checked_sub(1).ok_or_else(|| {
                    format!("symlink target '{target}' points outside the overlay")
                })?;
            }
            _ => level += 1,
        }
    }
    Ok(())
}

/// Applies the manifest's modes and owners to `entries`.
fn apply_manifest(manifest: &Path, entries: &mut [OverlayEntry]) -> Result<(), OverlayError> {
    let err = |problem: String| OverlayError::Manifest {
        manifest: manifest.to_owned(),
        problem,
    };
    let text = std::fs::read_to_string(manifest).at(manifest)?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    let index: BTreeMap<String, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.clone(), i))
        .collect();
    for (key, value) in &table {
        let at = |problem: &str| err(format!("[\"{key}\"]: {problem}"));
        let fields = value
            .as_table()
            .ok_or_else(|| at("expected a table with mode and/or owner"))?;
        let Some(&i) = index.get(key.as_str()) else {
            return Err(at(
                "matches no file in the overlay (paths are relative to the overlay root, like \"etc/x.conf\")",
            ));
        };
        let entry = &mut entries[i];
        for (field, v) in fields {
            let text = v
                .as_str()
                .ok_or_else(|| at(&format!("{field} must be a string")))?;
            match field.as_str() {
                "mode" => {
                    if matches!(entry.kind, OverlayKind::Symlink { .. }) {
                        return Err(at("a symlink has no mode of its own"));
                    }
                    entry.attrs.mode = parse_mode(text).ok_or_else(|| {
                        at(&format!(
                            "mode '{text}' is not an octal mode like \"0644\" (at most 07777)"
                        ))
                    })?;
                }
                "owner" => {
                    (entry.attrs.uid, entry.attrs.gid) = parse_owner(text).ok_or_else(|| {
                        at(&format!(
                            "owner '{text}' is not \"uid:gid\" with numeric ids (0 to 4294967294) or root, like \"0:0\", \"1000:1000\" or \"root\""
                        ))
                    })?;
                }
                other => {
                    return Err(at(&format!(
                        "unknown field `{other}` (expected mode or owner)"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn parse_mode(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(text, 8).ok().filter(|m| *m <= 0o7777)
}

/// Owner ids: numbers, or `root`. Other names are refused because they mean whatever the
/// image's /etc/passwd says, which the build host cannot know reliably. 4294967295 is -1,
/// which chown and the kernel read as "leave unchanged", never a real owner.
fn parse_owner(text: &str) -> Option<(u32, u32)> {
    let id = |s: &str| {
        if s == "root" {
            Some(0)
        } else if s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().ok().filter(|&id| id != u32::MAX)
        } else {
            None
        }
    };
    match text.split_once(':') {
        Some((u, g)) => Some((id(u)?, id(g)?)),
        None if text == "root" => Some(ROOT),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn overlay_names_ext4_cannot_hold_are_found() {
        assert_eq!(name_problem(OsStr::new("ok.conf")), None);
        // 100 three-byte characters: fine on hosts counting characters, too long for ext4.
        assert!(name_problem(OsStr::new(&"é€".repeat(60))).is_some());
        assert!(name_problem(OsStr::new(&"a".repeat(255))).is_none());
        assert!(name_problem(OsStr::from_bytes(b"a\0b")).is_some());
        assert!(name_problem(OsStr::from_bytes(b"caf\xe9")).is_some());
    }

    #[test]
    fn overlay_symlink_targets_stay_inside() {
        assert!(check_target("/dev/null", 0).is_ok());
        assert!(check_target("../x", 1).is_ok());
        assert!(check_target("../x", 0).is_err());
        assert!(check_target("a/../../x", 0).is_err());
        assert!(check_target("./a/./b", 0).is_ok());
        assert!(check_target(&"a/".repeat(3000), 0).is_err());
    }

    #[test]
    fn overlay_modes_and_owners_parse() {
        assert_eq!(parse_mode("0440"), Some(0o440));
        assert_eq!(parse_mode("4755"), Some(0o4755));
        assert_eq!(parse_mode("755"), Some(0o755));
        for bad in ["", "0o755", "0758", "17777", "rwx"] {
            assert_eq!(parse_mode(bad), None, "{bad}");
        }
        assert_eq!(parse_owner("root"), Some((0, 0)));
        assert_eq!(parse_owner("root:root"), Some((0, 0)));
        assert_eq!(parse_owner("1000:27"), Some((1000, 27)));
        assert_eq!(parse_owner("root:4"), Some((0, 4)));
        for bad in [
            "ubuntu",
            "ubuntu:ubuntu",
            "1000",
            ":",
            "1:",
            "-1:0",
            "1:2:3",
            "4294967295:0",
            "0:4294967295",
        ] {
            assert_eq!(parse_owner(bad), None, "{bad}");
        }
    }
}
