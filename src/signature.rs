//! Authenticating `SHA256SUMS` with its detached OpenPGP signature (`SHA256SUMS.gpg`).

use std::path::{Path, PathBuf};

/// Errors checking a signature.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// No trusted key is configured and none ships with pi-image.
    #[error(
        "no trusted OpenPGP key to check {sig_url} with: pass --signing-key FILE (the Ubuntu CD image signing key, fingerprint 8439 38DF 228D 22F7 B374 2BC0 D94A A3F0 EFE2 1092), or --insecure-skip-signature"
    )]
    NoKey {
        /// The signature's URL.
        sig_url: String,
    },
    /// The key file cannot be read or parsed.
    #[error("{}: not a usable OpenPGP public key: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify.
    #[error("{sig_url}: bad signature: {reason}; the checksum file is not trusted")]
    Bad {
        /// The signature's URL.
        sig_url: String,
        /// What is wrong.
        reason: String,
    },
}

/// A trusted public key.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    path: Option<PathBuf>,
}

/// Load the trusted key from `path`.
pub fn load_trusted_key(path: Option<&Path>) -> Result<TrustedKey, SignatureError> {
    Ok(TrustedKey {
        path: path.map(Path::to_owned),
    })
}

/// Check `sig` (detached, armored or binary) over `data` with `key`.
pub fn verify_detached(
    key: &TrustedKey,
    _data: &[u8],
    _sig: &[u8],
    sig_url: &str,
) -> Result<(), SignatureError> {
    let _ = &key.path;
    Err(SignatureError::NoKey {
        sig_url: sig_url.to_string(),
    })
}
