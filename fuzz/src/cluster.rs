//! The fuzzed cluster: its members' and clients' test keys (those of `fuzz_roles.rs`), its
//! small protocol parameters, its configuration in each client-authentication mode, and
//! signing in its scope.

use crate::{CLIENTS, N, SIGNERS};
use bulwark_crypto::{KeyPair, Signed};
use bulwark_framework::config::ClientAuth;
use bulwark_framework::signing::Scoped;
use bulwark_framework::{ClusterId, Epoch, Membership, MembershipHandle, ProtocolParams, Scope};
use std::sync::{Arc, OnceLock};

struct Keys {
    replicas: Vec<KeyPair>,
    clients: Vec<KeyPair>,
}

// The seeds of framework/tests/fuzz_roles.rs.
pub(crate) fn replica_seed(i: u32) -> [u8; 32] {
    [(i % SIGNERS) as u8 + 1; 32]
}

pub(crate) fn client_seed(i: u8) -> [u8; 32] {
    [100 + i % CLIENTS; 32]
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        replicas: (0..SIGNERS).map(|i| KeyPair::from_seed(replica_seed(i))).collect(),
        clients: (0..CLIENTS).map(|i| KeyPair::from_seed(client_seed(i))).collect(),
    })
}

/// The signing key of replica `i` (`i < N + 2`; `N` and up are not members).
pub fn replica_key(i: u32) -> &'static KeyPair {
    &keys().replicas[(i % SIGNERS) as usize]
}

/// The signing key of client `i`.
pub fn client_key(i: u8) -> &'static KeyPair {
    &keys().clients[(i % CLIENTS) as usize]
}

/// Small parameters so that windows, checkpoints, buffers and chunked state transfer are
/// all reached within a few dozen steps (those of `fuzz_roles.rs`, plus a small client
/// window and client table so that their eviction is reached too).
pub fn params() -> ProtocolParams {
    ProtocolParams {
        checkpoint_interval: 4,
        watermark_window: 8,
        batch_size_max: 4,
        future_messages_per_sender_max: 16,
        request_queue_max: 64,
        state_chunk_bytes: 64,
        client_window: 8,
        client_table_max: 3,
        ..ProtocolParams::default()
    }
}

/// The fuzzed cluster's configuration, with signed client requests and replies (the
/// default).
pub fn config() -> Arc<Membership> {
    config_for(ClientAuth::Signed)
}

/// The fuzzed cluster's configuration with client authentication `auth` (built once each).
pub fn config_for(auth: ClientAuth) -> Arc<Membership> {
    static SIGNED: OnceLock<Arc<Membership>> = OnceLock::new();
    static CONNECTION: OnceLock<Arc<Membership>> = OnceLock::new();
    let cell = match auth {
        ClientAuth::Signed => &SIGNED,
        ClientAuth::Connection => &CONNECTION,
    };
    cell.get_or_init(|| {
        let members = (0..N).map(|i| replica_key(i).public()).collect();
        let params = ProtocolParams { client_auth: auth, ..params() };
        Arc::new(Membership::numbered(SCOPE.cluster, members, params).expect("the fuzz configuration is valid"))
    })
    .clone()
}

/// The client authentication a target's mode byte selects: connection mode for one byte in
/// four (the top two bits set), signed otherwise.
pub fn auth_of(mode: u8) -> ClientAuth {
    if mode >> 6 == 3 {
        ClientAuth::Connection
    } else {
        ClientAuth::Signed
    }
}

/// The scope every message of the fuzzed cluster is signed in.
pub const SCOPE: Scope = Scope { cluster: ClusterId(1), epoch: Epoch(0) };

pub(crate) fn sign<T: Scoped>(payload: T, by: u32) -> Signed<T> {
    SCOPE.sign(payload, replica_key(by)).into_signed()
}

/// A membership handle of its own on `config`, as each replica or client holds one.
pub fn handle(config: &Membership) -> MembershipHandle {
    MembershipHandle::new(config.clone())
}
