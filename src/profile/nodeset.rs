//! `[[node_sets]]`: many nodes declared at once. A set's `names` pattern (`"w{001..960}"`) gives
//! each node its name, its `address` is the first node's (each next node takes the next
//! address), and every other field applies to each node. Pure: the validator turns each node of
//! a set into an ordinary node table and checks it like any other.

use std::net::Ipv4Addr;

use super::rules::subnet_mask;

/// The most nodes a profile may hold, sets included: far above the largest Pi clusters (about a
/// thousand boards), and low enough that a typo like `w{1..99999999}` is refused before any
/// node is made.
pub(super) const MAX_NODES: u64 = 10_000;

/// The most digits a counter may have: enough for [`MAX_NODES`] with any start, and small
/// enough that every counter fits in a `u64`.
const MAX_DIGITS: usize = 9;

/// A name pattern: `prefix{first..last}suffix`, the counter zero-padded to `width` digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NamePattern {
    prefix: String,
    first: u64,
    last: u64,
    width: usize,
    suffix: String,
}

impl NamePattern {
    /// Parse `names`; the error says what was expected. Counters with a leading zero
    /// (`{001..960}`) are zero-padded to the longer bound's width, as in the shell.
    pub(super) fn parse(s: &str) -> Result<NamePattern, String> {
        let expected = || {
            format!(
                "'{s}' is not a name pattern (expected a name with one counter, like \"w{{001..960}}\" for w001 to w960)"
            )
        };
        let (prefix, rest) = s.split_once('{').ok_or_else(expected)?;
        let (range, suffix) = rest.split_once('}').ok_or_else(expected)?;
        if suffix.contains(['{', '}']) || prefix.contains('}') {
            return Err(expected());
        }
        let (a, b) = range.split_once("..").ok_or_else(expected)?;
        let number = |t: &str| {
            (!t.is_empty() && t.len() <= MAX_DIGITS && t.bytes().all(|c| c.is_ascii_digit()))
                .then(|| t.parse::<u64>().ok())
                .flatten()
        };
        let (Some(first), Some(last)) = (number(a), number(b)) else {
            return Err(format!(
                "'{s}': the counter {{{range}}} is not two numbers of 1-{MAX_DIGITS} digits (expected e.g. {{001..960}})"
            ));
        };
        if first > last {
            return Err(format!(
                "'{s}': the counter {{{range}}} counts down (expected the first number to be at most the last)"
            ));
        }
        let padded = (a.len() > 1 && a.starts_with('0')) || (b.len() > 1 && b.starts_with('0'));
        Ok(NamePattern {
            prefix: prefix.to_string(),
            first,
            last,
            width: if padded { a.len().max(b.len()) } else { 0 },
            suffix: suffix.to_string(),
        })
    }

    /// How many names the pattern makes.
    pub(super) fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// The `k`th name (0-based), `k` below [`NamePattern::len`].
    pub(super) fn name(&self, k: u64) -> String {
        format!(
            "{}{:0width$}{}",
            self.prefix,
            self.first + k,
            self.suffix,
            width = self.width
        )
    }
}

