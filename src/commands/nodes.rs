//! `pi-image nodes`: the profile's nodes.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::cli::{Global, JsonArg};
use crate::profile::Profile;

/// Print the profile's nodes, as a table or (`--json`) as one JSON document.
pub fn nodes(global: &Global, args: JsonArg) -> anyhow::Result<()> {
    let profile = super::load_profile(&global.profile)?;
    if args.json {
        return super::print_json(&NodesJson::of(&profile));
    }
    print!("{}", table(&profile));
    Ok(())
}

/// `nodes --json` (fields in README, "JSON output").
#[derive(Serialize)]
struct NodesJson<'a> {
    profile: &'a Path,
    cluster: &'a str,
    nodes: Vec<NodeJson<'a>>,
}

/// One node of `nodes --json`.
#[derive(Serialize)]
struct NodeJson<'a> {
    name: &'a str,
    hostname: &'a str,
    fqdn: String,
    address: Option<String>,
    gateway: Option<String>,
    target: String,
    partition_table: String,
    overlays: &'a [String],
}

impl NodesJson<'_> {
    fn of(profile: &Profile) -> NodesJson<'_> {
        NodesJson {
            profile: &profile.path,
            cluster: &profile.cluster,
            nodes: profile
                .nodes
                .iter()
                .map(|n| NodeJson {
                    name: &n.name,
                    hostname: &n.hostname,
                    fqdn: n.fqdn(),
                    address: n.cidr(),
                    gateway: n
                        .network
                        .as_ref()
                        .and_then(|net| net.gateway)
                        .map(|g| g.to_string()),
                    target: n.target.to_string(),
                    partition_table: n.partition_table.to_string(),
                    overlays: &n.overlays,
                })
                .collect(),
        }
    }
}

/// A table of the profile's nodes: name, hostname, address, target and overlays.
fn table(profile: &Profile) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<24} {:<20} {:<6} overlays",
        "node", "hostname", "address", "target"
    );
    for n in &profile.nodes {
        let _ = writeln!(
            out,
            "{:<10} {:<24} {:<20} {:<6} {}",
            n.name,
            n.fqdn(),
            n.cidr().unwrap_or_else(|| "dhcp".into()),
            n.target.to_string(),
            n.overlays.join(",")
        );
    }
    out
}
