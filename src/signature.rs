//! Authenticating `SHA256SUMS` with its detached OpenPGP signature (`SHA256SUMS.gpg`), using the
//! pure-Rust `pgp` crate.
//!
//! pi-image does not ship the Ubuntu CD image signing key: no package reachable from the machines
//! this was built on carries it (Debian 12 has no `ubuntu-keyring`), and a key copied from
//! memory or an unverifiable source would be worse than none. The trusted key is therefore
//! always given by the user (`base_signing_key` in the profile, or `--signing-key FILE`); without one, a `SHA256SUMS`-verified fetch
//! fails and says how to get past it.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;

/// Fingerprint of "Ubuntu CD Image Automatic Signing Key (2012) <cdimage@ubuntu.com>", which
/// signs the `SHA256SUMS` of Ubuntu's release images.
pub const UBUNTU_CDIMAGE_2012_FINGERPRINT: &str = "843938DF228D22F7B3742BC0D94AA3F0EFE21092";

/// Errors checking a signature.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// No trusted key is configured and none ships with pi-image.
    #[error(
        "no trusted OpenPGP key to check {sig_url} with: set cluster.base_signing_key or pass --signing-key FILE (for Ubuntu images the \
         Ubuntu CD image signing key, fingerprint 8439 38DF 228D 22F7 B374 2BC0 D94A A3F0 EFE2 1092), \
         pin base_sha256 in the profile, or pass --insecure-skip-signature"
    )]
    NoKey {
        /// The signature's URL.
        sig_url: String,
    },
    /// The key file cannot be read or parsed, or its self-signatures are invalid.
    #[error("{}: not a usable OpenPGP public key: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify with the trusted key.
    #[error(
        "{sig_url}: bad signature: {reason}; the checksum file is not trusted and nothing was downloaded"
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
    path: PathBuf,
}

impl TrustedKey {
    /// The primary key's fingerprint, uppercase hex.
    pub fn fingerprint(&self) -> String {
        format!("{:X}", self.key.fingerprint())
    }
}

/// Load the trusted key from `path` (armored or binary). `None` is an error naming `sig_url`,
/// since no key ships with pi-image (see the module docs).
pub fn load_trusted_key(path: Option<&Path>, sig_url: &str) -> Result<TrustedKey, SignatureError> {
    let Some(path) = path else {
        return Err(SignatureError::NoKey {
            sig_url: sig_url.to_string(),
        });
    };
    let key_err = |reason: String| SignatureError::Key {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| key_err(e.to_string()))?;
    let key = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        SignedPublicKey::from_armor_single(Cursor::new(&bytes)).map(|(k, _)| k)
    } else {
        SignedPublicKey::from_bytes(Cursor::new(&bytes))
    }
    .map_err(|e| key_err(e.to_string()))?;
    key.verify_bindings()
        .map_err(|e| key_err(format!("invalid self-signature: {e}")))?;
    Ok(TrustedKey {
        key,
        path: path.to_owned(),
    })
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
        key.path.display(),
        sigs.len()
    )))
}
