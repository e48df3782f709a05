//! Pure checks on single profile values (names, domains, addresses, hashes): no spans, no
//! errors, so each rule can be read and tested on its own.

use std::net::Ipv4Addr;

pub(super) fn is_http_url(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://"))
        && !s.contains(char::is_whitespace)
        && s.split('/').nth(2).is_some_and(|host| !host.is_empty())
}

/// An RFC 1123 label: 1-63 letters, digits and hyphens, not starting or ending with a hyphen.
pub(super) fn is_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A plain directory name: no separators, no `..`, no hidden names.
pub(super) fn is_overlay_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

pub(super) fn is_domain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// A login name as `useradd` takes it: lower-case letter or `_` first, at most 32 characters.
pub fn is_user_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && s.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

pub(super) fn is_sha512_crypt(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("$6$") else {
        return false;
    };
    let rest = match rest.strip_prefix("rounds=") {
        Some(r) => match r.split_once('$') {
            Some((n, tail)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => tail,
            _ => return false,
        },
        None => rest,
    };
    let crypt_char = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'/';
    match rest.split_once('$') {
        Some((salt, hash)) => {
            (1..=16).contains(&salt.len())
                && salt.bytes().all(crypt_char)
                && hash.len() == 86
                && hash.bytes().all(crypt_char)
        }
        None => false,
    }
}

/// The first setting of cloud-init user-data that would put a plain-text password on the node,
/// as a path like `chpasswd.list[0]`: a top-level `password`, a `chpasswd` list entry or
/// `chpasswd.users` entry whose password is not a SHA-512-crypt hash (also `RANDOM`, which
/// prints one to the console, and `type: text`), and in `users` (or the old single `user`)
/// `plain_text_passwd`, or a `passwd`/`hashed_passwd` that is not a SHA-512-crypt hash.
pub(super) fn plain_password(user_data: &toml::Table) -> Option<String> {
    let hash = |v: &toml::Value| v.as_str().is_some_and(is_sha512_crypt);
    if user_data.contains_key("password") {
        return Some("password".into());
    }
    if let Some(chpasswd) = user_data.get("chpasswd").and_then(toml::Value::as_table) {
        // A list of `user:password`, or the same as one multi-line string.
        let lines: Vec<(String, Option<&str>)> = match chpasswd.get("list") {
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("chpasswd.list[{i}]"), v.as_str()))
                .collect(),
            Some(toml::Value::String(text)) => text
                .lines()
                .enumerate()
                .map(|(i, l)| (format!("chpasswd.list line {}", i + 1), Some(l)))
                .collect(),
            Some(_) => vec![("chpasswd.list".into(), None)],
            None => Vec::new(),
        };
        for (path, line) in lines {
            let pw = line.and_then(|l| l.split_once(':')).map(|(_, p)| p);
            if !pw.is_some_and(is_sha512_crypt) {
                return Some(path);
            }
        }
        let users = chpasswd.get("users").and_then(toml::Value::as_array);
        for (i, u) in users.into_iter().flatten().enumerate() {
            let typed_hash = u.get("type").is_none_or(|t| t.as_str() == Some("hash"));
            if !typed_hash || !u.get("password").is_some_and(hash) {
                return Some(format!("chpasswd.users[{i}]"));
            }
        }
    }
    let users = user_data.get("users").and_then(toml::Value::as_array);
    let entries = users
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, u)| (format!("users[{i}]"), u))
        .chain(user_data.get("user").map(|u| ("user".to_string(), u)));
    for (path, u) in entries {
        let Some(u) = u.as_table() else { continue };
        if u.contains_key("plain_text_passwd") {
            return Some(format!("{path}.plain_text_passwd"));
        }
        for key in ["passwd", "hashed_passwd"] {
            if u.get(key).is_some_and(|v| !hash(v)) {
                return Some(format!("{path}.{key}"));
            }
        }
    }
    None
}

