//! The profile as TOML spells it: serde structs that keep every value's span, so validation can
//! point at the line and column. Nothing here checks a value; `validate` does.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{Overclock, PartitionScheme, Target};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfile {
    pub(super) cluster: RawCluster,
    #[serde(default)]
    pub(super) defaults: RawSettings,
    #[serde(default)]
    pub(super) nodes: Vec<RawSettings>,
    #[serde(default)]
    pub(super) node_sets: Vec<RawSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) name: Spanned<String>,
    pub(super) base: Spanned<String>,
    pub(super) base_sha256: Option<Spanned<String>>,
    pub(super) base_size: Option<Spanned<u64>>,
    pub(super) base_sha256sums: Option<Spanned<String>>,
    pub(super) base_signing_key: Option<Spanned<String>>,
    pub(super) overlays_dir: Option<Spanned<String>>,
}

/// The fields shared by `[defaults]`, each `[[nodes]]` entry (`name` only in nodes) and each
/// `[[node_sets]]` entry (`names` only in sets). Clone: each node of a set starts as a copy.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    pub(super) name: Option<Spanned<String>>,
    pub(super) names: Option<Spanned<String>>,
    pub(super) hostname: Option<Spanned<String>>,
    pub(super) domain: Option<Spanned<String>>,
    pub(super) address: Option<Spanned<String>>,
    pub(super) gateway: Option<Spanned<String>>,
    pub(super) dns: Option<Vec<Spanned<String>>>,
    pub(super) search: Option<Vec<Spanned<String>>>,
    pub(super) interface: Option<Spanned<String>>,
    pub(super) user: Option<Spanned<String>>,
    pub(super) ssh_keys: Option<Vec<Spanned<RawSshKey>>>,
    pub(super) password_hash: Option<Spanned<String>>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) target: Option<Spanned<Target>>,
    pub(super) decompress_kernel: Option<Spanned<bool>>,
    pub(super) overclock: Option<Spanned<Overclock>>,
    pub(super) config_txt: Option<BTreeMap<String, BTreeMap<String, Spanned<ConfigValue>>>>,
    pub(super) cmdline: Option<Vec<Spanned<String>>>,
    pub(super) kubernetes: Option<bool>,
    pub(super) overlays: Option<Vec<Spanned<String>>>,
    pub(super) user_data: Option<Spanned<toml::Table>>,
    pub(super) eeprom: Option<Spanned<RawEeprom>>,
    pub(super) partition_table: Option<Spanned<PartitionScheme>>,
}

/// An `ssh_keys` entry: an inline key or a key file, or a key with `authorized_keys` options.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum RawSshKey {
    /// `"ssh-ed25519 AAAA... me@host"` or `"keys/me.pub"`.
    Line(String),
    /// `{ key = "ssh-ed25519 AAAA... me@host", options = ["from=\"10.0.0.0/8\"", "no-pty"] }`.
    WithOptions(RawKeyWithOptions),
}

/// A key and the `authorized_keys` options the profile gives it explicitly.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyWithOptions {
    pub(super) key: String,
    pub(super) options: Vec<String>,
}

/// `eeprom = { boot_order = "0xf14", firmware = "...", recovery = "...", settings = { ... } }`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEeprom {
    pub(super) boot_order: Spanned<String>,
    pub(super) firmware: Option<Spanned<String>>,
    pub(super) recovery: Option<Spanned<String>>,
    pub(super) settings: Option<BTreeMap<String, Spanned<ConfigValue>>>,
}

/// config.txt values may be written as TOML strings, integers or booleans.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum ConfigValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl ConfigValue {
    pub(super) fn render(&self) -> String {
        match self {
            ConfigValue::Str(s) => s.clone(),
            ConfigValue::Int(i) => i.to_string(),
            ConfigValue::Bool(b) => u8::from(*b).to_string(),
        }
    }
}
