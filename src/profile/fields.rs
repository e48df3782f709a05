//! One node's fields. A node's value for a field comes from its own `[[nodes]]` table or from
//! `[defaults]`: [`Fields::pick`] makes that choice once and returns a [`Picked`] that knows
//! which table the value came from, so each field's rule below only says what is wrong with the
//! value, and its error names `nodes[i].F` or `defaults.F`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::{ConfigValue, RawEeprom, RawKeyWithOptions, RawSettings, RawSshKey};
use super::rules::{
    is_config_key, is_config_section, is_domain, is_interface_name, is_label, is_overlay_name,
    is_sha512_crypt, is_timezone, is_user_name, parse_cidr, plain_password, subnet_mask,
};
use super::validate::Validator;
use super::{
    EepromSpec, Node, Overclock, PartitionScheme, ProfileError, StaticAddress, Target, sshkey,
};
use crate::bootconf::configtxt;
use crate::bootconf::eeprom::{self, BootOrder};

/// Check the fields of the node whose table errors call `table` (`nodes[2]`, `node_sets[0]
/// (w017)`), each taken from `node` or else `defaults`.
pub(super) fn node(
    v: &Validator<'_>,
    table: &str,
    node: &RawSettings,
    defaults: &RawSettings,
    overlays_dir: &Path,
) -> Result<Node, ProfileError> {
    let f = Fields {
        v,
        table,
        node,
        defaults,
    };
    let name = f.name()?;
    let target = f
        .pick("target", |s| &s.target)
        .map_or(Target::Sd, |t| *t.get());
    // Written in the order the fields are checked: the first error in it is reported.
    Ok(Node {
        hostname: f.hostname(&name)?,
        domain: f.domain()?,
        network: f.network()?,
        user: f.user()?,
        ssh_keys: f.ssh_keys()?,
        password_hash: f.password_hash()?,
        timezone: f.timezone()?,
        decompress_kernel: f.decompress_kernel(target)?,
        overclock: f.overclock()?,
        config_txt: f.config_txt()?,
        cmdline: f.cmdline()?,
        kubernetes: node.kubernetes.or(defaults.kubernetes).unwrap_or(false),
        overlays: f.overlays(overlays_dir)?,
        eeprom: f.eeprom()?,
        user_data: f.user_data()?,
        partition_table: f
            .pick("partition_table", |s| &s.partition_table)
            .map_or(PartitionScheme::default(), |p| *p.get()),
        name,
        target,
    })
}

/// A node's value for one field, and the field it is reported under: `nodes[i].F` (or
/// `node_sets[i] (name).F`) when the node sets it, `defaults.F` when it comes from `[defaults]`, so an error points at the table
/// the user has to edit.
struct Picked<'a, T> {
    v: &'a Validator<'a>,
    value: &'a T,
    field: String,
}

impl<T> Picked<'_, T> {
    /// An error about part of the value (a list entry) at `span`.
    fn err_at(&self, span: Range<usize>, message: impl Into<String>) -> ProfileError {
        self.v.err(span, &self.field, message)
    }

    /// An error about `sub` inside the value (`overclock.arm_freq`), at `span`.
    fn err_in(&self, sub: &str, span: Range<usize>, message: impl Into<String>) -> ProfileError {
        self.v.err(span, format!("{}.{sub}", self.field), message)
    }
}

impl<'a, T> Picked<'a, Spanned<T>> {
    fn get(&self) -> &'a T {
        self.value.get_ref()
    }

    fn span(&self) -> Range<usize> {
        self.value.span()
    }

    /// An error about the whole value.
    fn err(&self, message: impl Into<String>) -> ProfileError {
        self.err_at(self.span(), message)
    }
}

/// One node's table and `[defaults]`, checked field by field.
struct Fields<'a> {
    v: &'a Validator<'a>,
    /// How errors name the node's table: `nodes[i]` or `node_sets[i] (name)`.
    table: &'a str,
    node: &'a RawSettings,
    defaults: &'a RawSettings,
}

