//! The booted node against what it should be: facts gathered over ssh, from the guest's disk
//! after shutdown or from the console, compared with the [`Expected`] values. Pure.

use std::net::Ipv4Addr;

use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::console::{ConsoleFacts, DefaultRoute, IfAddr};
use super::expect::Expected;
use super::slirp::SlirpNet;
use crate::profile::sshkey;

/// Where a fact was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A command run over ssh in the guest.
    Ssh,
    /// The guest's root file system after it shut down.
    Disk,
    /// The serial console.
    Console,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Ssh => "ssh",
            Source::Disk => "disk",
            Source::Console => "console",
        }
    }
}

/// cloud-init's own verdict (`result.json`: `{"v1": {"datasource": ..., "errors": [...]}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudInitResult {
    /// The datasource it used.
    pub datasource: String,
    /// The errors it recorded.
    pub errors: Vec<String>,
}

impl CloudInitResult {
    /// Read `result.json`; `None` when it is not that document.
    pub fn parse(json: &str) -> Option<CloudInitResult> {
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        let v1 = v.get("v1")?;
        Some(CloudInitResult {
            datasource: v1.get("datasource")?.as_str()?.to_owned(),
            errors: v1
                .get("errors")?
                .as_array()?
                .iter()
                .map(|e| match e.as_str() {
                    Some(s) => s.to_owned(),
                    None => e.to_string(),
                })
                .collect(),
        })
    }
}

/// Facts about the running node, each with where it was read.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The host name.
    pub hostname: Option<(String, Source)>,
    /// IPv4 addresses with their interfaces.
    pub addresses: Option<(Vec<IfAddr>, Source)>,
    /// Default routes.
    pub default_routes: Option<(Vec<DefaultRoute>, Source)>,
    /// The user's `authorized_keys`, as text.
    pub authorized_keys: Option<(String, Source)>,
    /// Why the keys could not be read (ssh refused, disk unreadable), if they could not.
    pub keys_problem: Option<String>,
    /// cloud-init's result.
    pub cloud_init: Option<(CloudInitResult, Source)>,
}

impl Facts {
    /// Fill what is still unknown from the console.
    pub fn fill_from_console(&mut self, c: &ConsoleFacts) {
        if self.hostname.is_none() {
            self.hostname = c.login_hostname.clone().map(|h| (h, Source::Console));
        }
        if self.addresses.is_none() && !c.addresses.is_empty() {
            self.addresses = Some((c.addresses.clone(), Source::Console));
        }
        if self.default_routes.is_none() && !c.addresses.is_empty() {
            // The route table is printed with the address table: an empty one is a fact too.
            self.default_routes = Some((c.default_routes.clone(), Source::Console));
        }
        if self.cloud_init.is_none()
            && let Some(ds) = &c.datasource
        {
            let result = CloudInitResult {
                datasource: ds.clone(),
                errors: Vec::new(),
            };
            self.cloud_init = Some((result, Source::Console));
        }
    }
}

/// One comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked: `cloud-init`, `hostname`, `address`, `route`, `keys`.
    pub name: &'static str,
    /// Whether it matched.
    pub ok: bool,
    /// What should be.
    pub expected: String,
    /// What was found (`unknown` when nothing could be read).
    pub found: String,
    /// Where it was read: `ssh`, `disk`, `console`, or empty when nowhere.
    pub source: &'static str,
}

/// Compare `facts` with `want`, in the order the report lists them.
pub fn compare(want: &Expected, net: &SlirpNet, facts: &Facts) -> Vec<Check> {
    vec![
        cloud_init(facts),
        hostname(want, facts),
        address(want, net, facts),
        route(want, net, facts),
        keys(want, facts),
    ]
}

fn check(
    name: &'static str,
    ok: bool,
    expected: String,
    found: String,
    source: Option<Source>,
) -> Check {
    Check {
        name,
        ok,
        expected,
        found,
        source: source.map_or("", Source::name),
    }
}

const UNKNOWN: &str = "unknown";
const NOCLOUD: &str = "DataSourceNoCloud";

fn cloud_init(facts: &Facts) -> Check {
    let expected = format!("done with {NOCLOUD}, no errors");
    let Some((r, source)) = &facts.cloud_init else {
        return check("cloud-init", false, expected, UNKNOWN.into(), None);
    };
    let datasource = r.datasource.split_whitespace().next().unwrap_or("");
    let ok = datasource == NOCLOUD && r.errors.is_empty();
    let mut found = format!("datasource {}", r.datasource);
    if !r.errors.is_empty() {
        found.push_str(&format!("; errors: {}", r.errors.join("; ")));
    } else if *source == Source::Console {
        found.push_str(" (errors not known from the console)");
    }
    check("cloud-init", ok, expected, found, Some(*source))
}

