//! QEMU's user-mode network (slirp) laid out as the node's own LAN, so that the node's
//! network-config applies unchanged: the subnet is the node's, QEMU's host address is the node's
//! gateway (the default route then ends at QEMU), QEMU's DNS address is another free address in
//! the subnet, and the forwarded ssh port reaches the node's static address. `restrict=on` keeps
//! the guest off every network outside this machine.
//!
//! QEMU wants its host, DNS and first DHCP address distinct and inside the subnet (network and
//! broadcast addresses are accepted); a /31 or /32 leaves no room for them.

use std::net::Ipv4Addr;

use crate::profile::{StaticAddress, rules};

/// QEMU's defaults, used for a node that takes its address by DHCP.
const DEFAULT_NET: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 0);
const DEFAULT_PREFIX: u8 = 24;
const DEFAULT_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const DEFAULT_DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
const DEFAULT_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

/// Why the node's subnet cannot be QEMU's user network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlirpError {
    /// Too small a subnet for the node, QEMU's host address and its DNS address.
    #[error(
        "{address}/{prefix}: QEMU's user network needs three distinct addresses in the node's subnet (the node, its gateway as QEMU's host, QEMU's DNS); a /{prefix} has {count}"
    )]
    TooSmall {
        /// The node's address.
        address: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
        /// How many addresses the subnet has.
        count: u64,
    },
}

/// The user network for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlirpNet {
    /// The subnet's network address.
    pub net: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// QEMU's own address: the node's gateway.
    pub host: Ipv4Addr,
    /// QEMU's DNS address.
    pub dns: Ipv4Addr,
    /// The guest's address: the node's static address, or the one QEMU's DHCP hands out first.
    pub guest: Ipv4Addr,
    /// Whether the node has a static address (else it takes `guest` by DHCP).
    pub static_address: bool,
}

impl SlirpNet {
    /// The network for a node with `network` (a static address), or QEMU's defaults for DHCP.
    pub fn for_node(network: Option<&StaticAddress>) -> Result<SlirpNet, SlirpError> {
        let Some(n) = network else {
            return Ok(SlirpNet {
                net: DEFAULT_NET,
                prefix: DEFAULT_PREFIX,
                host: DEFAULT_HOST,
                dns: DEFAULT_DNS,
                guest: DEFAULT_GUEST,
                static_address: false,
            });
        };
        let prefix = n.prefix_len.min(32);
        let mask = rules::subnet_mask(prefix);
        let net = u32::from(n.address) & mask;
        let broadcast = net | !mask;
        let count = u64::from(!mask) + 1;
        let node = u32::from(n.address);
        let inside = |a: u32| a & mask == net;
        let too_small = || SlirpError::TooSmall {
            address: n.address,
            prefix,
            count,
        };
        // Every address of the subnet, usable ones first, then the network and broadcast
        // addresses, which QEMU also accepts for its own.
        let candidates = || {
            (net.saturating_add(1)..broadcast)
                .chain([broadcast, net])
                .take(4)
        };
        let host = match n.gateway.map(u32::from) {
            Some(g) if inside(g) && g != node => g,
            _ => candidates().find(|&a| a != node).ok_or_else(too_small)?,
        };
        let wanted_dns = n.dns.iter().find_map(|d| match d {
            std::net::IpAddr::V4(v4) => Some(u32::from(*v4)),
            std::net::IpAddr::V6(_) => None,
        });
        let dns = match wanted_dns {
            Some(d) if inside(d) && d != node && d != host => d,
            // The broadcast address first: no node or router ever has it.
            _ => [broadcast, net]
                .into_iter()
                .chain(candidates())
                .find(|&a| a != node && a != host)
                .ok_or_else(too_small)?,
        };
        Ok(SlirpNet {
            net: Ipv4Addr::from(net),
            prefix,
            host: Ipv4Addr::from(host),
            dns: Ipv4Addr::from(dns),
            guest: n.address,
            static_address: true,
        })
    }

