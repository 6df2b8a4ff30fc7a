//! Gathering the shares of one message and combining them (docs/STEWARD.md TS2, TS3).
//!
//! Optimistic: with `2f + 1` shares the collector combines them and verifies the combined
//! signature once, which on the normal path is the only pairing check it pays (checking
//! each share first would cost one check per share). Only when the combined signature
//! fails does it check each share, discard and blame the bad ones, and combine again once
//! it holds enough good ones. A blamed member's later shares for this message are refused.

use super::{ThresholdError, ThresholdScheme};
use crate::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// Why a share was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShareRefusal {
    #[error("share index is not a member of the key")]
    UnknownSigner,
    #[error("a share from this member is already held")]
    Duplicate,
    #[error("this member already sent a bad share for this message")]
    Blamed,
    #[error("the message is already signed")]
    AlreadySigned,
}

/// What a combining attempt produced.
pub struct Combined<S: ThresholdScheme> {
    /// The verified site signature, once there is one.
    pub signature: Option<S::Signature>,
    /// Members whose shares this attempt found bad (TS3).
    pub blamed: Vec<u32>,
}

// By hand: derived impls would ask the scheme's marker type, not its signature, for them.
impl<S: ThresholdScheme> fmt::Debug for Combined<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Combined").field("signature", &self.signature).field("blamed", &self.blamed).finish()
    }
}

impl<S: ThresholdScheme> Clone for Combined<S> {
    fn clone(&self) -> Self {
        Combined { signature: self.signature.clone(), blamed: self.blamed.clone() }
    }
}

impl<S: ThresholdScheme> PartialEq for Combined<S> {
    fn eq(&self, other: &Self) -> bool {
        self.signature == other.signature && self.blamed == other.blamed
    }
}

/// The shares of one message under one site key.
pub struct ShareCollector<S: ThresholdScheme> {
    key: Arc<S::PublicKey>,
    message: Digest,
    shares: BTreeMap<u32, S::Share>,
    blamed: BTreeSet<u32>,
    signature: Option<S::Signature>,
    /// Pairing-priced checks made: combined signatures and single shares verified.
    checks: u64,
}

impl<S: ThresholdScheme> fmt::Debug for ShareCollector<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareCollector")
            .field("message", &self.message)
            .field("shares", &self.shares.keys().collect::<Vec<_>>())
            .field("blamed", &self.blamed)
            .field("signed", &self.signature.is_some())
            .finish()
    }
}

impl<S: ThresholdScheme> ShareCollector<S> {
    pub fn new(key: Arc<S::PublicKey>, message: Digest) -> Self {
        ShareCollector { key, message, shares: BTreeMap::new(), blamed: BTreeSet::new(), signature: None, checks: 0 }
    }

    pub fn message(&self) -> &Digest {
        &self.message
    }

    /// Takes member `index`'s share, unchecked (checking waits for the combined signature).
    pub fn add(&mut self, index: u32, share: S::Share) -> Result<(), ShareRefusal> {
        if self.signature.is_some() {
            return Err(ShareRefusal::AlreadySigned);
        }
        if index as usize >= S::members(&self.key) {
            return Err(ShareRefusal::UnknownSigner);
        }
        if self.blamed.contains(&index) {
            return Err(ShareRefusal::Blamed);
        }
        if self.shares.contains_key(&index) {
            return Err(ShareRefusal::Duplicate);
        }
        self.shares.insert(index, share);
        Ok(())
    }

    /// TS2, TS3: combines `needed` shares if it holds that many and has no signature yet,
    /// verifies the result once, and on failure checks each share, blames the bad ones
    /// and tries again with the good ones.
    pub fn try_combine(&mut self) -> Combined<S> {
        let mut blamed = Vec::new();
        let needed = S::needed(&self.key);
        while self.signature.is_none() && self.shares.len() >= needed {
            let chosen: Vec<(u32, S::Share)> =
                self.shares.iter().take(needed).map(|(index, share)| (*index, share.clone())).collect();
            self.checks += 1;
            match S::combine(&self.key, &chosen) {
                Ok(signature) if S::verify(&self.key, &signature, &self.message) => {
                    self.signature = Some(signature);
                }
                Ok(_) | Err(ThresholdError::Combine(_)) => {
                    let before = blamed.len();
                    for (index, share) in &chosen {
                        self.checks += 1;
                        if !S::verify_share(&self.key, *index, share, &self.message) {
                            self.shares.remove(index);
                            self.blamed.insert(*index);
                            blamed.push(*index);
                        }
                    }
                    if blamed.len() == before {
                        // Every share checks and still they do not combine: nothing to
                        // blame, nothing to gain by trying again.
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        Combined { signature: self.signature.clone(), blamed }
    }

    pub fn signature(&self) -> Option<&S::Signature> {
        self.signature.as_ref()
    }

    /// Members blamed for a bad share of this message.
    pub fn blamed(&self) -> &BTreeSet<u32> {
        &self.blamed
    }

    /// Shares held and not blamed.
    pub fn held(&self) -> usize {
        self.shares.len()
    }

    /// Pairing-priced checks made so far (combined signatures and single shares).
    pub fn checks(&self) -> u64 {
        self.checks
    }
}