fn hostname(want: &Expected, facts: &Facts) -> Check {
    match &facts.hostname {
        Some((h, s)) => check(
            "hostname",
            *h == want.hostname,
            want.hostname.clone(),
            h.clone(),
            Some(*s),
        ),
        None => check(
            "hostname",
            false,
            want.hostname.clone(),
            UNKNOWN.into(),
            None,
        ),
    }
}

fn address(want: &Expected, net: &SlirpNet, facts: &Facts) -> Check {
    let iface = &want.interface;
    let expected = match &want.network {
        Some(n) => format!("{}/{} on {iface}", n.address, n.prefix_len),
        None => format!("an address by DHCP on {iface} ({} from QEMU)", net.guest),
    };
    let Some((addrs, source)) = &facts.addresses else {
        return check("address", false, expected, UNKNOWN.into(), None);
    };
    let on_iface: Vec<&IfAddr> = addrs.iter().filter(|a| a.device == *iface).collect();
    let ok = match &want.network {
        Some(n) => on_iface
            .iter()
            .any(|a| a.address == n.address && a.prefix == n.prefix_len),
        None => !on_iface.is_empty(),
    };
    let found = if on_iface.is_empty() {
        let others: Vec<String> = addrs
            .iter()
            .filter(|a| !a.address.is_loopback())
            .map(|a| format!("{}/{} on {}", a.address, a.prefix, a.device))
            .collect();
        if others.is_empty() {
            format!("no IPv4 address on {iface}")
        } else {
            format!("no IPv4 address on {iface}; {}", others.join(", "))
        }
    } else {
        on_iface
            .iter()
            .map(|a| format!("{}/{} on {}", a.address, a.prefix, a.device))
            .collect::<Vec<_>>()
            .join(", ")
    };
    check("address", ok, expected, found, Some(*source))
}

fn route(want: &Expected, net: &SlirpNet, facts: &Facts) -> Check {
    let iface = &want.interface;
    let gateway: Option<Ipv4Addr> = match &want.network {
        Some(n) => n.gateway,
        None => Some(net.host),
    };
    let expected = match gateway {
        Some(g) => format!("default via {g} dev {iface}"),
        None => "no default route".to_owned(),
    };
    let Some((routes, source)) = &facts.default_routes else {
        return check("route", false, expected, UNKNOWN.into(), None);
    };
    let ok = match gateway {
        Some(g) => routes.iter().any(|r| r.gateway == g && r.device == *iface),
        None => routes.is_empty(),
    };
    let found = if routes.is_empty() {
        "no default route".to_owned()
    } else {
        routes
            .iter()
            .map(|r| format!("default via {} dev {}", r.gateway, r.device))
            .collect::<Vec<_>>()
            .join(", ")
    };
    check("route", ok, expected, found, Some(*source))
}

fn keys(want: &Expected, facts: &Facts) -> Check {
    let user = &want.user;
    if want.keys.is_empty() {
        return check(
            "keys",
            true,
            format!("no ssh keys for {user}"),
            "none expected, not checked".into(),
            None,
        );
    }
    let expected = format!("{} ssh key(s) for {user}", want.keys.len());
    let Some((text, source)) = &facts.authorized_keys else {
        let why = facts.keys_problem.as_deref().unwrap_or(UNKNOWN);
        return check("keys", false, expected, why.to_owned(), None);
    };
    let present: Vec<(String, String)> = text.lines().filter_map(key_id).collect();
    let missing: Vec<String> = want
        .keys
        .iter()
        .filter(|k| key_id(k).is_none_or(|id| !present.contains(&id)))
        .map(|k| describe_key(k))
        .collect();
    let found = if missing.is_empty() {
        format!(
            "all {} in {user}'s authorized_keys ({} key(s) there)",
            want.keys.len(),
            present.len()
        )
    } else {
        format!(
            "missing from {user}'s authorized_keys: {}",
            missing.join(", ")
        )
    };
    check("keys", missing.is_empty(), expected, found, Some(*source))
}

/// A key's identity in an `authorized_keys` line (options before it allowed): type and data.
pub fn key_id(line: &str) -> Option<(String, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = (0..words.len()).find(|&i| sshkey::looks_like_key(words[i]))?;
    Some((words[at].to_owned(), words.get(at + 1)?.to_string()))
}