pub(super) fn is_timezone(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('/')
        && !s.split('/').any(|p| p.is_empty() || p == "." || p == "..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c))
}

pub(super) fn is_config_section(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-_=:".contains(c))
}

pub(super) fn is_config_key(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A Linux interface name as `ip` takes it: at most 15 characters (IFNAMSIZ - 1).
pub fn is_interface_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// 64 hex digits (the caller lower-cases them).
pub(super) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// The netmask of a /`prefix_len` subnet, as a number (`prefix_len` at most 32).
pub fn subnet_mask(prefix_len: u8) -> u32 {
    // A shift by 32 would overflow.
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - prefix_len)
    }
}

/// `a.b.c.d/len` with `len` at most 32 and written without leading zeros.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    if len.to_string() != s.split_once('/')?.1 {
        return None; // no leading zeros or '+'
    }
    Some((addr.parse().ok()?, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_domains_and_hashes() {
        assert!(
            is_label("pi3")
                && is_label("node-01")
                && !is_label("-pi")
                && !is_label("pi_3")
                && !is_label("")
        );
        assert!(is_domain("cluster.lan") && !is_domain("a..b"));
        let hash = format!("$6$saltsalt${}", "a".repeat(86));
        assert!(is_sha512_crypt(&hash));
        assert!(is_sha512_crypt(&format!(
            "$6$rounds=5000$salt${}",
            "b".repeat(86)
        )));
        assert!(!is_sha512_crypt("hunter2") && !is_sha512_crypt("$5$salt$abc"));
        assert_eq!(
            parse_cidr("192.168.1.13/24"),
            Some((Ipv4Addr::new(192, 168, 1, 13), 24))
        );
        assert_eq!(parse_cidr("192.168.1.13/33"), None);
        assert_eq!(parse_cidr("192.168.1.13"), None);
        assert_eq!(parse_cidr("192.168.1.13/024"), None);
    }

    #[test]
    fn plain_passwords_in_user_data_are_found() {
        let hash = format!("$6$salt${}", "a".repeat(86));
        let found = |toml: &str| plain_password(&toml.parse::<toml::Table>().unwrap());
        for (text, path) in [
            ("password = \"hunter2\"", "password"),
            (
                "chpasswd = { list = [\"ubuntu:hunter2\"] }",
                "chpasswd.list[0]",
            ),
            (
                "chpasswd = { list = \"ubuntu:RANDOM\" }",
                "chpasswd.list line 1",
            ),
            (
                "chpasswd = { users = [{ name = \"u\", password = \"x\", type = \"text\" }] }",
                "chpasswd.users[0]",
            ),
            (
                "users = [{ name = \"u\", plain_text_passwd = \"x\" }]",
                "users[0].plain_text_passwd",
            ),
            (
                "users = [\"default\", { name = \"u\", passwd = \"x\" }]",
                "users[1].passwd",
            ),
            (
                "user = { name = \"u\", hashed_passwd = \"x\" }",
                "user.hashed_passwd",
            ),
        ] {
            assert_eq!(found(text).as_deref(), Some(path), "{text}");
        }
        for ok in [
            format!("chpasswd = {{ expire = false, list = [\"ubuntu:{hash}\"] }}"),
            format!("chpasswd = {{ users = [{{ name = \"u\", password = \"{hash}\" }}] }}"),
            format!("users = [\"default\", {{ name = \"u\", passwd = \"{hash}\" }}]"),
            "packages = [\"htop\"]".to_string(),
        ] {
            assert_eq!(found(&ok), None, "{ok}");
        }
    }

    #[test]
    fn masks_interfaces_and_digests() {
        assert_eq!(subnet_mask(0), 0);
        assert_eq!(subnet_mask(24), 0xffff_ff00);
        assert_eq!(subnet_mask(32), u32::MAX);
        assert!(is_interface_name("eth0") && is_interface_name("enp1s0.100"));
        assert!(!is_interface_name("") && !is_interface_name("a-very-long-name0"));
        assert!(!is_interface_name("eth 0") && !is_interface_name("eth0/1"));
        assert!(is_sha256_hex(&"ab".repeat(32)) && !is_sha256_hex(&"g".repeat(64)));
        assert!(!is_sha256_hex(&"a".repeat(63)));
    }
}
