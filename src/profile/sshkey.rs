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

/// True when `s` starts like an inline key rather than a file name.
pub fn looks_like_key(s: &str) -> bool {
    let first = s.split_whitespace().next().unwrap_or("");
    KNOWN_TYPES.contains(&first)
}

/// Check one public key line (`TYPE BASE64 [COMMENT]`): a known type, a base64 blob, and the key
/// type embedded at the start of the blob equal to the declared one. Returns the line, trimmed.
pub fn parse(line: &str) -> Result<String, String> {
    let line = line.trim();
    let mut parts = line.splitn(3, char::is_whitespace);
    let kind = parts.next().unwrap_or("");
    let blob = parts.next().unwrap_or("").trim();
    if !KNOWN_TYPES.contains(&kind) {
        return Err(format!(
            "unknown key type '{}' (expected one of {})",
            kind,
            KNOWN_TYPES.join(", ")
        ));
    }
    if blob.is_empty() {
        return Err(format!("{kind} key has no base64 key data"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|e| format!("{kind} key data is not valid base64 ({e})"))?;
    let embedded = embedded_type(&bytes)
        .ok_or_else(|| format!("{kind} key data is truncated (no key type inside)"))?;
    if embedded != kind.as_bytes() {
        return Err(format!(
            "key says '{kind}' but its data holds a '{}' key",
            String::from_utf8_lossy(embedded)
        ));
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
        assert!(
            parse(&swapped)
                .unwrap_err()
                .contains("holds a 'ssh-ed25519' key")
        );
        assert!(parse("ssh-ed25519 AAAA!!!").unwrap_err().contains("base64"));
        assert!(
            parse("ssh-foo AAAA")
                .unwrap_err()
                .contains("unknown key type")
        );
        assert!(parse("ssh-ed25519").unwrap_err().contains("no base64"));
        assert!(parse("ssh-ed25519 AAAA").unwrap_err().contains("truncated"));
    }
}