/// `TYPE SHA256:… (comment)` as `ssh-keygen -l` shows a key.
pub fn describe_key(line: &str) -> String {
    let Some((kind, data)) = key_id(line) else {
        return line.chars().take(40).collect();
    };
    let comment = line.split_whitespace().nth(2).unwrap_or("");
    let fingerprint = base64::engine::general_purpose::STANDARD
        .decode(&data)
        .map(|blob| base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&blob)))
        .unwrap_or_else(|_| "?".into());
    if comment.is_empty() {
        format!("{kind} SHA256:{fingerprint}")
    } else {
        format!("{kind} SHA256:{fingerprint} ({comment})")
    }
}

/// The facts in the output of [`SSH_FACTS`]: sections that start with `@@name`.
pub fn parse_ssh_facts(out: &str) -> Facts {
    let mut facts = Facts::default();
    let mut section = "";
    let mut body: Vec<(&str, String)> = Vec::new();
    for line in out.lines() {
        if let Some(name) = line.strip_prefix("@@") {
            section = name;
            body.push((section, String::new()));
        } else if let Some((_, text)) = body.last_mut()
            && !section.is_empty()
        {
            text.push_str(line);
            text.push('\n');
        }
    }
    for (name, text) in body {
        match name {
            "hostname" => {
                let h = text.trim();
                if !h.is_empty() {
                    facts.hostname = Some((h.to_owned(), Source::Ssh));
                }
            }
            "addr" => facts.addresses = Some((parse_ip_addr(&text), Source::Ssh)),
            "route" => facts.default_routes = Some((parse_ip_route(&text), Source::Ssh)),
            "keys" => facts.authorized_keys = Some((text, Source::Ssh)),
            "result" => {
                facts.cloud_init = CloudInitResult::parse(&text).map(|r| (r, Source::Ssh));
            }
            _ => {}
        }
    }
    facts
}

/// The shell commands whose output [`parse_ssh_facts`] reads; `{iface}` is replaced by the
/// interface name (checked by the caller to hold only `[A-Za-z0-9._-]`).
pub const SSH_FACTS: &str = "echo @@hostname; hostname; \
echo @@addr; ip -4 -o addr show dev {iface}; \
echo @@route; ip -4 route show default; \
echo @@keys; cat ~/.ssh/authorized_keys; \
echo @@result; cat /run/cloud-init/result.json; \
echo @@end";

/// `ip -4 -o addr show` lines: `2: eth0    inet 192.168.1.13/24 brd ... scope global eth0`.
fn parse_ip_addr(text: &str) -> Vec<IfAddr> {
    text.lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let device = words.get(1)?.trim_end_matches(':');
            let at = words.iter().position(|w| *w == "inet")?;
            let (address, prefix) = crate::profile::rules::parse_cidr(words.get(at + 1)?)?;
            Some(IfAddr {
                device: device.to_owned(),
                address,
                prefix,
            })
        })
        .collect()
}

