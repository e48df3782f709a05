//! SSH public keys as they appear in `authorized_keys` / `*.pub` files: checked before they are
//! written into an image, so a typo'd or truncated key fails the build instead of locking the
//! user out of a node, and a key line can never carry a second line or options nobody asked for.
//!
//! A key line is `TYPE BASE64 [COMMENT]` with no control character anywhere (a newline would
//! start another `authorized_keys` line). `authorized_keys` options (`from="..."`, `no-pty`,
//! `command="..."`) are taken only from the profile's explicit form
//! `{ key = "...", options = [...] }`, each option checked by [`check_option`].

use base64::Engine;

/// Key types OpenSSH accepts in `authorized_keys`.
const KNOWN_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

/// `authorized_keys` options that take no value (sshd(8), AUTHORIZED_KEYS FILE FORMAT).
const FLAG_OPTIONS: &[&str] = &[
    "agent-forwarding",
    "cert-authority",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-touch-required",
    "no-user-rc",
    "no-X11-forwarding",
    "port-forwarding",
    "pty",
    "restrict",
    "user-rc",
    "verify-required",
    "X11-forwarding",
];

/// `authorized_keys` options that take a quoted value: `name="value"`.
const VALUE_OPTIONS: &[&str] = &[
    "command",
    "environment",
    "expiry-time",
    "from",
    "permitlisten",
    "permitopen",
    "principals",
    "tunnel",
];

/// Why a key line is not a usable public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshKeyError {
    /// A control character (a newline would add another `authorized_keys` line).
    #[error("contains a control character ({0:?}); a key is one line of printable text")]
    Control(char),
    /// The line starts with `authorized_keys` options.
    #[error(
        "starts with authorized_keys options ('{0}'); options are only taken from the profile's \
         explicit form {{ key = \"TYPE BASE64 COMMENT\", options = [...] }}"
    )]
    Options(String),
    /// An option that is not one OpenSSH knows, or is written wrongly.
    #[error(
        "'{0}' is not an authorized_keys option (expected one of {flags}, or name=\"value\" for \
         {values}, the value without quotes, backslashes or control characters)",
        flags = FLAG_OPTIONS.join(", "),
        values = VALUE_OPTIONS.join(", ")
    )]
    BadOption(String),
    /// The type is not one OpenSSH accepts.
    #[error("unknown key type '{kind}' (expected one of {})", KNOWN_TYPES.join(", "))]
    UnknownType {
        /// The type given.
        kind: String,
    },
    /// Nothing after the type.
    #[error("{kind} key has no base64 key data")]
    NoData {
        /// The key type.
        kind: String,
    },
    /// The key data is not base64.
    #[error("{kind} key data is not valid base64 ({reason})")]
    NotBase64 {
        /// The key type.
        kind: String,
        /// What the decoder said.
        reason: String,
    },
    /// The key data is too short to hold its own type.
    #[error("{kind} key data is truncated (no key type inside)")]
    Truncated {
        /// The key type.
        kind: String,
    },
    /// The declared type and the type inside the data differ.
    #[error("key says '{kind}' but its data holds a '{embedded}' key")]
    TypeMismatch {
        /// The declared type.
        kind: String,
        /// The type inside the data.
        embedded: String,
    },
}

/// True when `s` holds a key type word (an inline key, perhaps preceded by options) rather than
/// naming a file.
pub fn looks_like_key(s: &str) -> bool {
    s.split_whitespace().any(|w| KNOWN_TYPES.contains(&w))
}

/// Check one public key line (`TYPE BASE64 [COMMENT]`): a known type, a base64 blob, and the key
/// type embedded at the start of the blob equal to the declared one. Returns the line, trimmed.
pub fn parse(line: &str) -> Result<String, SshKeyError> {
    let line = line.trim();
    if let Some(c) = line.chars().find(|c| c.is_control()) {
        return Err(SshKeyError::Control(c));
    }
    let mut parts = line.splitn(3, char::is_whitespace);
    let kind = parts.next().unwrap_or("");
    let blob = parts.next().unwrap_or("").trim();
    if !KNOWN_TYPES.contains(&kind) {
        // `opts TYPE BASE64`: options, spelled in the key itself.
        if line
            .split_whitespace()
            .skip(1)
            .any(|w| KNOWN_TYPES.contains(&w))
        {
            return Err(SshKeyError::Options(kind.into()));
        }
        return Err(SshKeyError::UnknownType { kind: kind.into() });
    }
    let kind = kind.to_string();
    if blob.is_empty() {
        return Err(SshKeyError::NoData { kind });
    }
    let bytes = match base64::engine::general_purpose::STANDARD.decode(blob) {
        Ok(b) => b,
        Err(e) => {
            let reason = e.to_string();
            return Err(SshKeyError::NotBase64 { kind, reason });
        }
    };
    let Some(embedded) = embedded_type(&bytes) else {
        return Err(SshKeyError::Truncated { kind });
    };
    if embedded != kind.as_bytes() {
        let embedded = String::from_utf8_lossy(embedded).into_owned();
        return Err(SshKeyError::TypeMismatch { kind, embedded });
    }
    Ok(line.to_string())
}

