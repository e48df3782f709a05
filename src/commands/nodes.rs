//! `pi-image nodes`: the profile's nodes.

use std::fmt::Write as _;

use crate::cli::Global;
use crate::profile::Profile;

/// Print a table of the profile's nodes.
pub fn nodes(global: &Global) -> anyhow::Result<()> {
    print!("{}", table(&super::load_profile(&global.profile)?));
    Ok(())
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
        let fqdn = match &n.domain {
            Some(d) => format!("{}.{d}", n.hostname),
            None => n.hostname.clone(),
        };
        let address = match &n.network {
            Some(net) => format!("{}/{}", net.address, net.prefix_len),
            None => "dhcp".into(),
        };
        let _ = writeln!(
            out,
            "{:<10} {:<24} {:<20} {:<6} {}",
            n.name,
            fqdn,
            address,
            n.target.to_string(),
            n.overlays.join(",")
        );
    }
    out
}
