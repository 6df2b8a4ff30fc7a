//! ed25519 keys and signatures, and the key file format.

use crate::{CryptoError, Digest};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::Path;

/// First line of a Bulwark secret key file. Anything else in that place is refused, so a
/// public key, a threshold share or an unrelated file is never mistaken for a secret key.
pub const KEY_FILE_HEADER: &str = "bulwark ed25519 secret key v1";

/// An ed25519 key pair. The secret half is zeroed when dropped (ed25519-dalek `zeroize`).
pub struct KeyPair {
    signing: SigningKey,
    /// Decoded once: a client names its key in every request, and decoding it for
    /// ed25519-zebra costs a point decompression.
    public: PublicKey,
}

impl KeyPair {
    fn from_signing(signing: SigningKey) -> Self {
        let public = PublicKey::from_dalek(signing.verifying_key());
        KeyPair { signing, public }
    }

    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        KeyPair::from_signing(SigningKey::generate(rng))
    }

    /// A key pair from a 32-byte seed: deterministic, for simulations and tests.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        KeyPair::from_signing(SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// Signs a digest. Protocol code signs payloads through [`crate::Signed::sign`].
    pub fn sign_digest(&self, digest: &Digest) -> Signature {
        Signature(self.signing.sign(digest.as_bytes()))
    }

    /// Writes the secret key to `path` (hex, with a header line), readable by the owner only
    /// on Unix.
    pub fn save(&self, path: &Path) -> Result<(), CryptoError> {
        let text = format!("{KEY_FILE_HEADER}\n{}\n", hex::encode(self.signing.to_bytes()));
        let error = |e: std::io::Error| CryptoError::KeyFile { path: path.to_path_buf(), reason: e.to_string() };
        std::fs::write(path, text).map_err(error)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(error)?;
        }
        Ok(())
    }

    /// Reads a key written by [`KeyPair::save`]. A missing, truncated or wrong-type file is
    /// refused with an error naming the file and the problem.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let error = |reason: String| CryptoError::KeyFile { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let mut lines = text.lines();
        match lines.next() {
            Some(line) if line.trim() == KEY_FILE_HEADER => {}
            Some(line) => {
                return Err(error(format!(
                    "not a Bulwark ed25519 secret key: first line is {:?}, expected {KEY_FILE_HEADER:?}",
                    truncate(line)
                )))
            }
            None => return Err(error("file is empty".into())),
        }
        let body = lines.next().ok_or_else(|| error("key line is missing (truncated file?)".into()))?;
        let bytes = hex::decode(body.trim()).map_err(|e| error(format!("key line is not hex: {e}")))?;
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| error(format!("key is {} bytes, expected 32 (truncated file?)", bytes.len())))?;
        Ok(KeyPair::from_seed(seed))
    }
}

fn truncate(line: &str) -> String {
    line.chars().take(40).collect()
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "KeyPair({:?})", self.public())
    }
}

/// An ed25519 public key. Serialized as 32 raw bytes; parsed and checked on decode.
///
/// It holds the key decoded twice, once for each crate that reads it (ed25519-dalek for
/// its encoding and weakness, ed25519-zebra for checking signatures), so that neither
/// decompresses the point again per signature.
#[derive(Clone, Copy)]
pub struct PublicKey {
    pub(crate) dalek: VerifyingKey,
    pub(crate) zebra: ed25519_zebra::VerificationKey,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.dalek == other.dalek
    }
}

impl Eq for PublicKey {}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.dalek.as_bytes().hash(state);
    }
}

