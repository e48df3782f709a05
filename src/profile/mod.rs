//! Profiles: the TOML files under `profiles/` that describe a cluster, its defaults and its
//! nodes. [`Profile::load`] parses and validates a profile completely before anything is
//! written; every error names the file, the line:column and the field.

mod fields;
mod nodeset;
mod raw;
pub mod rules;
pub mod sshkey;
mod validate;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bootconf::eeprom::BootOrder;
use raw::RawProfile;
use validate::Validator;

/// The official Ubuntu 20.04.5 arm64+raspi image, the default base of the demo profile.
pub const UBUNTU_20_04_5_URL: &str = "https://cdimage.ubuntu.com/releases/20.04.5/release/ubuntu-20.04.5-preinstalled-server-arm64+raspi.img.xz";

/// A profile error: where in which file, which field, and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}:{column}: {field}: {message}", file.display())]
pub struct ProfileError {
    /// The profile (or key file) the error is in.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field, e.g. `nodes[2].address`, or `node_sets[0] (w017).address` for a node of a set.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// The `SHA256SUMS` file published beside [`UBUNTU_20_04_5_URL`].
pub const UBUNTU_20_04_5_SUMS_URL: &str =
    "https://cdimage.ubuntu.com/releases/20.04.5/release/SHA256SUMS";

/// Where the base image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseSpec {
    /// A download: fetched into the cache (see [`crate::base::fetch`]) and verified before use.
    Url(RemoteBase),
    /// A local `.img` or `.img.xz` file.
    Path(PathBuf),
}

/// A base image to download, and how to verify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBase {
    /// The image's URL (`.img`, `.img.xz`, `.img.gz` or `.img.zst`).
    pub url: String,
    /// The pinned sha256 of the file at `url` (lowercase hex), if the profile gives one.
    pub sha256: Option<String>,
    /// The size in bytes of the file at `url` (`base_size`), if the profile gives it: a
    /// download is stopped at the first byte past it.
    pub size: Option<u64>,
    /// A `SHA256SUMS` URL whose line for the file name of `url` gives the sha256.
    pub sha256sums: Option<String>,
    /// The release it holds, when known from the alias (`Ubuntu 20.04.5`), for `cache list`.
    pub release: Option<String>,
    /// The OpenPGP public key trusted to sign `sha256sums` (`base_signing_key`, a file).
    pub signing_key: Option<PathBuf>,
}

impl RemoteBase {
    /// The last path segment of the URL: the name looked up in `SHA256SUMS`.
    pub fn file_name(&self) -> &str {
        let path = self.url.split(['?', '#']).next().unwrap_or("");
        path.rsplit('/').next().unwrap_or("")
    }
}

/// Which disk a node boots from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// SD card: the stock boot path (U-Boot on 20.04).
    Sd,
    /// USB SSD on a Pi 4: U-Boot bypassed, the firmware loads the kernel.
    Ssd,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Target::Sd => "sd",
            Target::Ssd => "ssd",
        })
    }
}

/// The partition table a node's image gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionScheme {
    /// Keep the base image's MBR (DOS) table, with a per-node disk identifier.
    #[default]
    Mbr,
    /// Convert it to GPT at the same offsets, with per-node GUIDs.
    Gpt,
}

impl std::fmt::Display for PartitionScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PartitionScheme::Mbr => "mbr",
            PartitionScheme::Gpt => "gpt",
        })
    }
}

/// CPU overclock settings for a Pi 4, written under `[pi4]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overclock {
    /// `arm_freq` in MHz (2000 for 2.0 GHz).
    pub arm_freq: u32,
    /// `over_voltage` steps of 0.025 V (6 for 2.0 GHz).
    pub over_voltage: i32,
    /// Optional `gpu_freq` in MHz.
    pub gpu_freq: Option<u32>,
}