/// The address `k` places after `first` (0-based), if it is still a host address of `first`'s
/// /`prefix_len` subnet: a set's range may not run onto the broadcast address or past it.
pub(super) fn nth_address(first: Ipv4Addr, prefix_len: u8, k: u64) -> Option<Ipv4Addr> {
    let start = u32::from(first);
    let n = start.checked_add(u32::try_from(k).ok()?)?;
    let mask = subnet_mask(prefix_len);
    // /31 and /32 have no broadcast address; elsewhere it is the subnet's end too.
    let broadcast = prefix_len <= 30 && n & !mask == !mask;
    (n & mask == start & mask && !broadcast).then(|| Ipv4Addr::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_expand_like_the_shell() {
        let p = NamePattern::parse("w{001..960}").unwrap();
        assert_eq!(p.len(), 960);
        assert_eq!(
            (p.name(0), p.name(16), p.name(959)),
            ("w001".into(), "w017".into(), "w960".into())
        );
        let p = NamePattern::parse("rack2-{8..11}-pi").unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(
            (p.name(0), p.name(3)),
            ("rack2-8-pi".into(), "rack2-11-pi".into())
        );
        assert_eq!(NamePattern::parse("n{0..0}").unwrap().name(0), "n0");
        assert_eq!(NamePattern::parse("n{1..0100}").unwrap().name(0), "n0001");
    }

    #[test]
    fn bad_patterns_say_what_was_expected() {
        for (bad, says) in [
            ("w001", "one counter"),
            ("w{1..3}{4..5}", "one counter"),
            ("w{1-3}", "one counter"),
            ("w}{1..3", "one counter"),
            ("w{a..3}", "two numbers"),
            ("w{..3}", "two numbers"),
            ("w{1..9999999999}", "two numbers"),
            ("w{5..3}", "counts down"),
        ] {
            let err = NamePattern::parse(bad).unwrap_err();
            assert!(err.contains(bad) && err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn addresses_stay_inside_the_subnet() {
        let a = Ipv4Addr::new(10, 1, 0, 11);
        assert_eq!(nth_address(a, 16, 0), Some(a));
        assert_eq!(nth_address(a, 16, 245), Some(Ipv4Addr::new(10, 1, 1, 0)));
        assert_eq!(nth_address(a, 24, 243), Some(Ipv4Addr::new(10, 1, 0, 254)));
        assert_eq!(nth_address(a, 24, 244), None);
        assert_eq!(nth_address(a, 24, 245), None);
        assert_eq!(nth_address(a, 32, 0), Some(a));
        assert_eq!(nth_address(a, 31, 1), None);
        assert_eq!(nth_address(Ipv4Addr::new(255, 255, 255, 254), 0, 2), None);
        assert_eq!(nth_address(a, 16, u64::MAX), None);
    }

    fn parse(text: &str) -> Result<crate::profile::Profile, String> {
        let head =
            "[cluster]\nname = \"big\"\nbase = \"base.img\"\n\n[defaults]\ntimezone = \"UTC\"\n";
        crate::profile::Profile::parse(std::path::Path::new("p.toml"), &format!("{head}{text}"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn sets_expand_in_file_order_with_their_fields() {
        let p = parse(
            "[[nodes]]\nname = \"ctl\"\naddress = \"10.1.0.2/16\"\n\n\
             [[node_sets]]\nnames = \"w{001..960}\"\naddress = \"10.1.0.11/16\"\ngateway = \"10.1.0.1\"\ntarget = \"ssd\"\n\n\
             [[nodes]]\nname = \"last\"\n",
        )
        .unwrap();
        assert_eq!(p.nodes.len(), 962);
        let names: Vec<&str> = p.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            (names[0], names[1], names[960], names[961]),
            ("ctl", "w001", "w960", "last")
        );
        let w017 = p.node("w017").unwrap();
        let net = w017.network.as_ref().unwrap();
        assert_eq!(
            (net.address, net.prefix_len),
            (Ipv4Addr::new(10, 1, 0, 27), 16)
        );
        assert_eq!(net.gateway, Some(Ipv4Addr::new(10, 1, 0, 1)));
        assert_eq!(
            (w017.hostname.as_str(), w017.target),
            ("w017", crate::profile::Target::Ssd)
        );
        // 10.1.0.11 + 959 crosses into 10.1.3.x: a /16 has room.
        let w960 = p.node("w960").unwrap().network.as_ref().unwrap().address;
        assert_eq!(w960, Ipv4Addr::new(10, 1, 3, 202));
    }

    #[test]
    fn set_errors_name_the_set_the_node_and_the_place() {
        let set = |body: &str| format!("[[node_sets]]\nnames = \"w{{01..20}}\"\n{body}");
        for (text, says) in [
            (
                set("address = \"10.1.0.250/24\"\n"),
                "p.toml:9:11: node_sets[0] (w06).address: node 6 of 20 runs past the last host address of the subnet 10.1.0.0/24",
            ),
            (
                set("address = \"10.1.0.240/24\"\n"),
                "node_sets[0] (w16).address: node 16 of 20 runs past the last host address",
            ),
            (
                set("address = \"10.1.0.0/16\"\n"),
                "node_sets[0] (w01).address: 10.1.0.0 is the network or broadcast address",
            ),
            (
                set("address = \"10.0.255.250/16\"\n"),
                "node_sets[0] (w06).address: node 6 of 20 runs past the last host address of the subnet 10.0.0.0/16",
            ),
            (
                set("address = \"10.1.0.1/16\"\ngateway = \"10.1.0.3\"\n"),
                "node_sets[0] (w03).address: 10.1.0.3 is the gateway's address",
            ),
            (
                set("address = \"10.1.0.2/16\"\ngateway = \"10.2.0.1\"\n"),
                "node_sets[0] (w01).gateway: gateway 10.2.0.1 is outside the node's subnet 10.1.0.0/16",
            ),
            (
                set("address = \"10.1.0.300/16\"\n"),
                "node_sets[0] (w01).address: '10.1.0.300/16' is not an IPv4 address",
            ),
            (
                set("hostname = \"same\"\n"),
                "node_sets[0] (w02).hostname: hostname 'same' is already used by node_sets[0] (w01)",
            ),
            (
                format!("[[nodes]]\nname = \"w05\"\n\n{}", set("")),
                "node_sets[0] (w05).name: node name 'w05' is already used by nodes[0]",
            ),
            (
                format!("{}\n[[nodes]]\nname = \"w05\"\n", set("")),
                "nodes[0].name: node name 'w05' is already used by node_sets[0] (w05)",
            ),
            (
                format!(
                    "[[nodes]]\nname = \"a\"\naddress = \"10.1.0.13/16\"\n\n{}",
                    set("address = \"10.1.0.11/16\"\n")
                ),
                "node_sets[0] (w03).address: address 10.1.0.13 is already used by nodes[0]",
            ),
            (
                set("name = \"x\"\n"),
                "node_sets[0].name: a [[node_sets]] entry takes `names`",
            ),
            (
                "[[node_sets]]\ntarget = \"sd\"\n".into(),
                "node_sets[0].names: missing",
            ),
            (
                "[[nodes]]\nnames = \"a{1..2}\"\n".into(),
                "nodes[0].names: a names pattern belongs in [[node_sets]]",
            ),
            (
                "[[node_sets]]\nnames = \"w{1..3}-\"\n".into(),
                "p.toml:8:9: node_sets[0] (w1-).name: 'w1-' is not a valid node name",
            ),
            (
                "[[node_sets]]\nnames = \"w{3..1}\"\n".into(),
                "p.toml:8:9: node_sets[0].names: 'w{3..1}': the counter {3..1} counts down",
            ),
            (
                set("target = \"floppy\"\n"),
                "p.toml:9:10: (syntax): unknown variant `floppy`",
            ),
        ] {
            let err = parse(&text).map(|_| ()).unwrap_err();
            assert!(err.contains(says), "{text}\n=> {err}\n(expected {says})");
        }
    }

    #[test]
    fn huge_sets_are_refused_before_any_node_is_made() {
        let started = std::time::Instant::now();
        let err = parse("[[node_sets]]\nnames = \"w{1..99999999}\"\n")
            .map(|_| ())
            .unwrap_err();
        assert!(
            err.contains("node_sets[0].names: 'w{1..99999999}' makes 99999999 nodes and the profile has 0 before it (expected at most 10000"),
            "{err}"
        );
        let err = parse("[[nodes]]\nname = \"a\"\n\n[[node_sets]]\nnames = \"b{1..6000}\"\n\n[[node_sets]]\nnames = \"c{1..4000}\"\n")
            .map(|_| ())
            .unwrap_err();
        assert!(err.contains("node_sets[1].names: 'c{1..4000}' makes 4000 nodes and the profile has 6001 before it"), "{err}");
        assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
        assert_eq!(
            parse("[[node_sets]]\nnames = \"n{1..10000}\"\n")
                .unwrap()
                .nodes
                .len(),
            10_000
        );
    }

    #[test]
    fn profiles_without_nodes_say_both_tables() {
        let err = parse("").map(|_| ()).unwrap_err();
        assert!(
            err.contains("expected at least one [[nodes]] or [[node_sets]] table"),
            "{err}"
        );
    }
}