/// `ip -4 route show default` lines: `default via 192.168.1.1 dev eth0 proto static`.
fn parse_ip_route(text: &str) -> Vec<DefaultRoute> {
    text.lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let after = |key: &str| {
                let at = words.iter().position(|w| *w == key)?;
                words.get(at + 1).copied()
            };
            Some(DefaultRoute {
                gateway: after("via")?.parse().ok()?,
                device: after("dev")?.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::StaticAddress;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINd3KpW+6WpO3uDAUX7LlKuqf4mtYxWOpRNi+byBhT/q sample";
    const OTHER: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx8sOVzYVu6pgNpw2gEZm6hOEiXsWTjOb8wyNc3P0CB alice@laptop";

    fn want(gateway: Option<&str>) -> Expected {
        Expected {
            source: "test".into(),
            hostname: "pi3".into(),
            network: Some(StaticAddress {
                interface: "eth0".into(),
                address: "192.168.1.13".parse().unwrap(),
                prefix_len: 24,
                gateway: gateway.map(|g| g.parse().unwrap()),
                dns: vec![],
                search: vec![],
            }),
            interface: "eth0".into(),
            user: "ubuntu".into(),
            keys: vec![KEY.into()],
        }
    }

    /// What `SSH_FACTS` printed on a booted test node.
    const SSH_OUT: &str = "@@hostname\npi3\n@@addr\n2: eth0    inet 192.168.1.13/24 brd 192.168.1.255 scope global eth0\\       valid_lft forever preferred_lft forever\n@@route\ndefault via 192.168.1.1 dev eth0 proto static \n@@keys\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINd3KpW+6WpO3uDAUX7LlKuqf4mtYxWOpRNi+byBhT/q sample\n@@result\n{\n \"v1\": {\n  \"datasource\": \"DataSourceNoCloud [seed=/dev/vda1][dsmode=net]\",\n  \"errors\": []\n }\n}\n@@end\n";

    fn run(want: &Expected, facts: &Facts) -> Vec<Check> {
        let net = SlirpNet::for_node(want.network.as_ref()).unwrap();
        compare(want, &net, facts)
    }

    #[test]
    fn a_good_node_over_ssh() {
        let facts = parse_ssh_facts(SSH_OUT);
        let checks = run(&want(Some("192.168.1.1")), &facts);
        assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
        assert!(checks.iter().all(|c| c.source == "ssh"));
        assert_eq!(checks[2].found, "192.168.1.13/24 on eth0");
        assert_eq!(checks[3].found, "default via 192.168.1.1 dev eth0");
    }

    #[test]
    fn each_mismatch_is_named() {
        let facts = parse_ssh_facts(SSH_OUT);
        // A profile whose gateway the node did not take.
        let checks = run(&want(Some("192.168.1.254")), &facts);
        let bad: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
        assert_eq!(bad, ["route"]);
        // Hostname, address and keys.
        let out = SSH_OUT
            .replace("\npi3\n", "\nubuntu\n")
            .replace("192.168.1.13/24", "192.168.1.99/24")
            .replace(&KEY[..40], &OTHER[..40]);
        let checks = run(&want(Some("192.168.1.1")), &parse_ssh_facts(&out));
        let bad: Vec<(&str, &str)> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| (c.name, c.found.as_str()))
            .collect();
        assert_eq!(bad[0], ("hostname", "ubuntu"));
        assert_eq!(bad[1], ("address", "192.168.1.99/24 on eth0"));
        assert_eq!(bad[2].0, "keys");
        assert!(bad[2].1.contains("(sample)"), "{}", bad[2].1);
    }

    #[test]
    fn cloud_init_errors_and_none_datasource_fail() {
        let out = SSH_OUT.replace(
            "\"errors\": []",
            "\"errors\": [\"('package-update-upgrade-install', RuntimeError('Failed to update'))\"]",
        );
        let c = &run(&want(Some("192.168.1.1")), &parse_ssh_facts(&out))[0];
        assert!(!c.ok);
        assert!(c.found.contains("Failed to update"), "{}", c.found);
        let out = SSH_OUT.replace(
            "DataSourceNoCloud [seed=/dev/vda1][dsmode=net]",
            "DataSourceNone",
        );
        assert!(!run(&want(Some("192.168.1.1")), &parse_ssh_facts(&out))[0].ok);
    }

    #[test]
    fn console_facts_fill_the_gaps_and_nothing_known_fails() {
        let mut facts = Facts::default();
        let checks = run(&want(Some("192.168.1.1")), &facts);
        assert!(
            checks.iter().all(|c| !c.ok && !c.found.is_empty()),
            "{checks:#?}"
        );
        facts.keys_problem = Some("ssh refused the key".into());
        facts.fill_from_console(&ConsoleFacts {
            login_hostname: Some("pi3".into()),
            addresses: vec![IfAddr {
                device: "eth0".into(),
                address: "192.168.1.13".parse().unwrap(),
                prefix: 24,
            }],
            default_routes: vec![],
            host_keys: vec![],
            datasource: Some("DataSourceNoCloud".into()),
        });
        let checks = run(&want(Some("192.168.1.1")), &facts);
        let oks: Vec<(&str, bool, &str)> =
            checks.iter().map(|c| (c.name, c.ok, c.source)).collect();
        assert_eq!(
            oks,
            [
                ("cloud-init", true, "console"),
                ("hostname", true, "console"),
                ("address", true, "console"),
                ("route", false, "console"),
                ("keys", false, "")
            ]
        );
        assert_eq!(checks[4].found, "ssh refused the key");
        // No gateway in the profile: no default route is right.
        assert!(run(&want(None), &facts)[3].ok);
    }

    #[test]
    fn keys_with_options_and_fingerprints() {
        assert_eq!(key_id(&format!("no-pty,command=\"x\" {KEY}")), key_id(KEY));
        assert_eq!(key_id("# comment"), None);
        // ssh-keygen -lf on the key gives this fingerprint.
        assert_eq!(
            describe_key(KEY),
            "ssh-ed25519 SHA256:pvaazsFUNqm7QSh318BApPINuHln6OPoP7s0HkTPmmA (sample)"
        );
    }

    #[test]
    fn dhcp_nodes_expect_any_address_and_qemus_route() {
        let mut w = want(None);
        w.network = None;
        let out = SSH_OUT
            .replace("192.168.1.13/24", "10.0.2.15/24")
            .replace("via 192.168.1.1", "via 10.0.2.2");
        let checks = run(&w, &parse_ssh_facts(&out));
        assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
        assert_eq!(checks[3].expected, "default via 10.0.2.2 dev eth0");
    }
}
