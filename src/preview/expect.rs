//! What a booted node should show: from the profile's node, or, for an image given by path, from
//! the NoCloud seed in its boot partition (`meta-data`, `user-data`, `network-config`, as
//! pi-image and Ubuntu write them).

use std::net::{IpAddr, Ipv4Addr};

use serde_yaml_ng::{Mapping, Value};

use crate::profile::{Node, StaticAddress, rules};

/// The user Ubuntu's cloud-init calls `default`.
const DEFAULT_USER: &str = "ubuntu";

/// What the node should come up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Where this comes from, for the report (`profile node pi3`, `the image's cloud-init seed`).
    pub source: String,
    /// The host name.
    pub hostname: String,
    /// The static address; `None` for DHCP.
    pub network: Option<StaticAddress>,
    /// The interface the address goes on.
    pub interface: String,
    /// The login user.
    pub user: String,
    /// The user's ssh public keys, one `TYPE BASE64 [COMMENT]` line each.
    pub keys: Vec<String>,
}

/// Why the seed does not say what the node should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct SeedError {
    /// The seed file.
    pub file: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl Expected {
    /// What the profile says of `node`.
    pub fn from_node(node: &Node) -> Expected {
        Expected {
            source: format!("profile node {}", node.name),
            hostname: node.hostname.clone(),
            interface: node
                .network
                .as_ref()
                .map_or_else(|| "eth0".to_owned(), |n| n.interface.clone()),
            network: node.network.clone(),
            user: node.user.clone(),
            keys: node.ssh_keys.clone(),
        }
    }

    /// What the NoCloud seed files say (each `None` when missing).
    pub fn from_seed(
        meta_data: Option<&str>,
        user_data: Option<&str>,
        network_config: Option<&str>,
    ) -> Result<Expected, SeedError> {
        let meta = parse("meta-data", meta_data)?;
        let user = parse("user-data", user_data)?;
        let net = parse("network-config", network_config)?;
        let hostname = [(&user, "hostname"), (&meta, "local-hostname")]
            .into_iter()
            .find_map(|(doc, key)| doc.get(key).and_then(Value::as_str))
            .map(|h| h.split('.').next().unwrap_or(h).to_owned())
            .ok_or_else(|| SeedError {
                file: "meta-data",
                problem: "no local-hostname (nor a hostname in user-data)".into(),
            })?;
        let (user_name, keys) = user_and_keys(&user)?;
        let (interface, network) = network(&net)?;
        Ok(Expected {
            source: "the image's cloud-init seed".into(),
            hostname,
            network,
            interface,
            user: user_name,
            keys,
        })
    }
}

fn seed_err(file: &'static str, problem: impl Into<String>) -> SeedError {
    SeedError {
        file,
        problem: problem.into(),
    }
}

/// The file as a YAML mapping (empty when missing or empty).
fn parse(file: &'static str, text: Option<&str>) -> Result<Mapping, SeedError> {
    let Some(text) = text else {
        return Ok(Mapping::new());
    };
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(Value::Null) => Ok(Mapping::new()),
        Ok(_) => Err(seed_err(file, "is not a YAML mapping")),
        Err(e) => Err(seed_err(file, format!("is not YAML: {e}"))),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The first user cloud-init creates and the keys it gets: `users: [default]` (or no `users`)
/// is Ubuntu's `ubuntu`, who gets the top-level `ssh_authorized_keys`; a user given as a mapping
/// gets its own.
fn user_and_keys(user: &Mapping) -> Result<(String, Vec<String>), SeedError> {
    let top_keys = strings(user.get("ssh_authorized_keys"));
    let first = user
        .get("users")
        .and_then(Value::as_sequence)
        .and_then(|u| u.first());
    match first {
        None => Ok((DEFAULT_USER.into(), top_keys)),
        Some(Value::String(s)) if s == "default" => Ok((DEFAULT_USER.into(), top_keys)),
        Some(Value::Mapping(m)) => {
            let name = m
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| seed_err("user-data", "users[0] has no name"))?;
            if !rules::is_user_name(name) {
                return Err(seed_err(
                    "user-data",
                    format!("users[0].name {name:?} is not a user name"),
                ));
            }
            Ok((name.to_owned(), strings(m.get("ssh_authorized_keys"))))
        }
        Some(_) => Err(seed_err(
            "user-data",
            "users[0] is neither `default` nor a mapping with a name",
        )),
    }
}

