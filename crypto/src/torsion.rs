//! Signatures a Byzantine signer can craft over its *own* key, for tests only.
//!
//! The signer picks a nonce `r`, publishes `R' = rB + T` for a small-order (torsion)
//! point `T`, and answers the challenge `k = H(R' ‖ A ‖ M)` honestly: `s = r + k·a`. Then
//! `sB = R' + kA − T`: off by exactly `T`. ed25519-dalek's `verify_strict` checks the
//! equation exactly and refuses it; its batch check multiplies each item's equation by a
//! 128-bit coefficient `z` and only sees `z·T`, which vanishes whenever `ord(T)` divides
//! `z`, so that verdict depended on the rest of the batch. The cofactored equation Bulwark
//! checks (ZIP-215) multiplies by 8, which clears `T`: the signature is valid, alone and in
//! every batch.
//!
//! Nobody can craft such a signature for a key whose secret they do not hold.

use crate::{signing_digest, CryptoError, Signable, Signature, Signed};
use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::{clamp_integer, Scalar};
use sha2::{Digest as _, Sha512};

/// Points of order 8 in `EIGHT_TORSION` (the others have order 1, 2 or 4).
pub const ORDER_EIGHT_TORSION: [usize; 4] = [1, 3, 5, 7];

/// Signs `payload` as the key with `seed` would (RFC 8032 expansion), but with the torsion
/// point `EIGHT_TORSION[torsion_index]` added to `R`. Index 0 (the identity) gives an
/// ordinary valid signature. `context` is the signing context (see
/// [`signing_digest`]).
pub fn sign_with_torsion<T: Signable>(
    payload: T,
    seed: [u8; 32],
    torsion_index: usize,
    context: &[u8],
) -> Result<Signed<T>, CryptoError> {
    let message = signing_digest(&payload, context)?;
    let message = message.as_bytes();
    // RFC 8032 §5.1.5: h = SHA-512(seed); a = clamp(h[0..32]); prefix = h[32..64].
    let expanded = Sha512::digest(seed);
    let mut secret_bytes = [0u8; 32];
    secret_bytes.copy_from_slice(&expanded[..32]);
    let secret = Scalar::from_bytes_mod_order(clamp_integer(secret_bytes));
    let public = EdwardsPoint::mul_base(&secret).compress();
    let nonce = Scalar::from_bytes_mod_order_wide(
        &Sha512::new().chain_update(&expanded[32..]).chain_update(message).finalize().into(),
    );
    let torsioned_r = (EdwardsPoint::mul_base(&nonce) + EIGHT_TORSION[torsion_index]).compress();
    let challenge = Scalar::from_bytes_mod_order_wide(
        &Sha512::new()
            .chain_update(torsioned_r.as_bytes())
            .chain_update(public.as_bytes())
            .chain_update(message)
            .finalize()
            .into(),
    );
    let s = nonce + challenge * secret;
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(torsioned_r.as_bytes());
    bytes[32..].copy_from_slice(s.as_bytes());
    Ok(Signed { payload, signature: Signature::from_bytes(&bytes) })
}
