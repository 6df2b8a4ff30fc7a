//! Key files of a threshold scheme: a site's public key (`site-<j>.pub`, given to everyone)
//! and one member's secret share (`replica-<i>.share`, on that replica's host only). Each
//! is a header line naming what it holds and the scheme, then one line of hex.

use super::ThresholdScheme;
use crate::CryptoError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

fn header<S: ThresholdScheme>(what: &str) -> String {
    format!("# bulwark {} threshold {what} v1", S::NAME)
}

fn save<T: Serialize>(value: &T, header: &str, path: &Path, secret: bool) -> Result<(), CryptoError> {
    let error = |reason: String| CryptoError::KeyFile { path: path.to_path_buf(), reason };
    let bytes = rmp_serde::to_vec(value).map_err(|e| error(format!("cannot encode: {e}")))?;
    std::fs::write(path, format!("{header}\n{}\n", hex::encode(bytes))).map_err(|e| error(e.to_string()))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| error(e.to_string()))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

fn load<T: DeserializeOwned>(header: &str, path: &Path) -> Result<T, CryptoError> {
    let error = |reason: String| CryptoError::KeyFile { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let mut lines = text.lines();
    match lines.next() {
        Some(line) if line.trim() == header => {}
        Some(line) => {
            let first: String = line.chars().take(60).collect();
            return Err(error(format!("first line is {first:?}, expected {header:?}")));
        }
        None => return Err(error("file is empty".into())),
    }
    let body = lines.next().ok_or_else(|| error("key line is missing (truncated file?)".into()))?;
    let bytes = hex::decode(body.trim()).map_err(|e| error(format!("key line is not hex (truncated file?): {e}")))?;
    rmp_serde::from_slice(&bytes).map_err(|e| error(format!("key does not decode (truncated file?): {e}")))
}

/// Writes a site's public key.
pub fn save_public_key<S: ThresholdScheme>(key: &S::PublicKey, path: &Path) -> Result<(), CryptoError> {
    save(key, &header::<S>("public key"), path, false)
}

/// Reads a site's public key written by [`save_public_key`] for the same scheme.
pub fn load_public_key<S: ThresholdScheme>(path: &Path) -> Result<S::PublicKey, CryptoError> {
    load(&header::<S>("public key"), path)
}

/// Writes a member's secret share, readable by the owner only on Unix.
pub fn save_secret_share<S: ThresholdScheme>(share: &S::SecretShare, path: &Path) -> Result<(), CryptoError> {
    save(share, &header::<S>("secret share"), path, true)
}

/// Reads a secret share written by [`save_secret_share`] for the same scheme.
pub fn load_secret_share<S: ThresholdScheme>(path: &Path) -> Result<S::SecretShare, CryptoError> {
    load(&header::<S>("secret share"), path)
}
