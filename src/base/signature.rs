//! Authenticating `SHA256SUMS` with its detached OpenPGP signature (`SHA256SUMS.gpg`), using the
//! pure-Rust `pgp` crate.
//!
//! The Ubuntu CD image signing key ships inside pi-image (`src/base/keys/ubuntu-cdimage-2012.asc`) and is
//! the trusted key unless the user names another (`base_signing_key` in the profile, or
//! `--signing-key FILE`). Its fingerprint is checked against [`UBUNTU_CDIMAGE_2012_FINGERPRINT`] in
//! the tests, by `gpg` as well as by this module.

use std::io::Cursor;
use std::path::Path;

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;

/// Fingerprint of "Ubuntu CD Image Automatic Signing Key (2012) <cdimage@ubuntu.com>", which
/// signs the `SHA256SUMS` of Ubuntu's release images.
pub const UBUNTU_CDIMAGE_2012_FINGERPRINT: &str = "843938DF228D22F7B3742BC0D94AA3F0EFE21092";

/// Errors checking a signature.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The key file cannot be read or parsed, or its self-signatures are invalid.
    #[error("{source_name}: not a usable OpenPGP public key: {reason}")]
    Key {
        /// The key file, or the built-in key's name.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify with the trusted key.
    #[error(
        "{sig_url}: bad signature: {reason}; the checksum file is not trusted and nothing was downloaded \
         (another signing key: --signing-key FILE or cluster.base_signing_key)"
    )]
    Bad {
        /// The signature's URL.
        sig_url: String,
        /// What is wrong.
        reason: String,
    },
}

/// A trusted OpenPGP public key whose bindings have been checked.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    key: SignedPublicKey,
    source_name: String,
}

impl TrustedKey {
    /// The primary key's fingerprint, uppercase hex.
    pub fn fingerprint(&self) -> String {
        format!("{:X}", self.key.fingerprint())
    }
}

/// The built-in "Ubuntu CD Image Automatic Signing Key (2012) <cdimage@ubuntu.com>", armored.
const UBUNTU_CDIMAGE_2012_KEY: &[u8] = include_bytes!("keys/ubuntu-cdimage-2012.asc");

/// Load the trusted key from `path` (armored or binary), or the built-in Ubuntu CD image
/// signing key when `path` is `None`.
pub fn load_trusted_key(path: Option<&Path>) -> Result<TrustedKey, SignatureError> {
    match path {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| SignatureError::Key {
                source_name: path.display().to_string(),
                reason: e.to_string(),
            })?;
            parse_key(&bytes, path.display().to_string())
        }
        None => parse_key(
            UBUNTU_CDIMAGE_2012_KEY,
            "the built-in Ubuntu CD image signing key".to_string(),
        ),
    }
}

fn parse_key(bytes: &[u8], source_name: String) -> Result<TrustedKey, SignatureError> {
    let key_err = |reason: String| SignatureError::Key {
        source_name: source_name.clone(),
        reason,
    };
    let key = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        SignedPublicKey::from_armor_single(Cursor::new(bytes)).map(|(k, _)| k)
    } else {
        SignedPublicKey::from_bytes(Cursor::new(bytes))
    }
    .map_err(|e| key_err(e.to_string()))?;
    key.verify_bindings()
        .map_err(|e| key_err(format!("invalid self-signature: {e}")))?;
    Ok(TrustedKey { key, source_name })
}

/// Check that one of the detached signatures in `sig` (armored or binary; Ubuntu's files may
/// hold several, by different keys) is a valid signature over `data` by `key` or one of its
/// subkeys.
pub fn verify_detached(
    key: &TrustedKey,
    data: &[u8],
    sig: &[u8],
    sig_url: &str,
) -> Result<(), SignatureError> {
    let bad = |reason: String| SignatureError::Bad {
        sig_url: sig_url.to_string(),
        reason,
    };
    let sigs: Vec<DetachedSignature> = if sig.trim_ascii_start().starts_with(b"-----BEGIN") {
        DetachedSignature::from_armor_many(Cursor::new(sig))
            .map_err(|e| bad(format!("not an OpenPGP signature: {e}")))?
            .0
            .collect::<Result<_, _>>()
    } else {
        DetachedSignature::from_bytes_many(Cursor::new(sig))
            .map_err(|e| bad(format!("not an OpenPGP signature: {e}")))?
            .collect::<Result<_, _>>()
    }
    .map_err(|e| bad(format!("not an OpenPGP signature: {e}")))?;
    if sigs.is_empty() {
        return Err(bad("no signature in the file".into()));
    }
    let mut last = String::new();
    for s in &sigs {
        match s.verify(&key.key, data) {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        for sub in &key.key.public_subkeys {
            match s.verify(&sub.key, data) {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
    }
    Err(bad(format!(
        "no valid signature by the trusted key {} ({}) among {} ({last})",
        key.fingerprint(),
        key.source_name,
        sigs.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_key_is_the_ubuntu_cd_image_key() {
        let key = load_trusted_key(None).unwrap();
        assert_eq!(key.fingerprint(), UBUNTU_CDIMAGE_2012_FINGERPRINT);
    }
}
