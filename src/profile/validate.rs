//! Validation: turns the raw TOML into a [`Profile`], checking every value and naming the file,
//! line:column and field of the first one that is wrong.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::{RawCluster, RawEeprom, RawProfile, RawSettings};
use super::rules::{
    is_config_key, is_config_section, is_domain, is_http_url, is_label, is_overlay_name,
    is_sha512_crypt, is_timezone, is_user_name, parse_cidr,
};
use super::{
    BaseSpec, EepromSpec, Node, Profile, ProfileError, RemoteBase, StaticAddress, Target,
    UBUNTU_20_04_5_SUMS_URL, UBUNTU_20_04_5_URL, line_col, sshkey,
};
use crate::bootconf::configtxt;
use crate::bootconf::eeprom::{self, BootOrder};

/// Checks one profile's text; holds what every error needs (file and text) and what relative
/// paths are resolved against (the profile's directory).
pub(super) struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    dir: &'a Path,
}

impl<'a> Validator<'a> {
    pub(super) fn new(path: &'a Path, text: &'a str) -> Validator<'a> {
        Validator {
            path,
            text,
            dir: path.parent().unwrap_or(Path::new(".")),
        }
    }
}

/// Pick the node's value if set, else the default's.
fn pick<'a, T>(node: &'a Option<T>, default: &'a Option<T>) -> Option<&'a T> {
    node.as_ref().or(default.as_ref())
}