/// The interface and its static address from a netplan-style (version 2) network-config, the
/// form with or without a top-level `network:`; DHCP (`None`) when it names no IPv4 address.
fn network(net: &Mapping) -> Result<(String, Option<StaticAddress>), SeedError> {
    let err = |p: &str| seed_err("network-config", p);
    let net = match net.get("network").and_then(Value::as_mapping) {
        Some(inner) => inner,
        None => net,
    };
    if net.is_empty() {
        return Ok(("eth0".into(), None));
    }
    if net.get("version").and_then(Value::as_u64) != Some(2) {
        return Err(err("only version 2 (netplan) network-config is read here"));
    }
    let Some((name, eth)) = net
        .get("ethernets")
        .and_then(Value::as_mapping)
        .and_then(|e| e.iter().next())
    else {
        return Ok(("eth0".into(), None));
    };
    let interface = name
        .as_str()
        .filter(|n| rules::is_interface_name(n))
        .ok_or_else(|| err("the first ethernet's name is not an interface name"))?
        .to_owned();
    let Some(eth) = eth.as_mapping() else {
        return Ok((interface, None));
    };
    let cidr = strings(eth.get("addresses"))
        .into_iter()
        .find_map(|a| rules::parse_cidr(&a));
    let Some((address, prefix_len)) = cidr else {
        return Ok((interface, None));
    };
    let route_via = eth
        .get("routes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(Value::as_mapping)
        .find(|r| {
            matches!(
                r.get("to").and_then(Value::as_str),
                Some("default" | "0.0.0.0/0")
            )
        })
        .and_then(|r| r.get("via").and_then(Value::as_str));
    let gateway = eth
        .get("gateway4")
        .and_then(Value::as_str)
        .or(route_via)
        .map(|g| {
            g.parse::<Ipv4Addr>()
                .map_err(|_| err(&format!("gateway {g:?} is not an IPv4 address")))
        })
        .transpose()?;
    let servers = eth.get("nameservers").and_then(Value::as_mapping);
    let dns = strings(servers.and_then(|s| s.get("addresses")))
        .iter()
        .filter_map(|d| d.parse::<IpAddr>().ok())
        .collect();
    Ok((
        interface.clone(),
        Some(StaticAddress {
            interface,
            address,
            prefix_len,
            gateway,
            dns,
            search: strings(servers.and_then(|s| s.get("search"))),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(case: &str, file: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/golden/cloudinit/{case}/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn seed(case: &str) -> Expected {
        Expected::from_seed(
            Some(&golden(case, "meta-data")),
            Some(&golden(case, "user-data")),
            Some(&golden(case, "network-config")),
        )
        .unwrap()
    }

    #[test]
    fn focal_default_user_static_address() {
        let e = seed("focal-default-static");
        assert_eq!((e.hostname.as_str(), e.user.as_str()), ("pi1", "ubuntu"));
        assert_eq!(e.keys.len(), 2);
        assert!(e.keys[0].starts_with("ssh-ed25519 AAAA"));
        let n = e.network.unwrap();
        assert_eq!(
            (n.interface.as_str(), n.address, n.prefix_len, n.gateway),
            (
                "eth0",
                Ipv4Addr::new(192, 168, 1, 11),
                24,
                Some(Ipv4Addr::new(192, 168, 1, 1))
            )
        );
        assert_eq!(n.dns.len(), 2);
    }

    #[test]
    fn jammy_routes_and_a_named_user() {
        let e = seed("jammy-static-hash");
        assert_eq!(
            e.network.unwrap().gateway,
            Some(Ipv4Addr::new(192, 168, 1, 1))
        );
        let e = seed("focal-custom-user-hash");
        assert_eq!(e.user, "alice");
        assert_eq!(e.keys.len(), 1);
    }

    #[test]
    fn dhcp_and_missing_files() {
        let e = seed("focal-dhcp");
        assert_eq!((e.interface.as_str(), e.network), ("eth0", None));
        let e = Expected::from_seed(Some("local-hostname: n1.lan\n"), None, None).unwrap();
        assert_eq!((e.hostname.as_str(), e.user.as_str()), ("n1", "ubuntu"));
        assert!(e.keys.is_empty());
        let err = Expected::from_seed(None, Some("#cloud-config\n"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "meta-data: no local-hostname (nor a hostname in user-data)"
        );
        let err = Expected::from_seed(
            Some("local-hostname: a"),
            None,
            Some("version: 1\nconfig: []\n"),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("network-config: only version 2"),
            "{err}"
        );
    }
}