/// What to put into the EEPROM: the boot order, other settings, and where the firmware comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EepromSpec {
    /// `BOOT_ORDER`.
    pub boot_order: BootOrder,
    /// Other bootloader settings (`POWER_OFF_ON_HALT`, ...), in the order given.
    pub settings: Vec<(String, String)>,
    /// The `pieeprom-*.bin` to start from; `None` means download (not available yet).
    pub firmware: Option<PathBuf>,
    /// The `recovery.bin` that flashes it.
    pub recovery: Option<PathBuf>,
}

/// A static IPv4 configuration of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticAddress {
    /// Interface name, e.g. `eth0`.
    pub interface: String,
    /// The node's address.
    pub address: Ipv4Addr,
    /// Prefix length of its subnet.
    pub prefix_len: u8,
    /// Default gateway, inside the subnet.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<IpAddr>,
    /// DNS search domains.
    pub search: Vec<String>,
}

/// One node, with the cluster defaults and its overrides resolved.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node name (`pi3`); the output is `<name>.img`.
    pub name: String,
    /// Hostname (defaults to the node name).
    pub hostname: String,
    /// DNS domain; the FQDN is `hostname.domain`.
    pub domain: Option<String>,
    /// Static address; `None` keeps DHCP.
    pub network: Option<StaticAddress>,
    /// Login user (`ubuntu` is the image's default user).
    pub user: String,
    /// SSH public keys, one `TYPE BASE64 COMMENT` line each, validated.
    pub ssh_keys: Vec<String>,
    /// SHA-512-crypt password hash, if password login is wanted.
    pub password_hash: Option<String>,
    /// Timezone, e.g. `Europe/Berlin`.
    pub timezone: Option<String>,
    /// Boot disk.
    pub target: Target,
    /// Write a decompressed `vmlinux` and boot it (SSD nodes with old firmware).
    pub decompress_kernel: bool,
    /// Overclock under `[pi4]`.
    pub overclock: Option<Overclock>,
    /// Free-form config.txt settings: section → key → value.
    pub config_txt: BTreeMap<String, BTreeMap<String, String>>,
    /// Extra kernel command line tokens.
    pub cmdline: Vec<String>,
    /// Add the memory-cgroup flags Kubernetes needs.
    pub kubernetes: bool,
    /// Overlay names, cluster-wide first, then the node's.
    pub overlays: Vec<String>,
    /// Extra cloud-init user-data to merge (cluster-wide merged with the node's).
    pub user_data: Option<toml::Table>,
    /// A bootloader EEPROM update to put on the boot partition (`recovery.bin`, `pieeprom.upd`,
    /// `pieeprom.sig`).
    pub eeprom: Option<EepromSpec>,
    /// The image's partition table.
    pub partition_table: PartitionScheme,
}

impl Node {
    /// `hostname.domain`, or the hostname alone when there is no domain.
    pub fn fqdn(&self) -> String {
        match &self.domain {
            Some(d) => format!("{}.{d}", self.hostname),
            None => self.hostname.clone(),
        }
    }

    /// The static address with its prefix length (`192.168.1.13/24`); `None` for DHCP.
    pub fn cidr(&self) -> Option<String> {
        self.network
            .as_ref()
            .map(|net| format!("{}/{}", net.address, net.prefix_len))
    }
}

/// A loaded, validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The profile file.
    pub path: PathBuf,
    /// Cluster name: part of every node's disk identifier.
    pub cluster: String,
    /// Where the base image comes from.
    pub base: BaseSpec,
    /// The directory overlays are looked up in.
    pub overlays_dir: PathBuf,
    /// The nodes, in file order.
    pub nodes: Vec<Node>,
}

impl Profile {
    /// Read, parse and validate the profile at `path`.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError {
            file: path.to_owned(),
            line: 1,
            column: 1,
            field: "(file)".into(),
            message: format!("cannot read profile: {e}"),
        })?;
        Profile::parse(path, &text)
    }

    /// Parse and validate profile text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Profile, ProfileError> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (line, column) = line_col(text, span.start);
            ProfileError {
                file: path.to_owned(),
                line,
                column,
                field: "(syntax)".into(),
                message: e.message().trim().to_string(),
            }
        })?;
        Validator::new(path, text).profile(raw)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_from_one() {
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
    }
}
