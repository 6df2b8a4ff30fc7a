//! Edge verification (`verify::verify_message`) with the fuzzed cluster's configuration
//! (n = 4): the only road from untrusted bytes to a message a role accepts; and the
//! client's own checks of replies (`verify_reply`, `verify_reply_bundle` with a root cache).
//!
//! The first byte picks the mode: its low bit the input's form, its top two bits the
//! cluster's client authentication (`auth_of`: connection mode one time in four). Low bit
//! clear: the rest is an envelope for the decoder, and what decodes is verified. Set: the
//! rest describes a [`Step`] of the replica targets; its messages are built and signed with
//! the cluster's keys (so most carry good signatures and certificates), optionally damaged
//! (a flipped signature bit, byte edits of the encoding), and verified.
//!
//! Checks: verification never panics; what it accepts is exactly what was sent
//! (`to_wire` gives the message back); a warm client-key cache and a warm reply-root cache
//! reach the same verdict as fresh ones; and well-formed messages that must pass do (votes,
//! checkpoints and state requests signed by a member; undamaged reply bundles).

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bulwark_framework::config::ClientAuth;
use bulwark_framework::messages::Message;
use bulwark_framework::verify::{
    check_scope, verify_envelope, verify_message, verify_message_with, verify_reply, verify_reply_bundle,
    ClientKeyCache, ReplyRootCache,
};
use bulwark_framework::{wire, Membership, ReplicaId};
use bulwark_fuzz::{auth_of, config_for, corrupt_signature, mutate, params, Builder, Pool, Step, N, SCOPE};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

thread_local! {
    /// Shared by every input: caches that have seen many keys and roots (and been cleared).
    static KEYS: RefCell<ClientKeyCache> = RefCell::new(ClientKeyCache::default());
    static ROOTS: RefCell<ReplyRootCache> = RefCell::new(ReplyRootCache::default());
}

#[derive(Debug, Arbitrary)]
enum Damage {
    None,
    Signature(u16),
    Bytes(Vec<(u16, u8)>),
}

/// The client's checks of a reply or bundle, on the connection of replica `link`.
fn check_client_side(message: &Message, config: &Membership, link: Option<ReplicaId>, must_pass: bool) {
    let result = match message.clone() {
        Message::Reply(signed) => verify_reply(signed, link, config).map(|_| ()),
        Message::Replies(bundle) => {
            let fresh = verify_reply_bundle(bundle.clone(), link, config, &mut ReplyRootCache::default());
            let cached = ROOTS.with(|roots| verify_reply_bundle(bundle.clone(), link, config, &mut roots.borrow_mut()));
            assert_eq!(fresh, cached, "the reply root cache changed the verdict");
            if let Ok(replies) = &fresh {
                assert_eq!(replies.len(), bundle.replies.len());
                for (reply, bundled) in replies.iter().zip(&bundle.replies) {
                    assert_eq!(reply.payload(), &bundled.reply, "verification changed a reply");
                }
            }
            fresh.map(|_| ())
        }
        _ => return,
    };
    if let Err(refusal) = result {
        assert!(!must_pass, "a well-formed {:?} was refused by a client: {refusal}", message.kind());
    }
}

fn check(message: Message, config: &Membership, well_formed: bool) {
    let fresh = verify_message(message.clone(), config);
    let cached = KEYS.with(|keys| verify_message_with(message.clone(), config, &mut keys.borrow_mut()));
    assert_eq!(fresh, cached, "a cached client key changed the verdict");
    match fresh {
        Ok(verified) => {
            assert_eq!(verified.kind(), message.kind());
            assert_eq!(verified.to_wire(), message, "verification changed the message");
        }
        Err(refusal) => {
            let member = |r: ReplicaId| r.0 < N;
            let simple = match &message {
                Message::Prepare(m) => member(m.payload.replica),
                Message::Commit(m) => member(m.payload.replica),
                Message::Checkpoint(m) => member(m.payload.replica),
                Message::StateRequest(m) => member(m.payload.replica),
                _ => false,
            };
            assert!(!(well_formed && simple), "a well-formed {:?} was refused: {refusal}", message.kind());
        }
    }
    // The client's checks, on the connection of the replica the message names.
    let named = match &message {
        Message::Reply(signed) => Some(signed.payload.replica),
        Message::Replies(bundle) => bundle.replies.first().map(|r| r.reply.replica),
        _ => None,
    };
    let must_pass = well_formed
        && config.params.client_auth == ClientAuth::Signed
        && match &message {
            Message::Replies(bundle) => {
                let root = bundle.root.as_ref().map(|r| r.payload.replica);
                !bundle.replies.is_empty()
                    && bundle.replies.len() <= params().batch_size_max
                    && root.is_some_and(member_id)
            }
            _ => false,
        };
    check_client_side(&message, config, named, must_pass);
}

fn member_id(replica: ReplicaId) -> bool {
    replica.0 < N
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let config = config_for(auth_of(mode));
    if mode % 2 == 0 {
        if let Ok(envelope) = wire::decode(rest, config.params.frame_bytes_max) {
            // Another scope is refused for it before anything else is looked at.
            let (scope, kind) = (envelope.scope, envelope.message.kind());
            if check_scope(scope, kind, &config).is_ok() {
                check(envelope.message, &config, false);
            } else {
                assert!(verify_envelope(envelope, &config).is_err(), "a message of another scope was accepted");
            }
        }
        return;
    }
    let mut u = Unstructured::new(rest);
    let Ok(step) = Step::arbitrary(&mut u) else { return };
    let damage = Damage::arbitrary(&mut u).unwrap_or(Damage::None);
    let mut pool = Pool::default();
    let messages = Builder { config: &config, pool: &mut pool, me: None }.messages(&step);
    let well_formed = match &step {
        // Damaged by the step itself.
        Step::Mutate { .. } | Step::Raw(_) => false,
        Step::Replies(spec) => (11..16).contains(&(spec.tamper % 16)) || spec.tamper % 16 == 0,
        _ => true,
    };
    for mut message in messages {
        match &damage {
            Damage::None => check(message, &config, well_formed),
            Damage::Signature(bit) => {
                corrupt_signature(&mut message, *bit);
                check(message, &config, false);
            }
            Damage::Bytes(edits) => {
                let Ok(mut bytes) = wire::encode(SCOPE, &message) else { continue };
                mutate(&mut bytes, edits);
                if let Ok(decoded) = wire::decode(&bytes, config.params.frame_bytes_max) {
                    if check_scope(decoded.scope, decoded.message.kind(), &config).is_ok() {
                        check(decoded.message, &config, false);
                    }
                }
            }
        }
    }
});