/// A static address: the picked `address` value, the address and its prefix length.
type StaticPick<'a> = (Picked<'a, Spanned<String>>, Ipv4Addr, u8);

/// Reads one field of a `[defaults]` or `[[nodes]]` table.
type Get<T> = fn(&RawSettings) -> &Option<T>;

impl<'a> Fields<'a> {
    /// `nodes[i].f`.
    fn at(&self, f: &str) -> String {
        format!("{}.{f}", self.table)
    }

    fn in_node<T>(&self, f: &str, get: Get<T>) -> Option<Picked<'a, T>> {
        get(self.node).as_ref().map(|value| Picked {
            v: self.v,
            value,
            field: self.at(f),
        })
    }

    fn in_defaults<T>(&self, f: &str, get: Get<T>) -> Option<Picked<'a, T>> {
        get(self.defaults).as_ref().map(|value| Picked {
            v: self.v,
            value,
            field: format!("defaults.{f}"),
        })
    }

    /// The node's value for `f` if it sets one, else the default's: the node's replaces it.
    fn pick<T>(&self, f: &str, get: Get<T>) -> Option<Picked<'a, T>> {
        self.in_node(f, get).or_else(|| self.in_defaults(f, get))
    }

    /// Both tables' values for `f`, the default's first: for fields where the node's adds to it.
    fn both<T: 'a>(&self, f: &str, get: Get<T>) -> impl Iterator<Item = Picked<'a, T>> {
        self.in_defaults(f, get)
            .into_iter()
            .chain(self.in_node(f, get))
    }

    /// The picked string for `f`, if `ok` accepts it; `wrong` says what is wrong with it.
    fn string(
        &self,
        f: &str,
        get: Get<Spanned<String>>,
        ok: fn(&str) -> bool,
        wrong: impl FnOnce(&str) -> String,
    ) -> Result<Option<String>, ProfileError> {
        let Some(p) = self.pick(f, get) else {
            return Ok(None);
        };
        if !ok(p.get()) {
            return Err(p.err(wrong(p.get())));
        }
        Ok(Some(p.get().clone()))
    }

    /// The picked list for `f`, each entry converted by `parse`; `wrong` says what is wrong with
    /// the first entry it refuses.
    fn list<U>(
        &self,
        f: &str,
        get: Get<Vec<Spanned<String>>>,
        parse: impl Fn(&str) -> Option<U>,
        wrong: impl FnOnce(&str) -> String,
    ) -> Result<Vec<U>, ProfileError> {
        let Some(list) = self.pick(f, get) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for s in list.value {
            match parse(s.get_ref()) {
                Some(u) => out.push(u),
                None => return Err(list.err_at(s.span(), wrong(s.get_ref()))),
            }
        }
        Ok(out)
    }

    /// `name`: required, and only in `[[nodes]]` (the profile checks `[defaults]` has none).
    fn name(&self) -> Result<String, ProfileError> {
        let name = self.in_node("name", |s| &s.name).ok_or_else(|| {
            self.v.err(
                0..0,
                self.at("name"),
                "missing (every [[nodes]] entry needs a name)",
            )
        })?;
        if !is_label(name.get()) {
            return Err(name.err(format!("'{}' is not a valid node name (expected an RFC 1123 label: letters, digits, '-', 1-63 characters, not starting or ending with '-')", name.get())));
        }
        Ok(name.get().clone())
    }

    /// `hostname`: defaults to the node's name.
    fn hostname(&self, name: &str) -> Result<String, ProfileError> {
        let hostname = self.string("hostname", |s| &s.hostname, is_label, |h| {
            format!("'{h}' is not a valid hostname (expected an RFC 1123 label: letters, digits, '-', 1-63 characters, not starting or ending with '-'; put the domain in `domain`)")
        })?;
        Ok(hostname.unwrap_or_else(|| name.to_owned()))
    }

    fn domain(&self) -> Result<Option<String>, ProfileError> {
        self.string(
            "domain",
            |s| &s.domain,
            is_domain,
            |d| format!("'{d}' is not a valid domain (expected dot-separated RFC 1123 labels)"),
        )
    }

    /// `user`: defaults to `ubuntu`, the image's own user.
    fn user(&self) -> Result<String, ProfileError> {
        let user = self.string("user", |s| &s.user, is_user_name, |u| {
            format!("'{u}' is not a valid user name (expected lower-case letters, digits, '_' or '-', starting with a letter or '_', at most 32)")
        })?;
        Ok(user.unwrap_or_else(|| "ubuntu".into()))
    }

    /// `password_hash`: the message never repeats the value, which may be a plain password.
    fn password_hash(&self) -> Result<Option<String>, ProfileError> {
        self.string("password_hash", |s| &s.password_hash, is_sha512_crypt, |_| {
            "not a SHA-512-crypt hash (expected '$6$salt$hash' as printed by `mkpasswd -m sha-512`; plain passwords are never accepted)".into()
        })
    }

    fn timezone(&self) -> Result<Option<String>, ProfileError> {
        self.string(
            "timezone",
            |s| &s.timezone,
            is_timezone,
            |tz| format!("'{tz}' is not a timezone name (expected e.g. 'UTC' or 'Europe/Berlin')"),
        )
    }

    /// `address` makes the node static; the rest of the network settings only apply then,
    /// so without it they are not checked (except a gateway, which would be silently lost).
    fn network(&self) -> Result<Option<StaticAddress>, ProfileError> {
        let Some((picked, address, prefix_len)) = self.address()? else {
            return Ok(None);
        };
        let gateway = self.gateway(&picked, address, prefix_len)?;
        let dns = self.dns()?;
        let search = self.search()?;
        let interface = self.interface()?;
        Ok(Some(StaticAddress {
            interface,
            address,
            prefix_len,
            gateway,
            dns,
            search,
        }))
    }

    /// `address`: a host address with its prefix length (and where it came from), `None` for
    /// DHCP.
    fn address(&self) -> Result<Option<StaticPick<'a>>, ProfileError> {
        let Some(addr) = self.pick("address", |s| &s.address) else {
            if let Some(gw) = self.pick("gateway", |s| &s.gateway) {
                return Err(gw.err("a gateway needs a static `address` (a.b.c.d/nn) on the node"));
            }
            return Ok(None);
        };
        let (address, prefix_len) = parse_cidr(addr.get()).ok_or_else(|| {
            addr.err(format!("'{}' is not an IPv4 address with prefix length (expected CIDR like 192.168.1.13/24)", addr.get()))
        })?;
        let mask = subnet_mask(prefix_len);
        let host_bits = u32::from(address) & !mask;
        // /31 and /32 have no network or broadcast address.
        if prefix_len <= 30 && (host_bits == 0 || host_bits == !mask) {
            return Err(addr.err(format!("{address} is the network or broadcast address of /{prefix_len} (expected a host address)")));
        }
        Ok(Some((addr, address, prefix_len)))
    }

    /// `gateway`: inside the node's subnet, and not the node itself. That collision is reported
    /// at the node's address (which names the node, also one of a set) unless the address too
    /// comes from `[defaults]`.
    fn gateway(
        &self,
        addr: &Picked<'a, Spanned<String>>,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<Option<Ipv4Addr>, ProfileError> {
        let Some(gw) = self.pick("gateway", |s| &s.gateway) else {
            return Ok(None);
        };
        let g: Ipv4Addr = gw
            .get()
            .parse()
            .map_err(|_| gw.err(format!("'{}' is not an IPv4 address", gw.get())))?;
        let mask = subnet_mask(prefix_len);
        if u32::from(g) & mask != u32::from(address) & mask {
            return Err(gw.err(format!(
                "gateway {g} is outside the node's subnet {}/{prefix_len}",
                Ipv4Addr::from(u32::from(address) & mask)
            )));
        }
        if g == address {
            return Err(addr.err(format!(
                "{address} is the gateway's address (expected an address other than the gateway {g})"
            )));
        }
        Ok(Some(g))
    }

    fn dns(&self) -> Result<Vec<IpAddr>, ProfileError> {
        self.list(
            "dns",
            |s| &s.dns,
            |a| a.parse().ok(),
            |a| format!("'{a}' is not an IP address"),
        )
    }

    fn search(&self) -> Result<Vec<String>, ProfileError> {
        self.list(
            "search",
            |s| &s.search,
            |d| is_domain(d).then(|| d.to_owned()),
            |d| format!("'{d}' is not a valid domain"),
        )
    }

    /// `interface`: defaults to `eth0`.
    fn interface(&self) -> Result<String, ProfileError> {
        let interface = self.string(
            "interface",
            |s| &s.interface,
            is_interface_name,
            |i| {
                format!(
                    "'{i}' is not an interface name (expected e.g. eth0, at most 15 characters)"
                )
            },
        )?;
        Ok(interface.unwrap_or_else(|| "eth0".into()))
    }

    /// `ssh_keys`: each entry an inline key or a file of keys relative to the profile, or a
    /// `{ key, options }` table, the only place `authorized_keys` options are taken from.
    fn ssh_keys(&self) -> Result<Vec<String>, ProfileError> {
        let Some(keys) = self.pick("ssh_keys", |s| &s.ssh_keys) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for k in keys.value {
            let wrong = |e: sshkey::SshKeyError| keys.err_at(k.span(), e.to_string());
            match k.get_ref() {
                RawSshKey::Line(line) if sshkey::looks_like_key(line) => {
                    out.push(sshkey::parse(line).map_err(wrong)?);
                }
                RawSshKey::Line(file) => out.extend(self.key_file(&keys, k.span(), file)?),
                RawSshKey::WithOptions(RawKeyWithOptions { key, options }) => {
                    let key = sshkey::parse(key).map_err(wrong)?;
                    for o in options {
                        sshkey::check_option(o).map_err(wrong)?;
                    }
                    out.push(sshkey::with_options(options, &key));
                }
            }
        }
        Ok(out)
    }

    /// The keys in the file `name` (at `span` of the profile). A bad key is reported at its
    /// line in that file; a file without keys is an error, as it is surely not what was meant.
    fn key_file(
        &self,
        keys: &Picked<'_, Vec<Spanned<RawSshKey>>>,
        span: Range<usize>,
        name: &str,
    ) -> Result<Vec<String>, ProfileError> {
        let file = self.v.dir.join(name);
        let text = std::fs::read_to_string(&file).map_err(|e| {
            keys.err_at(span.clone(), format!("cannot read key file {}: {e} (expected an inline key 'ssh-ed25519 AAAA...' or a .pub file relative to the profile)", file.display()))
        })?;
        let mut out = Vec::new();
        for (lineno, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(sshkey::parse(line).map_err(|e| ProfileError {
                file: file.clone(),
                line: lineno + 1,
                column: 1,
                field: keys.field.clone(),
                message: e.to_string(),
            })?);
        }
        if out.is_empty() {
            return Err(keys.err_at(span, format!("key file {} holds no keys", file.display())));
        }
        Ok(out)
    }

    /// `decompress_kernel`: only the SSD boot path can boot a `vmlinux`.
    fn decompress_kernel(&self, target: Target) -> Result<bool, ProfileError> {
        let Some(dk) = self.pick("decompress_kernel", |s| &s.decompress_kernel) else {
            return Ok(false);
        };
        if *dk.get() && target != Target::Ssd {
            return Err(dk.err(
                "only applies to target = \"ssd\" (the SD boot path loads vmlinuz through U-Boot)",
            ));
        }
        Ok(*dk.get())
    }

    fn overclock(&self) -> Result<Option<Overclock>, ProfileError> {
        let Some(oc) = self.pick("overclock", |s| &s.overclock) else {
            return Ok(None);
        };
        let v = *oc.get();
        if !(600..=3000).contains(&v.arm_freq) {
            return Err(oc.err_in(
                "arm_freq",
                oc.span(),
                format!("{} MHz is out of range (expected 600-3000)", v.arm_freq),
            ));
        }
        if !(-16..=8).contains(&v.over_voltage) {
            return Err(oc.err_in(
                "over_voltage",
                oc.span(),
                format!("{} is out of range (expected -16..8)", v.over_voltage),
            ));
        }
        if let Some(g) = v.gpu_freq.filter(|g| !(100..=1000).contains(g)) {
            return Err(oc.err_in(
                "gpu_freq",
                oc.span(),
                format!("{g} MHz is out of range (expected 100-1000)"),
            ));
        }
        Ok(Some(v))
    }

    /// `config_txt`: the node's settings merge into the defaults' key by key.
    fn config_txt(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>, ProfileError> {
        let mut config_txt = BTreeMap::new();
        for table in self.both("config_txt", |s| &s.config_txt) {
            for (section, keys) in table.value {
                for (key, value) in keys {
                    let rendered = config_setting(&table, section, key, value)?;
                    config_txt
                        .entry(section.clone())
                        .or_insert_with(BTreeMap::new)
                        .insert(key.clone(), rendered);
                }
            }
        }
        Ok(config_txt)
    }

    /// `cmdline`: the defaults' tokens, then the node's.
    fn cmdline(&self) -> Result<Vec<String>, ProfileError> {
        let mut cmdline = Vec::new();
        for tokens in self.both("cmdline", |s| &s.cmdline) {
            for t in tokens.value {
                // The kernel splits cmdline.txt at blanks and treats `"` as quoting, so either
                // would turn one profile entry into other parameters; control characters
                // (NUL ends the line for the firmware) have no place in it either.
                let bad = |c: char| c.is_whitespace() || c.is_control() || c == '"';
                if t.get_ref().is_empty() || t.get_ref().chars().any(bad) {
                    return Err(tokens.err_at(t.span(), format!("'{}' is not one kernel parameter (expected a single token without spaces, quotes or control characters, e.g. 'quiet' or 'key=value')", t.get_ref().escape_debug())));
                }
                cmdline.push(t.get_ref().clone());
            }
        }
        Ok(cmdline)
    }

    /// `overlays`: the defaults' names, then the node's, each once; each must be a directory.
    fn overlays(&self, overlays_dir: &Path) -> Result<Vec<String>, ProfileError> {
        let mut overlays = Vec::new();
        for list in self.both("overlays", |s| &s.overlays) {
            for o in list.value {
                if !is_overlay_name(o.get_ref()) {
                    return Err(list.err_at(
                        o.span(),
                        format!(
                            "'{}' is not an overlay name (expected a directory name under {})",
                            o.get_ref(),
                            overlays_dir.display()
                        ),
                    ));
                }
                if !overlays_dir.join(o.get_ref()).is_dir() {
                    return Err(list.err_at(
                        o.span(),
                        format!(
                            "overlay '{}' not found (expected a directory {})",
                            o.get_ref(),
                            overlays_dir.join(o.get_ref()).display()
                        ),
                    ));
                }
                if !overlays.contains(o.get_ref()) {
                    overlays.push(o.get_ref().clone());
                }
            }
        }
        Ok(overlays)
    }

    /// `eeprom`: a strictly parsed boot order, checked settings, and firmware files relative to
    /// the profile that must exist (a missing `firmware` is reported by the build: downloading
    /// it is not available yet). A node's table replaces the defaults' as a whole.
    fn eeprom(&self) -> Result<Option<EepromSpec>, ProfileError> {
        let Some(e) = self.pick("eeprom", |s| &s.eeprom) else {
            return Ok(None);
        };
        let raw = e.get();
        let boot_order = BootOrder::parse(raw.boot_order.get_ref())
            .map_err(|err| e.err_in("boot_order", raw.boot_order.span(), err.to_string()))?;
        let firmware = self.eeprom_file(&e, "firmware", &raw.firmware)?;
        let recovery = self.eeprom_file(&e, "recovery", &raw.recovery)?;
        let mut settings = Vec::new();
        for (key, value) in raw.settings.iter().flatten() {
            let rendered = value.get_ref().render();
            eeprom::check_setting(key, &rendered).map_err(|err| {
                e.err_in(&format!("settings.{key}"), value.span(), err.to_string())
            })?;
            settings.push((key.clone(), rendered));
        }
        Ok(Some(EepromSpec {
            boot_order,
            settings,
            firmware,
            recovery,
        }))
    }

    fn eeprom_file(
        &self,
        e: &Picked<'_, Spanned<RawEeprom>>,
        name: &str,
        p: &Option<Spanned<String>>,
    ) -> Result<Option<PathBuf>, ProfileError> {
        let Some(p) = p else { return Ok(None) };
        let path = self.v.dir.join(p.get_ref());
        if !path.is_file() {
            return Err(e.err_in(
                name,
                p.span(),
                format!(
                    "{} not found (expected a file, relative to the profile)",
                    path.display()
                ),
            ));
        }
        Ok(Some(path))
    }

    /// `user_data`: the node's table merges into the defaults'. Plain-text passwords are
    /// refused like a `password_hash` that is not a hash.
    fn user_data(&self) -> Result<Option<toml::Table>, ProfileError> {
        let mut merged: Option<toml::Table> = None;
        for table in self.both("user_data", |s| &s.user_data) {
            if let Some(path) = plain_password(table.get()) {
                return Err(table.err(format!(
                    "{path} sets a plain-text password (expected a SHA-512-crypt hash '$6$salt$hash' from `mkpasswd -m sha-512`, or the node's password_hash; plain passwords are never accepted)"
                )));
            }
            merged = Some(match merged {
                None => table.get().clone(),
                Some(base) => merge_tables(base, table.get()),
            });
        }
        Ok(merged)
    }
}