    /// QEMU's `-netdev` value: this network, nothing reachable outside the machine, and
    /// `127.0.0.1:ssh_port` forwarded to the guest's port 22.
    pub fn netdev_arg(&self, id: &str, ssh_port: u16) -> String {
        format!(
            "user,id={id},net={}/{},host={},dns={},dhcpstart={},restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-{}:22",
            self.net, self.prefix, self.host, self.dns, self.guest, self.guest
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn node(addr: &str, prefix: u8, gateway: Option<&str>, dns: &[&str]) -> StaticAddress {
        StaticAddress {
            interface: "eth0".into(),
            address: addr.parse().unwrap(),
            prefix_len: prefix,
            gateway: gateway.map(|g| g.parse().unwrap()),
            dns: dns.iter().map(|d| d.parse::<IpAddr>().unwrap()).collect(),
            search: vec![],
        }
    }

    fn net(addr: &str, prefix: u8, gateway: Option<&str>, dns: &[&str]) -> SlirpNet {
        SlirpNet::for_node(Some(&node(addr, prefix, gateway, dns))).unwrap()
    }

    #[test]
    fn a_24_uses_the_gateway_and_the_nodes_dns() {
        let n = net("192.168.1.13", 24, Some("192.168.1.1"), &["192.168.1.2"]);
        assert_eq!(
            n.netdev_arg("n0", 2222),
            "user,id=n0,net=192.168.1.0/24,host=192.168.1.1,dns=192.168.1.2,dhcpstart=192.168.1.13,restrict=on,hostfwd=tcp:127.0.0.1:2222-192.168.1.13:22"
        );
    }

    #[test]
    fn dns_on_the_gateway_or_outside_the_subnet_moves_to_the_broadcast_address() {
        for dns in [
            &["192.168.1.1"][..],
            &["1.1.1.1"],
            &["2606:4700::1111"],
            &[],
        ] {
            let n = net("192.168.1.13", 24, Some("192.168.1.1"), dns);
            assert_eq!(n.dns, Ipv4Addr::new(192, 168, 1, 255), "{dns:?}");
            assert_eq!(n.host, Ipv4Addr::new(192, 168, 1, 1));
        }
        // The node's own address as its DNS server cannot be QEMU's.
        let n = net("192.168.1.13", 24, Some("192.168.1.1"), &["192.168.1.13"]);
        assert_eq!(n.dns, Ipv4Addr::new(192, 168, 1, 255));
    }

    #[test]
    fn a_30_fits_node_gateway_and_dns() {
        let n = net("10.9.8.6", 30, Some("10.9.8.5"), &["10.9.8.5"]);
        assert_eq!(
            (n.net, n.prefix, n.host, n.dns, n.guest),
            (
                Ipv4Addr::new(10, 9, 8, 4),
                30,
                Ipv4Addr::new(10, 9, 8, 5),
                Ipv4Addr::new(10, 9, 8, 7),
                Ipv4Addr::new(10, 9, 8, 6)
            )
        );
        // The node on the broadcast-side usable address, gateway first usable.
        let n = net("10.9.8.5", 30, Some("10.9.8.6"), &[]);
        assert_eq!(
            (n.host, n.dns),
            ("10.9.8.6".parse().unwrap(), "10.9.8.7".parse().unwrap())
        );
    }

    #[test]
    fn odd_subnets_and_unaligned_addresses() {
        // A /23 whose node sits in the upper half; the gateway in the lower.
        let n = net("172.16.5.200", 23, Some("172.16.4.1"), &["172.16.5.53"]);
        assert_eq!(n.net, Ipv4Addr::new(172, 16, 4, 0));
        assert_eq!(
            (n.host, n.dns),
            (
                "172.16.4.1".parse().unwrap(),
                "172.16.5.53".parse().unwrap()
            )
        );
        // A /27 in the middle of a /24.
        let n = net("192.168.7.77", 27, Some("192.168.7.94"), &[]);
        assert_eq!(n.net, Ipv4Addr::new(192, 168, 7, 64));
        assert_eq!(n.dns, Ipv4Addr::new(192, 168, 7, 95));
        // Everything distinct and inside, as QEMU demands.
        for (addr, prefix) in [
            ("10.0.0.1", 8),
            ("10.1.2.3", 16),
            ("10.1.2.3", 29),
            ("10.1.2.2", 30),
        ] {
            let n = net(addr, prefix, None, &[]);
            let inside =
                |a: Ipv4Addr| u32::from(a) & rules::subnet_mask(prefix) == u32::from(n.net);
            assert!(
                inside(n.host) && inside(n.dns) && inside(n.guest),
                "{addr}/{prefix}"
            );
            assert!(
                n.host != n.dns && n.host != n.guest && n.dns != n.guest,
                "{addr}/{prefix}"
            );
        }
    }

    #[test]
    fn no_gateway_takes_a_free_address() {
        let n = net("192.168.1.1", 24, None, &[]);
        assert_eq!(n.host, Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(n.dns, Ipv4Addr::new(192, 168, 1, 255));
    }

    #[test]
    fn a_31_or_32_is_refused() {
        for prefix in [31, 32] {
            let e = SlirpNet::for_node(Some(&node("10.0.0.0", prefix, Some("10.0.0.1"), &[])))
                .unwrap_err();
            assert!(e.to_string().contains("three distinct addresses"), "{e}");
        }
    }

    #[test]
    fn dhcp_gets_qemus_defaults() {
        let n = SlirpNet::for_node(None).unwrap();
        assert_eq!(
            n.netdev_arg("n0", 1),
            "user,id=n0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,dhcpstart=10.0.2.15,restrict=on,hostfwd=tcp:127.0.0.1:1-10.0.2.15:22"
        );
        assert!(!n.static_address);
    }
}
