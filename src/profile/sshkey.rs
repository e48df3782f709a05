//! SSH public keys as they appear in `authorized_keys` / `*.pub` files: checked before they are
//! written into an image, so a typo'd or truncated key fails the build instead of locking the
//! user out of a node.

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

/// Why a key line is not a usable public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshKeyError {
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

/// True when `s` starts like an inline key rather than a file name.
pub fn looks_like_key(s: &str) -> bool {
    let first = s.split_whitespace().next().unwrap_or("");
    KNOWN_TYPES.contains(&first)
}

/// Check one public key line (`TYPE BASE64 [COMMENT]`): a known type, a base64 blob, and the key
/// type embedded at the start of the blob equal to the declared one. Returns the line, trimmed.
pub fn parse(line: &str) -> Result<String, SshKeyError> {
    let line = line.trim();
    let mut parts = line.splitn(3, char::is_whitespace);
    let kind = parts.next().unwrap_or("");
    let blob = parts.next().unwrap_or("").trim();
    if !KNOWN_TYPES.contains(&kind) {
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
}