/// Check one `authorized_keys` option: a name OpenSSH knows, with a `"value"` exactly when the
/// option takes one, holding no `"`, backslash or control character (nothing that could end
/// the value early or start another option or line).
pub fn check_option(option: &str) -> Result<(), SshKeyError> {
    let bad = || SshKeyError::BadOption(option.escape_debug().to_string());
    match option.split_once('=') {
        None if FLAG_OPTIONS.contains(&option) => Ok(()),
        Some((name, quoted)) if VALUE_OPTIONS.contains(&name) => {
            let value = quoted
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .ok_or_else(bad)?;
            if value
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control())
            {
                return Err(bad());
            }
            Ok(())
        }
        _ => Err(bad()),
    }
}

/// The `authorized_keys` line for `key` (checked by [`parse`]) with `options` (each checked by
/// [`check_option`]): `opt1,opt2 TYPE BASE64 COMMENT`.
pub fn with_options(options: &[String], key: &str) -> String {
    if options.is_empty() {
        key.to_string()
    } else {
        format!("{} {key}", options.join(","))
    }
}

/// The key type string at the start of an SSH wire-format public key: a 32-bit big-endian length
/// followed by that many bytes.
fn embedded_type(blob: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    blob.get(4..4 + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEFCtJdy9yGz+CTDRfq53BkzJCnq05Isd9MPz6BjpKEI demo@pi-image";

    #[test]
    fn accepts_a_real_key_and_keeps_the_comment() {
        assert_eq!(parse(ED25519).unwrap(), ED25519);
        assert!(looks_like_key(ED25519));
        assert!(!looks_like_key("keys/demo.pub"));
    }

    #[test]
    fn rejects_mismatched_type_bad_base64_and_unknown_types() {
        let swapped = ED25519.replacen("ssh-ed25519", "ssh-rsa", 1);
        let error = |line: &str| parse(line).unwrap_err().to_string();
        assert!(error(&swapped).contains("holds a 'ssh-ed25519' key"));
        assert!(error("ssh-ed25519 AAAA!!!").contains("base64"));
        assert!(error("ssh-foo AAAA").contains("unknown key type"));
        assert!(error("ssh-ed25519").contains("no base64"));
        assert!(error("ssh-ed25519 AAAA").contains("truncated"));
    }

    #[test]
    fn a_newline_or_other_control_character_is_refused_anywhere() {
        let injected = format!("{ED25519}\ncommand=\"/bin/sh\" {ED25519}");
        assert_eq!(parse(&injected), Err(SshKeyError::Control('\n')));
        assert_eq!(
            parse(&format!("{ED25519} a\0b")),
            Err(SshKeyError::Control('\0'))
        );
        let with_opts = format!("command=\"/bin/sh\" {ED25519}");
        assert!(matches!(parse(&with_opts), Err(SshKeyError::Options(_))));
    }

    #[test]
    fn options_are_known_names_with_plain_quoted_values() {
        for ok in [
            "no-pty",
            "restrict",
            "from=\"10.0.0.0/8,192.168.1.*\"",
            "command=\"uptime\"",
        ] {
            assert_eq!(check_option(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "no-pty,command=\"/bin/sh\"",
            "from=10.0.0.0/8",
            "from=\"a\"b\"",
            "command=\"x\\\"\"",
            "command=\"a\nb\"",
            "no-pty=\"1\"",
            "pty ",
            "shell=\"x\"",
        ] {
            assert!(check_option(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            with_options(&["no-pty".into(), "from=\"10.0.0.1\"".into()], ED25519),
            format!("no-pty,from=\"10.0.0.1\" {ED25519}")
        );
    }
}