/// One `config_txt.<section>.<key>` setting, rendered as it will be written.
fn config_setting<T>(
    table: &Picked<'_, T>,
    section: &str,
    key: &str,
    value: &Spanned<ConfigValue>,
) -> Result<String, ProfileError> {
    let wrong = |message: String| table.err_in(&format!("{section}.{key}"), value.span(), message);
    let rendered = value.get_ref().render();
    if !is_config_section(section) {
        return Err(wrong(format!(
            "'[{section}]' is not a config.txt section (expected e.g. all, pi4, cm4)"
        )));
    }
    if !is_config_key(key) {
        return Err(wrong(
            "not a config.txt key (expected letters, digits and '_')".into(),
        ));
    }
    if rendered.contains(['\n', '\r']) {
        return Err(wrong(
            "the value contains a newline (config.txt takes one line per setting)".into(),
        ));
    }
    if rendered.chars().any(char::is_control) {
        return Err(wrong(format!(
            "'{}' contains a control character (expected printable text)",
            rendered.escape_debug()
        )));
    }
    // Whatever else configtxt::set would refuse (e.g. surrounding spaces).
    if !configtxt::is_writable(section, key, &rendered) {
        return Err(wrong(format!(
            "'{rendered}' cannot be written as a config.txt value (expected no leading or trailing spaces; initramfs/include need a value)"
        )));
    }
    Ok(rendered)
}

/// Merge `over` into `base`: tables merge recursively, anything else is replaced.
fn merge_tables(mut base: toml::Table, over: &toml::Table) -> toml::Table {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => {
                let merged = merge_tables(std::mem::take(b), o);
                *b = merged;
            }
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    base
}