impl Validator<'_> {
    fn err(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ProfileError {
        let (line, column) = line_col(self.text, span.start);
        ProfileError {
            file: self.path.to_owned(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    pub(super) fn profile(&self, raw: RawProfile) -> Result<Profile, ProfileError> {
        let cluster = raw.cluster.name.get_ref().clone();
        if !is_label(&cluster) {
            return Err(self.err(
                raw.cluster.name.span(),
                "cluster.name",
                format!("'{cluster}' is not a valid name (expected letters, digits and '-', 1-63 characters)"),
            ));
        }
        let base = self.base(&raw.cluster)?;
        let overlays_dir = match &raw.cluster.overlays_dir {
            Some(d) => self.dir.join(d.get_ref()),
            None => self.dir.join("../overlays"),
        };
        if let Some(name) = &raw.defaults.name {
            return Err(self.err(
                name.span(),
                "defaults.name",
                "a name belongs in [[nodes]], not in [defaults]",
            ));
        }
        if raw.nodes.is_empty() {
            return Err(self.err(
                0..0,
                "nodes",
                "the profile defines no nodes (expected at least one [[nodes]] table)",
            ));
        }
        let mut nodes = Vec::new();
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        let mut seen_hosts: HashMap<String, usize> = HashMap::new();
        let mut seen_addrs: HashMap<Ipv4Addr, usize> = HashMap::new();
        for (i, raw_node) in raw.nodes.iter().enumerate() {
            let at = |f: &str| format!("nodes[{i}].{f}");
            let node = self.node(i, raw_node, &raw.defaults, &overlays_dir)?;
            let name_span = raw_node.name.as_ref().map(|n| n.span()).unwrap_or(0..0);
            if let Some(j) = seen_names.insert(node.name.clone(), i) {
                return Err(self.err(
                    name_span,
                    at("name"),
                    format!("node name '{}' is already used by nodes[{j}]", node.name),
                ));
            }
            let host_span = raw_node
                .hostname
                .as_ref()
                .map(|h| h.span())
                .unwrap_or(name_span.clone());
            if let Some(j) = seen_hosts.insert(node.hostname.to_ascii_lowercase(), i) {
                return Err(self.err(
                    host_span,
                    at("hostname"),
                    format!("hostname '{}' is already used by nodes[{j}]", node.hostname),
                ));
            }
            if let Some(net) = &node.network {
                let span = raw_node
                    .address
                    .as_ref()
                    .map(|a| a.span())
                    .unwrap_or(name_span);
                if let Some(j) = seen_addrs.insert(net.address, i) {
                    return Err(self.err(
                        span,
                        at("address"),
                        format!("address {} is already used by nodes[{j}]", net.address),
                    ));
                }
            }
            nodes.push(node);
        }
        Ok(Profile {
            path: self.path.to_owned(),
            cluster,
            base,
            overlays_dir,
            nodes,
        })
    }

    fn base(&self, cluster: &RawCluster) -> Result<BaseSpec, ProfileError> {
        let base = &cluster.base;
        let b = base.get_ref().trim();
        if b.is_empty() {
            return Err(self.err(
                base.span(),
                "cluster.base",
                "empty (expected \"ubuntu-20.04.5\", a URL or a path)",
            ));
        }
        let sha256 = match &cluster.base_sha256 {
            Some(h) => {
                let hex = h.get_ref().trim().to_ascii_lowercase();
                if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return Err(self.err(
                        h.span(),
                        "cluster.base_sha256",
                        format!("'{}' is not a sha256 (expected 64 hex digits)", h.get_ref()),
                    ));
                }
                Some(hex)
            }
            None => None,
        };
        let sums = match &cluster.base_sha256sums {
            Some(u) => {
                let url = u.get_ref().trim();
                if !is_http_url(url) {
                    return Err(self.err(
                        u.span(),
                        "cluster.base_sha256sums",
                        format!(
                            "'{url}' is not an http(s) URL (expected the SHA256SUMS file's URL)"
                        ),
                    ));
                }
                Some(url.to_string())
            }
            None => None,
        };
        let signing_key = match &cluster.base_signing_key {
            Some(k) => {
                let path = self.dir.join(k.get_ref());
                if !path.is_file() {
                    return Err(self.err(
                        k.span(),
                        "cluster.base_signing_key",
                        format!(
                            "'{}' is not a file (expected an OpenPGP public key, relative to the profile)",
                            path.display()
                        ),
                    ));
                }
                Some(path)
            }
            None => None,
        };
        let remote = |url: &str, default_sums: Option<&str>, release: Option<&str>| {
            let sha256sums = sums.clone().or(default_sums.map(str::to_string));
            if let Some(k) = &cluster.base_signing_key
                && sha256sums.is_none()
            {
                return Err(self.err(
                    k.span(),
                    "cluster.base_signing_key",
                    "signs SHA256SUMS, but this base has no base_sha256sums (it is verified by base_sha256 alone)",
                ));
            }
            if sha256.is_none() && sha256sums.is_none() {
                // A download nobody can verify is refused rather than trusted.
                return Err(self.err(
                    base.span(),
                    "cluster.base",
                    format!("URL '{url}' has nothing to verify it against (add base_sha256 = \"<64 hex digits>\" or base_sha256sums = \"<URL of SHA256SUMS>\")"),
                ));
            }
            let r = RemoteBase {
                url: url.to_string(),
                sha256: sha256.clone(),
                sha256sums,
                release: release.map(str::to_string),
                signing_key: signing_key.clone(),
            };
            if r.file_name().is_empty() {
                return Err(self.err(
                    base.span(),
                    "cluster.base",
                    format!("URL '{url}' does not end in a file name"),
                ));
            }
            Ok(BaseSpec::Url(r))
        };
        match b {
            "ubuntu-20.04.5" => remote(
                UBUNTU_20_04_5_URL,
                Some(UBUNTU_20_04_5_SUMS_URL),
                Some("Ubuntu 20.04.5"),
            ),
            _ if is_http_url(b) => remote(b, None, None),
            _ => {
                // Checksums verify downloads; a local file is the user's own.
                for (field, span) in [
                    (
                        "cluster.base_sha256",
                        cluster.base_sha256.as_ref().map(|s| s.span()),
                    ),
                    (
                        "cluster.base_sha256sums",
                        cluster.base_sha256sums.as_ref().map(|s| s.span()),
                    ),
                ] {
                    if let Some(span) = span {
                        return Err(self.err(
                            span,
                            field,
                            format!("only applies to a URL base, and base is the local file '{b}'"),
                        ));
                    }
                }
                Ok(BaseSpec::Path(self.dir.join(b)))
            }
        }
    }

    fn node(
        &self,
        i: usize,
        n: &RawSettings,
        d: &RawSettings,
        overlays_dir: &Path,
    ) -> Result<Node, ProfileError> {
        let at = |f: &str| format!("nodes[{i}].{f}");
        // Errors about a value name the table it came from: the node's or [defaults].
        let field = |f: &str, from_node: bool| {
            if from_node {
                at(f)
            } else {
                format!("defaults.{f}")
            }
        };

        let name = n.name.as_ref().ok_or_else(|| {
            self.err(
                0..0,
                at("name"),
                "missing (every [[nodes]] entry needs a name)",
            )
        })?;
        if !is_label(name.get_ref()) {
            return Err(self.err(name.span(), at("name"), format!("'{}' is not a valid node name (expected an RFC 1123 label: letters, digits, '-', 1-63 characters, not starting or ending with '-')", name.get_ref())));
        }
        let hostname = match pick(&n.hostname, &d.hostname) {
            Some(h) => {
                if !is_label(h.get_ref()) {
                    return Err(self.err(h.span(), field("hostname", n.hostname.is_some()), format!("'{}' is not a valid hostname (expected an RFC 1123 label: letters, digits, '-', 1-63 characters, not starting or ending with '-'; put the domain in `domain`)", h.get_ref())));
                }
                h.get_ref().clone()
            }
            None => name.get_ref().clone(),
        };
        let domain = match pick(&n.domain, &d.domain) {
            Some(dom) => {
                if !is_domain(dom.get_ref()) {
                    return Err(self.err(
                        dom.span(),
                        field("domain", n.domain.is_some()),
                        format!(
                            "'{}' is not a valid domain (expected dot-separated RFC 1123 labels)",
                            dom.get_ref()
                        ),
                    ));
                }
                Some(dom.get_ref().clone())
            }
            None => None,
        };
        let network = self.network(n, d, &field)?;
        let user = match pick(&n.user, &d.user) {
            Some(u) => {
                if !is_user_name(u.get_ref()) {
                    return Err(self.err(u.span(), field("user", n.user.is_some()), format!("'{}' is not a valid user name (expected lower-case letters, digits, '_' or '-', starting with a letter or '_', at most 32)", u.get_ref())));
                }
                u.get_ref().clone()
            }
            None => "ubuntu".into(),
        };
        let ssh_keys = match pick(&n.ssh_keys, &d.ssh_keys) {
            Some(keys) => self.ssh_keys(keys, &field("ssh_keys", n.ssh_keys.is_some()))?,
            None => Vec::new(),
        };
        let password_hash = match pick(&n.password_hash, &d.password_hash) {
            Some(h) => {
                if !is_sha512_crypt(h.get_ref()) {
                    return Err(self.err(h.span(), field("password_hash", n.password_hash.is_some()), "not a SHA-512-crypt hash (expected '$6$salt$hash' as printed by `mkpasswd -m sha-512`; plain passwords are never accepted)"));
                }
                Some(h.get_ref().clone())
            }
            None => None,
        };
        let timezone = match pick(&n.timezone, &d.timezone) {
            Some(tz) => {
                if !is_timezone(tz.get_ref()) {
                    return Err(self.err(
                        tz.span(),
                        field("timezone", n.timezone.is_some()),
                        format!(
                            "'{}' is not a timezone name (expected e.g. 'UTC' or 'Europe/Berlin')",
                            tz.get_ref()
                        ),
                    ));
                }
                Some(tz.get_ref().clone())
            }
            None => None,
        };
        let target = pick(&n.target, &d.target)
            .map(|t| *t.get_ref())
            .unwrap_or(Target::Sd);
        let decompress_kernel = match pick(&n.decompress_kernel, &d.decompress_kernel) {
            Some(dk) if *dk.get_ref() && target != Target::Ssd => {
                return Err(self.err(dk.span(), field("decompress_kernel", n.decompress_kernel.is_some()), "only applies to target = \"ssd\" (the SD boot path loads vmlinuz through U-Boot)"));
            }
            Some(dk) => *dk.get_ref(),
            None => false,
        };
        let overclock = match pick(&n.overclock, &d.overclock) {
            Some(oc) => {
                let v = *oc.get_ref();
                let f = field("overclock", n.overclock.is_some());
                if !(600..=3000).contains(&v.arm_freq) {
                    return Err(self.err(
                        oc.span(),
                        format!("{f}.arm_freq"),
                        format!("{} MHz is out of range (expected 600-3000)", v.arm_freq),
                    ));
                }
                if !(-16..=8).contains(&v.over_voltage) {
                    return Err(self.err(
                        oc.span(),
                        format!("{f}.over_voltage"),
                        format!("{} is out of range (expected -16..8)", v.over_voltage),
                    ));
                }
                if let Some(g) = v.gpu_freq.filter(|g| !(100..=1000).contains(g)) {
                    return Err(self.err(
                        oc.span(),
                        format!("{f}.gpu_freq"),
                        format!("{g} MHz is out of range (expected 100-1000)"),
                    ));
                }
                Some(v)
            }
            None => None,
        };
        let mut config_txt = BTreeMap::new();
        for (settings, from_node) in [(&d.config_txt, false), (&n.config_txt, true)] {
            for (section, keys) in settings.iter().flatten() {
                for (key, value) in keys {
                    let f = format!("{}.{section}.{key}", field("config_txt", from_node));
                    let rendered = value.get_ref().render();
                    if !is_config_section(section) {
                        return Err(self.err(value.span(), f, format!("'[{section}]' is not a config.txt section (expected e.g. all, pi4, cm4)")));
                    }
                    if !is_config_key(key) {
                        return Err(self.err(
                            value.span(),
                            f,
                            "not a config.txt key (expected letters, digits and '_')",
                        ));
                    }
                    if rendered.contains(['\n', '\r']) {
                        return Err(self.err(
                            value.span(),
                            f,
                            "the value contains a newline (config.txt takes one line per setting)",
                        ));
                    }
                    // Whatever else configtxt::set would refuse (e.g. surrounding spaces).
                    if !configtxt::is_writable(section, key, &rendered) {
                        return Err(self.err(
                            value.span(),
                            f,
                            format!("'{rendered}' cannot be written as a config.txt value (expected no leading or trailing spaces; initramfs/include need a value)"),
                        ));
                    }
                    config_txt
                        .entry(section.clone())
                        .or_insert_with(BTreeMap::new)
                        .insert(key.clone(), rendered);
                }
            }
        }
        let mut cmdline = Vec::new();
        for (tokens, from_node) in [(&d.cmdline, false), (&n.cmdline, true)] {
            for t in tokens.iter().flatten() {
                if t.get_ref().is_empty() || t.get_ref().chars().any(char::is_whitespace) {
                    return Err(self.err(t.span(), field("cmdline", from_node), format!("'{}' is not one kernel parameter (expected a single token without spaces or newlines, e.g. 'quiet' or 'key=value')", t.get_ref().escape_debug())));
                }
                cmdline.push(t.get_ref().clone());
            }
        }
        let kubernetes = n.kubernetes.or(d.kubernetes).unwrap_or(false);
        let mut overlays = Vec::new();
        for (list, from_node) in [(&d.overlays, false), (&n.overlays, true)] {
            for o in list.iter().flatten() {
                let f = field("overlays", from_node);
                if !is_overlay_name(o.get_ref()) {
                    return Err(self.err(
                        o.span(),
                        f,
                        format!(
                            "'{}' is not an overlay name (expected a directory name under {})",
                            o.get_ref(),
                            overlays_dir.display()
                        ),
                    ));
                }
                if !overlays_dir.join(o.get_ref()).is_dir() {
                    return Err(self.err(
                        o.span(),
                        f,
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
        let eeprom = match (&n.eeprom, &d.eeprom) {
            (Some(e), _) => Some(self.eeprom(e.get_ref(), &field("eeprom", true))?),
            (None, Some(e)) => Some(self.eeprom(e.get_ref(), &field("eeprom", false))?),
            (None, None) => None,
        };
        let user_data = match (&d.user_data, &n.user_data) {
            (None, None) => None,
            (Some(a), None) => Some(a.clone()),
            (None, Some(b)) => Some(b.clone()),
            (Some(a), Some(b)) => Some(merge_tables(a.clone(), b)),
        };
        Ok(Node {
            name: name.get_ref().clone(),
            hostname,
            domain,
            network,
            user,
            ssh_keys,
            password_hash,
            timezone,
            target,
            decompress_kernel,
            overclock,
            config_txt,
            cmdline,
            kubernetes,
            overlays,
            user_data,
            eeprom,
            partition_table: pick(&n.partition_table, &d.partition_table)
                .map(|p| *p.get_ref())
                .unwrap_or_default(),
        })
    }

    /// The node's EEPROM update: a strictly parsed boot order, checked settings, and firmware
    /// files relative to the profile that must exist (a missing `firmware` is reported by the
    /// build: downloading it is not available yet).
    fn eeprom(&self, e: &RawEeprom, f: &str) -> Result<EepromSpec, ProfileError> {
        let boot_order = BootOrder::parse(e.boot_order.get_ref()).map_err(|err| {
            self.err(
                e.boot_order.span(),
                format!("{f}.boot_order"),
                err.to_string(),
            )
        })?;
        let file =
            |p: &Option<Spanned<String>>, name: &str| -> Result<Option<PathBuf>, ProfileError> {
                let Some(p) = p else { return Ok(None) };
                let path = self.dir.join(p.get_ref());
                if !path.is_file() {
                    return Err(self.err(
                        p.span(),
                        format!("{f}.{name}"),
                        format!(
                            "{} not found (expected a file, relative to the profile)",
                            path.display()
                        ),
                    ));
                }
                Ok(Some(path))
            };
        let firmware = file(&e.firmware, "firmware")?;
        let recovery = file(&e.recovery, "recovery")?;
        let mut settings = Vec::new();
        for (key, value) in e.settings.iter().flatten() {
            let rendered = value.get_ref().render();
            eeprom::check_setting(key, &rendered).map_err(|err| {
                self.err(value.span(), format!("{f}.settings.{key}"), err.to_string())
            })?;
            settings.push((key.clone(), rendered));
        }
        Ok(EepromSpec {
            boot_order,
            settings,
            firmware,
            recovery,
        })
    }

    fn network(
        &self,
        n: &RawSettings,
        d: &RawSettings,
        field: &dyn Fn(&str, bool) -> String,
    ) -> Result<Option<StaticAddress>, ProfileError> {
        let Some(addr) = pick(&n.address, &d.address) else {
            if let Some(gw) = pick(&n.gateway, &d.gateway) {
                return Err(self.err(
                    gw.span(),
                    field("gateway", n.gateway.is_some()),
                    "a gateway needs a static `address` (a.b.c.d/nn) on the node",
                ));
            }
            return Ok(None);
        };
        let addr_field = field("address", n.address.is_some());
        let (address, prefix_len) = parse_cidr(addr.get_ref()).ok_or_else(|| {
            self.err(addr.span(), &addr_field, format!("'{}' is not an IPv4 address with prefix length (expected CIDR like 192.168.1.13/24)", addr.get_ref()))
        })?;
        let mask = if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - prefix_len)
        };
        let host_bits = u32::from(address) & !mask;
        if prefix_len <= 30 && (host_bits == 0 || host_bits == !mask) {
            return Err(self.err(addr.span(), &addr_field, format!("{address} is the network or broadcast address of /{prefix_len} (expected a host address)")));
        }
        let gateway = match pick(&n.gateway, &d.gateway) {
            Some(gw) => {
                let f = field("gateway", n.gateway.is_some());
                let g: Ipv4Addr = gw.get_ref().parse().map_err(|_| {
                    self.err(
                        gw.span(),
                        &f,
                        format!("'{}' is not an IPv4 address", gw.get_ref()),
                    )
                })?;
                if u32::from(g) & mask != u32::from(address) & mask {
                    return Err(self.err(
                        gw.span(),
                        &f,
                        format!(
                            "gateway {g} is outside the node's subnet {}/{prefix_len}",
                            Ipv4Addr::from(u32::from(address) & mask)
                        ),
                    ));
                }
                if g == address {
                    return Err(self.err(
                        gw.span(),
                        &f,
                        format!("gateway {g} is the node's own address"),
                    ));
                }
                Some(g)
            }
            None => None,
        };
        let mut dns = Vec::new();
        for s in pick(&n.dns, &d.dns).into_iter().flatten() {
            dns.push(s.get_ref().parse::<IpAddr>().map_err(|_| {
                self.err(
                    s.span(),
                    field("dns", n.dns.is_some()),
                    format!("'{}' is not an IP address", s.get_ref()),
                )
            })?);
        }
        let mut search = Vec::new();
        for s in pick(&n.search, &d.search).into_iter().flatten() {
            if !is_domain(s.get_ref()) {
                return Err(self.err(
                    s.span(),
                    field("search", n.search.is_some()),
                    format!("'{}' is not a valid domain", s.get_ref()),
                ));
            }
            search.push(s.get_ref().clone());
        }
        let interface = match pick(&n.interface, &d.interface) {
            Some(i) => {
                let ok = !i.get_ref().is_empty()
                    && i.get_ref().len() <= 15
                    && i.get_ref()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !ok {
                    return Err(self.err(i.span(), field("interface", n.interface.is_some()), format!("'{}' is not an interface name (expected e.g. eth0, at most 15 characters)", i.get_ref())));
                }
                i.get_ref().clone()
            }
            None => "eth0".into(),
        };
        Ok(Some(StaticAddress {
            interface,
            address,
            prefix_len,
            gateway,
            dns,
            search,
        }))
    }

    /// Each entry is an inline key or a file of keys relative to the profile.
    fn ssh_keys(&self, keys: &[Spanned<String>], field: &str) -> Result<Vec<String>, ProfileError> {
        let mut out = Vec::new();
        for k in keys {
            let entry = k.get_ref();
            if sshkey::looks_like_key(entry) {
                out.push(sshkey::parse(entry).map_err(|m| self.err(k.span(), field, m))?);
                continue;
            }
            let file = self.dir.join(entry);
            let text = std::fs::read_to_string(&file).map_err(|e| {
                self.err(k.span(), field, format!("cannot read key file {}: {e} (expected an inline key 'ssh-ed25519 AAAA...' or a .pub file relative to the profile)", file.display()))
            })?;
            let before = out.len();
            for (lineno, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                out.push(sshkey::parse(line).map_err(|m| ProfileError {
                    file: file.clone(),
                    line: lineno + 1,
                    column: 1,
                    field: field.into(),
                    message: m,
                })?);
            }
            if out.len() == before {
                return Err(self.err(
                    k.span(),
                    field,
                    format!("key file {} holds no keys", file.display()),
                ));
            }
        }
        Ok(out)
    }
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
