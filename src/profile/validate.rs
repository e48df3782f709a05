//! Validation of a profile as a whole: the cluster table, the base image and how it is
//! verified, the node list, and what must be unique across nodes. Each node's own fields are
//! checked in `fields`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::fields;
use super::raw::{RawCluster, RawProfile, RawSettings};
use super::rules::{is_http_url, is_label, is_sha256_hex};
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
        if raw.nodes.is_empty() {
            return Err(self.err(
                0..0,
                "nodes",
                "the profile defines no nodes (expected at least one [[nodes]] table)",
            ));
        }
        let mut nodes = Vec::new();
        let mut seen = Seen::default();
        for (i, raw_node) in raw.nodes.iter().enumerate() {
            let node = fields::node(self, i, raw_node, &raw.defaults, &overlays_dir)?;
            self.unique(&mut seen, i, raw_node, &node)?;
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

    /// A node's name, hostname (case-insensitively) and address must not repeat an earlier
    /// node's. The error points at the node's own line for it, else at its name.
    fn unique(
        &self,
        seen: &mut Seen,
        i: usize,
        raw_node: &RawSettings,
        node: &Node,
    ) -> Result<(), ProfileError> {
        let name_span = raw_node.name.as_ref().map_or(0..0, |n| n.span());
        let own_span =
            |s: &Option<Spanned<String>>| s.as_ref().map_or(name_span.clone(), |s| s.span());
        let taken = |field: &str, span: Range<usize>, what: String, j: usize| {
            self.err(
                span,
                format!("nodes[{i}].{field}"),
                format!("{what} is already used by nodes[{j}]"),
            )
        };
        if let Some(j) = seen.names.insert(node.name.clone(), i) {
            let what = format!("node name '{}'", node.name);
            return Err(taken("name", name_span.clone(), what, j));
        }
        if let Some(j) = seen.hosts.insert(node.hostname.to_ascii_lowercase(), i) {
            let what = format!("hostname '{}'", node.hostname);
            return Err(taken("hostname", own_span(&raw_node.hostname), what, j));
        }
        if let Some(net) = &node.network
            && let Some(j) = seen.addresses.insert(net.address, i)
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

/// Which node first used each name, hostname and address.
#[derive(Default)]
struct Seen {
    names: HashMap<String, usize>,
    hosts: HashMap<String, usize>,
    addresses: HashMap<Ipv4Addr, usize>,
}
