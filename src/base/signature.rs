//! Authenticating `SHA256SUMS` with its detached OpenPGP signature (`SHA256SUMS.gpg`), using the
//! pure-Rust `pgp` crate.
//!
//! The Ubuntu CD image signing key ships inside pi-image (`src/base/keys/ubuntu-cdimage-2012.asc`) and is
//! the trusted key unless the user names another (`base_signing_key` in the profile, or
//! `--signing-key FILE`). Its fingerprint is checked against [`UBUNTU_CDIMAGE_2012_FINGERPRINT`] in
//! the tests, by `gpg` as well as by this module.
//!
//! Refused, beyond a signature that does not verify: a trusted key that is revoked or expired
//! (then nothing is downloaded), a revoked or expired signing subkey, a signature that has
//! expired or was made with a weak hash (MD5, SHA-1, RIPEMD-160: collisions can be bought).

use std::io::Cursor;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{Signature, SignatureType};
use pgp::types::{KeyDetails, Timestamp};

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
    // verify_bindings checked the revocations: one that is there is valid.
    if let Some(r) = key.details.revocation_signatures.first() {
        return Err(key_err(format!(
            "the key {:X} is revoked{}",
            key.fingerprint(),
            r.created()
                .map(|t| format!(" since {}", date(t)))
                .unwrap_or_default()
        )));
    }
    let self_sigs = key
        .details
        .users
        .iter()
        .flat_map(|u| &u.signatures)
        .chain(&key.details.direct_signatures);
    if let Some(end) = expiry(key.primary_key.created_at(), self_sigs)
        && end <= now()
    {
        return Err(key_err(format!(
            "the key {:X} expired on {}",
            key.fingerprint(),
            date(Timestamp::from_secs(end))
        )));
    }
    Ok(TrustedKey { key, source_name })
}

/// Seconds since 1970, now.
fn now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// `YYYY-MM-DD` of an OpenPGP time.
fn date(t: Timestamp) -> String {
    let d = crate::io::calendar::UtcDateTime::from_unix(i64::from(t.as_secs()));
    format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)
}

/// When a key created at `created` expires (seconds since 1970), as its newest self-signature
/// says; `None` if it does not.
fn expiry<'a>(created: Timestamp, self_sigs: impl Iterator<Item = &'a Signature>) -> Option<u32> {
    let newest = self_sigs.max_by_key(|s| s.created().map_or(0, |t| t.as_secs()))?;
    let valid_for = newest.key_expiration_time()?.as_secs();
    (valid_for > 0).then(|| created.as_secs().saturating_add(valid_for))
}

/// Why a signature is refused before checking it cryptographically, if it is.
fn refused(sig: &Signature) -> Option<String> {
    let hash = sig.hash_alg();
    if matches!(
        hash,
        Some(HashAlgorithm::Md5 | HashAlgorithm::Sha1 | HashAlgorithm::Ripemd160) | None
    ) {
        return Some(format!(
            "made with {}, a hash algorithm too weak to trust",
            hash.map_or_else(|| "an unknown hash".to_string(), |h| h.to_string())
        ));
    }
    let created = sig.created()?;
    if let Some(valid_for) = sig.signature_expiration_time().map(|d| d.as_secs())
        && valid_for > 0
        && created.as_secs().saturating_add(valid_for) <= now()
    {
        return Some(format!(
            "expired on {}",
            date(Timestamp::from_secs(
                created.as_secs().saturating_add(valid_for)
            ))
        ));
    }
    None
}

/// Why the signing subkey `sub` may not be used, if it may not: revoked, or expired.
fn subkey_unusable(sub: &pgp::composed::SignedPublicSubKey) -> Option<String> {
    if sub
        .signatures
        .iter()
        .any(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
    {
        return Some(format!("the subkey {:X} is revoked", sub.key.fingerprint()));
    }
    let bindings = sub
        .signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding));
    match expiry(sub.key.created_at(), bindings) {
        Some(end) if end <= now() => Some(format!(
            "the subkey {:X} expired on {}",
            sub.key.fingerprint(),
            date(Timestamp::from_secs(end))
        )),
        _ => None,
    }
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
    let mut why = Vec::new();
    for (i, s) in sigs.iter().enumerate() {
        let n = i + 1;
        if let Some(reason) = refused(&s.signature) {
            why.push(format!("signature {n}: {reason}"));
            continue;
        }
        match s.verify(&key.key, data) {
            Ok(()) => return Ok(()),
            Err(e) => why.push(format!("signature {n}: {e}")),
        }
        for sub in &key.key.public_subkeys {
            if s.verify(&sub.key, data).is_err() {
                continue;
            }
            match subkey_unusable(sub) {
                None => return Ok(()),
                Some(reason) => why.push(format!("signature {n}: {reason}")),
            }
        }
    }
    Err(bad(format!(
        "no valid signature by the trusted key {} ({}) among {} ({})",
        key.fingerprint(),
        key.source_name,
        sigs.len(),
        why.join("; ")
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
