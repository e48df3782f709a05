//! Validation of a profile as a whole: the cluster table, the base image and how it is
//! verified, the node list, and what must be unique across nodes. Each node's own fields are
//! checked in `fields`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::fields;
use super::nodeset::{MAX_NODES, NamePattern, nth_address};
use super::raw::{RawCluster, RawProfile, RawSettings};
use super::rules::{is_http_url, is_label, is_sha256_hex, parse_cidr, subnet_mask};
use super::{
    BaseSpec, Node, Profile, ProfileError, RemoteBase, UBUNTU_20_04_5_SUMS_URL, UBUNTU_20_04_5_URL,
    line_col,
};

/// Checks one profile's text; holds what every error needs (file and text) and what relative
/// paths are resolved against (the profile's directory).
pub(super) struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    /// Where relative paths in the profile start.
    pub(super) dir: &'a Path,
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

impl Validator<'_> {
    /// An error at `span` of the profile text.
    pub(super) fn err(
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
        if let Some(names) = &raw.defaults.names {
            return Err(self.err(
                names.span(),
                "defaults.names",
                "a names pattern belongs in [[node_sets]], not in [defaults]",
            ));
        }
        if raw.nodes.is_empty() && raw.node_sets.is_empty() {
            return Err(self.err(
                0..0,
                "nodes",
                "the profile defines no nodes (expected at least one [[nodes]] or [[node_sets]] table)",
            ));
        }
        let tables = self.node_tables(&raw)?;
        let mut nodes = Vec::with_capacity(tables.len());
        let mut seen = Seen::default();
        for (k, t) in tables.iter().enumerate() {
            let node = fields::node(self, &t.label, &t.raw, &raw.defaults, &overlays_dir)?;
            self.unique(&mut seen, k, &tables, &node)?;
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

    /// Every node's table in file order: each `[[nodes]]` entry as it is, and each node of a
    /// `[[node_sets]]` entry as a copy of the set's table with its own name and address.
    fn node_tables<'r>(&self, raw: &'r RawProfile) -> Result<Vec<NodeTable<'r>>, ProfileError> {
        let mut tables = Vec::new();
        for (i, node) in raw.nodes.iter().enumerate() {
            if let Some(names) = &node.names {
                return Err(self.err(
                    names.span(),
                    format!("nodes[{i}].names"),
                    "a names pattern belongs in [[node_sets]] (a [[nodes]] entry has one `name`)",
                ));
            }
            tables.push(NodeTable {
                label: format!("nodes[{i}]"),
                at: node.name.as_ref().map_or(0, |n| n.span().start),
                raw: Cow::Borrowed(node),
            });
        }
        let mut count = raw.nodes.len() as u64;
        for (i, set) in raw.node_sets.iter().enumerate() {
            self.node_set(i, set, &mut count, &mut tables)?;
        }
        // Stable: the nodes of a set share their position and keep their order.
        tables.sort_by_key(|t| t.at);
        Ok(tables)
    }

    /// The nodes of `set`, the `i`th `[[node_sets]]` entry, appended to `tables`; `count` is
    /// the number of nodes so far, bounded by [`MAX_NODES`] before any node is made.
    fn node_set<'r>(
        &self,
        i: usize,
        set: &'r RawSettings,
        count: &mut u64,
        tables: &mut Vec<NodeTable<'r>>,
    ) -> Result<(), ProfileError> {
        let table = format!("node_sets[{i}]");
        if let Some(name) = &set.name {
            return Err(self.err(
                name.span(),
                format!("{table}.name"),
                "a [[node_sets]] entry takes `names`, a pattern like \"w{001..960}\", not `name`",
            ));
        }
        let names = set.names.as_ref().ok_or_else(|| {
            self.err(
                0..0,
                format!("{table}.names"),
                "missing (every [[node_sets]] entry needs a pattern like names = \"w{001..960}\")",
            )
        })?;
        let pattern = NamePattern::parse(names.get_ref())
            .map_err(|m| self.err(names.span(), format!("{table}.names"), m))?;
        if *count + pattern.len() > MAX_NODES {
            return Err(self.err(
                names.span(),
                format!("{table}.names"),
                format!(
                    "'{}' makes {} nodes and the profile has {count} before it (expected at most {MAX_NODES} nodes in a profile)",
                    names.get_ref(),
                    pattern.len()
                ),
            ));
        }
        *count += pattern.len();
        // An address that does not parse is left to the address rule, which names the node.
        let first = set
            .address
            .as_ref()
            .and_then(|a| parse_cidr(a.get_ref()).map(|cidr| (a.span(), cidr)));
        for k in 0..pattern.len() {
            let name = pattern.name(k);
            let label = format!("{table} ({name})");
            let mut node = set.clone();
            node.names = None;
            node.name = Some(Spanned::new(names.span(), name));
            if let Some((span, (address, prefix_len))) = &first {
                let mine = nth_address(*address, *prefix_len, k).ok_or_else(|| {
                    let mask = subnet_mask(*prefix_len);
                    self.err(
                        span.clone(),
                        format!("{label}.address"),
                        format!(
                            "node {} of {} runs past the last host address of the subnet {}/{prefix_len} (the set starts at {address}; expected a first address with room for every node, or a larger subnet)",
                            k + 1,
                            pattern.len(),
                            Ipv4Addr::from(u32::from(*address) & mask),
                        ),
                    )
                })?;
                node.address = Some(Spanned::new(span.clone(), format!("{mine}/{prefix_len}")));
            }
            tables.push(NodeTable {
                label,
                at: names.span().start,
                raw: Cow::Owned(node),
            });
        }
        Ok(())
    }

    /// A node's name, hostname (case-insensitively) and address must not repeat an earlier
    /// node's. The error points at the node's own line for it, else at its name.
    fn unique(
        &self,
        seen: &mut Seen,
        k: usize,
        tables: &[NodeTable<'_>],
        node: &Node,
    ) -> Result<(), ProfileError> {
        let raw_node = &tables[k].raw;
        let name_span = raw_node.name.as_ref().map_or(0..0, |n| n.span());
        let own_span =
            |s: &Option<Spanned<String>>| s.as_ref().map_or(name_span.clone(), |s| s.span());
        let taken = |field: &str, span: Range<usize>, what: String, j: usize| {
            self.err(
                span,
                format!("{}.{field}", tables[k].label),
                format!("{what} is already used by {}", tables[j].label),
            )
        };
        if let Some(j) = seen.names.insert(node.name.clone(), k) {
            let what = format!("node name '{}'", node.name);
            return Err(taken("name", name_span.clone(), what, j));
        }
        if let Some(j) = seen.hosts.insert(node.hostname.to_ascii_lowercase(), k) {
            let what = format!("hostname '{}'", node.hostname);
            return Err(taken("hostname", own_span(&raw_node.hostname), what, j));
        }
        if let Some(net) = &node.network
            && let Some(j) = seen.addresses.insert(net.address, k)
        {
            let what = format!("address {}", net.address);
            return Err(taken("address", own_span(&raw_node.address), what, j));
        }
        Ok(())
    }

    fn base(&self, cluster: &RawCluster) -> Result<BaseSpec, ProfileError> {
        let b = cluster.base.get_ref().trim();
        if b.is_empty() {
            return Err(self.err(
                cluster.base.span(),
                "cluster.base",
                "empty (expected \"ubuntu-20.04.5\", a URL or a path)",
            ));
        }
        let sha256 = self.base_sha256(cluster)?;
        let sums = self.base_sha256sums(cluster)?;
        let signing_key = self.base_signing_key(cluster)?;
        let remote = |url: &str, default_sums: Option<&str>, release: Option<&str>| RemoteBase {
            url: url.to_string(),
            sha256: sha256.clone(),
            size: cluster.base_size.as_ref().map(|s| *s.get_ref()),
            sha256sums: sums.clone().or(default_sums.map(str::to_string)),
            release: release.map(str::to_string),
            signing_key: signing_key.clone(),
        };
        match b {
            "ubuntu-20.04.5" => self.remote(
                cluster,
                remote(
                    UBUNTU_20_04_5_URL,
                    Some(UBUNTU_20_04_5_SUMS_URL),
                    Some("Ubuntu 20.04.5"),
                ),
            ),
            _ if is_http_url(b) => self.remote(cluster, remote(b, None, None)),
            _ => self.local_base(cluster, b),
        }
    }

    fn base_sha256(&self, cluster: &RawCluster) -> Result<Option<String>, ProfileError> {
        let Some(h) = &cluster.base_sha256 else {
            return Ok(None);
        };
        let hex = h.get_ref().trim().to_ascii_lowercase();
        if !is_sha256_hex(&hex) {
            return Err(self.err(
                h.span(),
                "cluster.base_sha256",
                format!("'{}' is not a sha256 (expected 64 hex digits)", h.get_ref()),
            ));
        }
        Ok(Some(hex))
    }

    fn base_sha256sums(&self, cluster: &RawCluster) -> Result<Option<String>, ProfileError> {
        let Some(u) = &cluster.base_sha256sums else {
            return Ok(None);
        };
        let url = u.get_ref().trim();
        if !is_http_url(url) {
            return Err(self.err(
                u.span(),
                "cluster.base_sha256sums",
                format!("'{url}' is not an http(s) URL (expected the SHA256SUMS file's URL)"),
            ));
        }
        Ok(Some(url.to_string()))
    }

    fn base_signing_key(&self, cluster: &RawCluster) -> Result<Option<PathBuf>, ProfileError> {
        let Some(k) = &cluster.base_signing_key else {
            return Ok(None);
        };
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
        Ok(Some(path))
    }

    /// A download must be verifiable, and a signing key needs a `SHA256SUMS` to sign.
    fn remote(&self, cluster: &RawCluster, r: RemoteBase) -> Result<BaseSpec, ProfileError> {
        if let Some(k) = &cluster.base_signing_key
            && r.sha256sums.is_none()
        {
            return Err(self.err(
                k.span(),
                "cluster.base_signing_key",
                "signs SHA256SUMS, but this base has no base_sha256sums (it is verified by base_sha256 alone)",
            ));
        }
        if r.sha256.is_none() && r.sha256sums.is_none() {
            // A download nobody can verify is refused rather than trusted.
            return Err(self.err(
                cluster.base.span(),
                "cluster.base",
                format!("URL '{}' has nothing to verify it against (add base_sha256 = \"<64 hex digits>\" or base_sha256sums = \"<URL of SHA256SUMS>\")", r.url),
            ));
        }
        if r.file_name().is_empty() {
            return Err(self.err(
                cluster.base.span(),
                "cluster.base",
                format!("URL '{}' does not end in a file name", r.url),
            ));
        }
        Ok(BaseSpec::Url(r))
    }

    /// A local base file; checksums verify downloads, and a local file is the user's own.
    fn local_base(&self, cluster: &RawCluster, b: &str) -> Result<BaseSpec, ProfileError> {
        let spans = [
            (
                "cluster.base_sha256",
                cluster.base_sha256.as_ref().map(|v| v.span()),
            ),
            (
                "cluster.base_sha256sums",
                cluster.base_sha256sums.as_ref().map(|v| v.span()),
            ),
            (
                "cluster.base_size",
                cluster.base_size.as_ref().map(|v| v.span()),
            ),
        ];
        for (field, span) in spans {
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

/// One node's table: a `[[nodes]]` entry, or one node of a `[[node_sets]]` entry.
struct NodeTable<'r> {
    /// How errors name it: `nodes[2]`, or `node_sets[0] (w017)`.
    label: String,
    /// Where it starts in the file, for file order.
    at: usize,
    raw: Cow<'r, RawSettings>,
}

/// Which node (by its place in the node tables) first used each name, hostname and address.
#[derive(Default)]
struct Seen {
    names: HashMap<String, usize>,
    hosts: HashMap<String, usize>,
    addresses: HashMap<Ipv4Addr, usize>,
}
