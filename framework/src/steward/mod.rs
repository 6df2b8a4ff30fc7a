//! Steward: sites that are Bulwark clusters and speak to each other with threshold
//! signatures (docs/STEWARD.md). Pure roles, like the PBFT roles, driven alike by the
//! runtime and the simulator.
//!
//! Built so far, and the rules each part owns:
//! * [`payload`]: what a site threshold-signs, its message (SM1) and the binding it makes
//!   (the slot of TS1).
//! * [`signer`]: the threshold signer of one replica: shares only payloads whose binding
//!   it never contradicted (TS1), combines with `2f + 1` shares and verifies once (TS2),
//!   blames bad shares and still signs (TS3); the signature it produces verifies with the
//!   site's key alone (TS4).
//! * [`global`]: global ordering at every replica: which site-signed PROPOSALs and ACCEPTs
//!   it takes (W5, TS4), when a batch is globally ordered (W7), strict in-order execution.
//! * [`sequencing`]: local ordering at the leader site, PBFT's pre-prepare and prepare with
//!   commit replaced by threshold signing (W2, W3), with signed votes whose certificates
//!   travel.
//! * [`constraint`]: CONSTRUCT-LOCAL-CONSTRAINT: the reports a new leader-site
//!   representative gathers, their checks and their union (LV2, LV3).
//! * [`messages`]: what replicas send inside a site and between sites, and its WAN size.
//! * [`site`]: the replica of a site, composing the above with the PBFT executor; it owns
//!   the representative's relays (W1, W4), ACCEPTs (W6), site checkpoints and state
//!   transfer (SK1), catch-up (RC1, RC2), and answers clients (SC1, SC2).
//!
//! * [`timers`]: the local and global timeouts, their ratios and doubling (TM2, TM3),
//!   validated when configured.
//!
//! Local view changes (LV1–LV4) are built; the global view change (GV1–GV6) is not yet: the
//! system stays in global view 0.
//!
//! A site is named by its cluster's [`crate::ClusterId`].

pub mod constraint;
pub mod global;
pub mod messages;
pub mod payload;
pub mod sequencing;
pub mod signer;
pub mod site;
pub mod timers;