impl PublicKey {
    fn from_dalek(dalek: VerifyingKey) -> Self {
        let zebra = ed25519_zebra::VerificationKey::try_from(dalek.to_bytes())
            .expect("a point ed25519-dalek decodes, ed25519-zebra decodes too");
        PublicKey { dalek, zebra }
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, CryptoError> {
        VerifyingKey::from_bytes(bytes).map(PublicKey::from_dalek).map_err(|_| CryptoError::BadPublicKey)
    }

    /// A small-order key: every signature check under it fails (under such a key anyone
    /// could sign anything).
    pub(crate) fn is_weak(&self) -> bool {
        self.dalek.is_weak()
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.dalek.to_bytes()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(text.trim()).map_err(|_| CryptoError::BadPublicKey)?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| CryptoError::BadPublicKey)?;
        Self::from_bytes(&bytes)
    }

    /// The validity rule for every signature in Bulwark: ZIP-215's cofactored equation
    /// `[8][s]B = [8]R + [8][k]A` with a canonical `s`, under a key that is not of small
    /// order. See the crate documentation for why this rule and not ed25519-dalek's
    /// `verify_strict`.
    pub fn verify_digest(&self, digest: &Digest, signature: &Signature) -> Result<(), CryptoError> {
        if self.is_weak() {
            return Err(CryptoError::BadSignature);
        }
        self.zebra.verify(&signature.0, digest.as_bytes()).map_err(|_| CryptoError::BadSignature)
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.dalek.as_bytes().cmp(other.dalek.as_bytes())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pk:{}", hex::encode(&self.dalek.as_bytes()[..4]))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.dalek.as_bytes())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteArray<32> = Deserialize::deserialize(deserializer)?;
        PublicKey::from_bytes(&bytes.into_array()).map_err(serde::de::Error::custom)
    }
}

/// An ed25519 signature. Serialized as 64 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub(crate) ed25519_dalek::Signature);

impl Signature {
    /// The placeholder of a payload sent without a signature (all zero bytes). Its `R` is a
    /// small-order point and its `s` zero, so the equation reduces to `[8][k]A = 0`, which
    /// holds only for a small-order key, and those are refused: it never verifies.
    pub fn absent() -> Signature {
        Signature::from_bytes(&[0; 64])
    }

    /// Whether this is the placeholder of [`Signature::absent`].
    pub fn is_absent(&self) -> bool {
        self.0.to_bytes() == [0; 64]
    }

    pub fn to_bytes(&self) -> [u8; 64] {
        self.0.to_bytes()
    }

    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        Signature(ed25519_dalek::Signature::from_bytes(bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sig:{}", hex::encode(&self.0.to_bytes()[..4]))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.to_bytes())
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteArray<64> = Deserialize::deserialize(deserializer)?;
        Ok(Signature::from_bytes(&bytes.into_array()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica-0.key");
        let key = KeyPair::from_seed([7; 32]);
        key.save(&path).unwrap();
        let loaded = KeyPair::load(&path).unwrap();
        assert_eq!(loaded.public(), key.public());
    }

    #[test]
    fn missing_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.key");
        let err = KeyPair::load(&path).unwrap_err().to_string();
        assert!(err.contains("absent.key"), "{err}");
    }

    #[test]
    fn truncated_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.key");
        std::fs::write(&path, format!("{KEY_FILE_HEADER}\nabcdef\n")).unwrap();
        let err = KeyPair::load(&path).unwrap_err().to_string();
        assert!(err.contains("3 bytes, expected 32"), "{err}");
        std::fs::write(&path, format!("{KEY_FILE_HEADER}\n")).unwrap();
        let err = KeyPair::load(&path).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn wrong_type_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("public.key");
        std::fs::write(&path, "bulwark ed25519 public key v1\n00\n").unwrap();
        let err = KeyPair::load(&path).unwrap_err().to_string();
        assert!(err.contains("not a Bulwark ed25519 secret key"), "{err}");
    }

    #[test]
    fn public_key_hex_round_trips_and_rejects_garbage() {
        let key = KeyPair::from_seed([3; 32]).public();
        assert_eq!(PublicKey::from_hex(&key.to_hex()).unwrap(), key);
        assert!(PublicKey::from_hex("zz").is_err());
        assert!(PublicKey::from_hex("00").is_err());
    }
}
