//! The client role (CL1–CL3, CX1): where a request goes, when a result is accepted,
//! retransmission, the client window, and read-only requests.

use crate::fixture::*;
use bulwark_framework::roles::client::{Client, ClientAction, ClientError, ClientInput};
use bulwark_framework::roles::Role;
use bulwark_framework::{Instant, ProtocolParams, ReplicaId, Timestamp};

/// Issues `operation`: its timestamp and the actions after [`ClientAction::Issued`].
fn invoke(c: &mut Client, operation: Vec<u8>, read_only: bool, now: Instant) -> (Timestamp, Vec<ClientAction>) {
    let mut actions = c.handle(ClientInput::Invoke { operation, read_only }, now);
    match actions.first() {
        Some(ClientAction::Issued { timestamp }) => {
            let timestamp = *timestamp;
            actions.remove(0);
            (timestamp, actions)
        }
        _ => panic!("not issued: {actions:?}"),
    }
}

fn completed(actions: &[ClientAction]) -> Vec<(Timestamp, Vec<u8>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            ClientAction::Completed { timestamp, result } => Some((*timestamp, result.clone())),
            _ => None,
        })
        .collect()
}

/// CL1: a request goes to the primary of the client's view.
#[test]
fn cl1_a_request_goes_to_the_primary() {
    let f = fixture();
    let mut c = client(&f);
    let (_, actions) = invoke(&mut c, put("a", "1"), false, Instant(0));
    assert!(matches!(actions[0], ClientAction::Send { to: ReplicaId(0), .. }), "{actions:?}");
}

/// CL2: the client accepts after f+1 matching replies from distinct replicas, not before;
/// a replica's second reply does not count, nor does a different result.
#[test]
fn cl2_accepts_after_f_plus_1_matching_replies() {
    let f = fixture();
    let mut c = client(&f);
    let (t, _) = invoke(&mut c, put("a", "1"), false, Instant(0));
    assert!(completed(&c.handle(ClientInput::Reply(f.reply(1, t, b"ok", false)), Instant(1))).is_empty());
    assert!(
        completed(&c.handle(ClientInput::Reply(f.reply(1, t, b"ok", false)), Instant(1))).is_empty(),
        "same replica twice"
    );
    assert!(
        completed(&c.handle(ClientInput::Reply(f.reply(2, t, b"forged", false)), Instant(1))).is_empty(),
        "different result"
    );
    let done = completed(&c.handle(ClientInput::Reply(f.reply(3, t, b"ok", false)), Instant(1)));
    assert_eq!(done, vec![(t, b"ok".to_vec())]);
    assert_eq!(c.outstanding(), 0);
}

/// CL3: when the timer fires first, the client broadcasts the request to all replicas.
#[test]
fn cl3_on_timeout_the_client_broadcasts() {
    let f = fixture();
    let mut c = client(&f);
    let (_, actions) = invoke(&mut c, put("a", "1"), false, Instant(0));
    let Some(ClientAction::SetTimer { at }) = actions.iter().find(|a| matches!(a, ClientAction::SetTimer { .. }))
    else {
        panic!("{actions:?}")
    };
    let retry = c.handle(ClientInput::Timer, *at);
    assert!(retry.iter().any(|a| matches!(a, ClientAction::Broadcast { .. })), "{retry:?}");
    assert!(c.handle(ClientInput::Timer, *at).iter().all(|a| !matches!(a, ClientAction::Broadcast { .. })), "backoff");
}

/// CX1: at most W requests outstanding; the next is refused with a typed error.
#[test]
fn cx1_outstanding_requests_are_bounded_by_the_window() {
    let params = ProtocolParams { client_window: 2, ..params() };
    let f = fixture_with(4, params);
    let mut c = client(&f);
    invoke(&mut c, put("a", "1"), false, Instant(0));
    invoke(&mut c, put("a", "2"), false, Instant(0));
    let rejected = c.handle(ClientInput::Invoke { operation: put("a", "3"), read_only: false }, Instant(0));
    assert!(
        matches!(rejected.as_slice(), [ClientAction::Rejected(ClientError::WindowFull { outstanding: 2, limit: 2 })]),
        "{rejected:?}"
    );
}

/// Read-only optimisation: needs 2f+1 matching read-only replies; when they cannot match,
/// the client falls back to an ordered request.
#[test]
fn read_only_needs_2f_plus_1_and_falls_back_to_ordered() {
    let f = fixture();
    let mut c = client(&f);
    let (t, _) = invoke(&mut c, put("a", "1"), true, Instant(0));
    c.handle(ClientInput::Reply(f.reply(0, t, b"x", true)), Instant(1));
    assert!(
        completed(&c.handle(ClientInput::Reply(f.reply(1, t, b"x", true)), Instant(1))).is_empty(),
        "f+1 is not enough"
    );
    assert_eq!(completed(&c.handle(ClientInput::Reply(f.reply(2, t, b"x", true)), Instant(1))).len(), 1);

    let (t, _) = invoke(&mut c, put("a", "1"), true, Instant(0));
    c.handle(ClientInput::Reply(f.reply(0, t, b"x", true)), Instant(1));
    c.handle(ClientInput::Reply(f.reply(1, t, b"y", true)), Instant(1));
    let fallback = c.handle(ClientInput::Reply(f.reply(2, t, b"z", true)), Instant(1));
    assert!(
        fallback.iter().any(|a| matches!(a, ClientAction::Broadcast { request } if !request.read_only)),
        "{fallback:?}"
    );
}
