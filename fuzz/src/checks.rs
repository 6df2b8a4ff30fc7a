//! The checks of what a correct sender sends, shared by the replica and client harnesses:
//! each message must pass edge verification at a correct receiver and fit in a frame, and
//! replies must come through the runtime's framing unchanged.

use crate::cluster::SCOPE;
use bulwark_framework::messages::{reply_messages, Message, VerifiedMessage, VerifiedReply};
use bulwark_framework::verify::{verify_message, verify_reply, verify_reply_bundle, Refusal, ReplyRootCache};
use bulwark_framework::{wire, Membership};

/// A message a correct sender produced must pass edge verification at a correct receiver
/// and fit in one frame.
pub fn check_sendable(message: &VerifiedMessage, config: &Membership, who: &str) {
    let wire_form = message.to_wire();
    let frame = wire::encode_frame(SCOPE, &wire_form).expect("an outgoing message encodes");
    assert!(
        frame.len() - wire::FRAME_HEADER_BYTES <= config.params.frame_bytes_max,
        "{who} sent a {:?} of {} bytes, over frame_bytes_max",
        message.kind(),
        frame.len()
    );
    if let Err(refusal) = verify_message(wire_form, config) {
        panic!("{who} sent a {:?} that a correct receiver refuses: {refusal}", message.kind());
    }
}

/// The replies a correct replica sent one client, as the runtime frames them
/// ([`reply_messages`]), must pass the client's checks on the connection from that replica
/// and come out as they went in.
pub fn check_replies_sendable(replies: &[VerifiedReply], config: &Membership, who: &str) {
    let mut cache = ReplyRootCache::default();
    let mut received = Vec::new();
    for message in reply_messages(replies) {
        let frame = wire::encode_frame(SCOPE, &message).expect("an outgoing message encodes");
        assert!(
            frame.len() - wire::FRAME_HEADER_BYTES <= config.params.frame_bytes_max,
            "{who}: reply frame too large"
        );
        let result: Result<Vec<VerifiedReply>, Refusal> = match message {
            Message::Reply(signed) => {
                let link = Some(signed.payload.replica);
                verify_reply(signed, link, config).map(|r| vec![r])
            }
            Message::Replies(bundle) => {
                let link = bundle.replies.first().map(|r| r.reply.replica);
                verify_reply_bundle(bundle, link, config, &mut cache)
            }
            other => panic!("{who}: replies framed as a {:?}", other.kind()),
        };
        match result {
            Ok(verified) => received.extend(verified),
            Err(refusal) => panic!("{who} sent replies a correct client refuses: {refusal}"),
        }
    }
    assert_eq!(received.len(), replies.len(), "{who}: replies lost in framing");
    for (sent, got) in replies.iter().zip(&received) {
        assert_eq!(sent.payload(), got.payload(), "{who}: a reply changed in framing");
        assert_eq!(sent.attributed_to(), got.attributed_to(), "{who}: a reply changed sender in framing");
    }
}
