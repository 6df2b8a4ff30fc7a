//! Protocol parameters, and how clients and replicas authenticate each other.
//!
//! Parameters are per cluster, never global: they are part of a cluster's
//! [`crate::membership::Membership`], which every member of it must agree on.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use strum::VariantArray;

/// Protocol parameters. The defaults suit a LAN cluster; every bound here is also a bound
/// on what a Byzantine peer can make a replica hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolParams {
    /// Most requests in one batch (PBFT.md P3).
    pub batch_size_max: usize,
    /// Most encoded request bytes in one batch.
    pub batch_bytes_max: usize,
    /// How long the primary waits to fill a batch before cutting it.
    pub batch_delay_us: u64,
    /// Most batches the primary has proposed and not yet seen executed. A small number
    /// makes batches fuller (fewer protocol messages per request): on one 2-core host, 2–4
    /// gave 30% more throughput than 64. Raise it when the link delay is large compared to
    /// the time to fill a batch.
    pub in_flight_batches_max: u64,
    /// Checkpoint interval `K` (PBFT.md C1).
    pub checkpoint_interval: u64,
    /// Watermark window `L`, a multiple of `K` (PBFT.md §0).
    pub watermark_window: u64,
    /// Largest encoded operation a request may carry.
    pub request_bytes_max: usize,
    /// Largest frame accepted from the network, checked before it is read.
    pub frame_bytes_max: usize,
    /// Largest encoded reply a replica sends. A service reply over it is replaced, at every
    /// replica alike, by `Outcome::ReplyTooLarge` (the operation still takes effect).
    pub reply_bytes_max: usize,
    /// How far the time a primary proposes for a batch may be from a backup's clock before
    /// the backup withholds its PREPARE (PBFT.md N1.f). Bounds how far the agreed time of
    /// `ExecutionContext::time` can drift from real time under a faulty primary.
    pub clock_skew_max_us: u64,
    /// Requests the primary keeps queued before it sheds new ones.
    pub request_queue_max: usize,
    /// Outstanding requests per client, `W` of PBFT.md CX1.
    pub client_window: u64,
    /// Clients remembered in the client table before the least recently active is evicted.
    pub client_table_max: usize,
    /// How long a client waits for `f + 1` replies before it broadcasts (CL3).
    pub client_retransmit_us: u64,
    /// A replica that made no progress for this long while it knows of work asks its
    /// peers for what it is missing (status-driven retransmission).
    pub status_interval_us: u64,
    /// Messages buffered per sender for the window after the current one (PBFT.md C5),
    /// and for a view this replica has not entered yet (VC6).
    pub future_messages_per_sender_max: usize,
    /// Base view-change timeout `T` (PBFT.md VC1, VC3): how long a backup waits for a
    /// request it knows of to execute before it suspects the primary, and how long it waits
    /// for a NEW-VIEW once `2f + 1` replicas want the same view. Doubles with each
    /// consecutive view change (up to 64 times), back to `T` once a new request executes.
    pub view_change_timeout_us: u64,
    /// Aardvark-style guard against a primary that is slow on purpose: while requests are
    /// waiting, a backup expects at least this many requests ordered per second (measured
    /// over one view-change timeout) and otherwise moves to the next view. 0 turns it off;
    /// the request timer alone then catches only a primary that orders nothing.
    pub ordering_rate_min_per_s: u64,
    /// Chunk size of checkpoint images (PBFT.md M7): state transfer fetches and checks the
    /// image chunk by chunk. Part of the state digest, so every replica must agree on it.
    pub state_chunk_bytes: usize,
    /// Largest checkpoint image a replica fetches by state transfer: a bound on what a
    /// transfer may buffer.
    pub state_transfer_bytes_max: u64,
    /// How requests and replies between clients and replicas are authenticated (see
    /// [`ClientAuth`]). Every replica must agree on it.
    pub client_auth: ClientAuth,
}

/// How clients and replicas authenticate what they send each other. Replica-to-replica
/// messages are signed in either mode, and certificates are unchanged.
///
/// A mode's name is its variant's in lower case, the same in the cluster file (serde) and
/// on the command line (`Display`, `str::parse`; [`VariantArray::VARIANTS`] lists them).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase", parse_err_ty = String, parse_err_fn = unknown_client_auth)]
pub enum ClientAuth {
    /// Every request is ed25519-signed by its client and checked by every replica; every
    /// ordered reply is vouched for by its replica's signature over the Merkle root of its
    /// batch's replies (one signature per batch), a read-only or re-sent reply by a
    /// signature of its own. Safe against anyone on the client network.
    #[default]
    Signed,
    /// Nothing between clients and replicas is signed. A replica accepts a request on the
    /// connection it arrived on (the client is still named by its key), backups accept the
    /// requests in a PRE-PREPARE on the primary's word, and a client attributes a reply to
    /// the replica whose connection it came on, never to a field inside the reply.
    ///
    /// What this gives up: any party that can send on the client network can forge requests
    /// in any client's name and replies in any replica's name, and a faulty primary can
    /// order requests no client sent. It is for deployments whose client links are already
    /// authenticated (by the network, a VPN, or mutually authenticated TLS in front of the
    /// replicas), and for the PBFT paper's benchmark configuration (MACs on client links).
    Connection,
}

/// The error of parsing an unknown client-auth mode: it lists the known ones.
fn unknown_client_auth(text: &str) -> String {
    let names: Vec<String> = ClientAuth::VARIANTS.iter().map(|mode| format!("{:?}", <&str>::from(mode))).collect();
    format!("client_auth is one of {}, not {text:?}", names.join(", "))
}

impl Default for ProtocolParams {
    fn default() -> Self {
        ProtocolParams {
            batch_size_max: 256,
            batch_bytes_max: 1 << 20,
            batch_delay_us: 1_000,
            in_flight_batches_max: 4,
            checkpoint_interval: 128,
            watermark_window: 256,
            request_bytes_max: 64 * 1024,
            frame_bytes_max: 4 << 20,
            reply_bytes_max: 1 << 20,
            clock_skew_max_us: 2_000_000,
            request_queue_max: 100_000,
            client_window: 256,
            client_table_max: 10_000,
            client_retransmit_us: 500_000,
            status_interval_us: 100_000,
            future_messages_per_sender_max: 1024,
            view_change_timeout_us: 1_000_000,
            ordering_rate_min_per_s: 0,
            state_chunk_bytes: 256 * 1024,
            state_transfer_bytes_max: 4 << 30,
            client_auth: ClientAuth::Signed,
        }
    }
}

impl ProtocolParams {
    pub fn batch_delay(&self) -> Duration {
        Duration::from_micros(self.batch_delay_us)
    }

    pub fn client_retransmit(&self) -> Duration {
        Duration::from_micros(self.client_retransmit_us)
    }

    pub fn status_interval(&self) -> Duration {
        Duration::from_micros(self.status_interval_us)
    }

    pub fn clock_skew_max(&self) -> Duration {
        Duration::from_micros(self.clock_skew_max_us)
    }

    pub fn view_change_timeout(&self) -> Duration {
        Duration::from_micros(self.view_change_timeout_us)
    }

    /// Checks the relations between parameters that the protocol relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field: &'static str, reason: String| Err(ConfigError::Invalid { field, reason });
        if self.checkpoint_interval == 0 {
            return fail("checkpoint_interval", "must be at least 1".into());
        }
        if self.watermark_window < 2 * self.checkpoint_interval
            || !self.watermark_window.is_multiple_of(self.checkpoint_interval)
        {
            return fail(
                "watermark_window",
                format!(
                    "must be a multiple of checkpoint_interval ({}) and at least twice it, is {}",
                    self.checkpoint_interval, self.watermark_window
                ),
            );
        }
        if self.batch_size_max == 0 {
            return fail("batch_size_max", "must be at least 1".into());
        }
        if self.in_flight_batches_max == 0 {
            return fail("in_flight_batches_max", "must be at least 1".into());
        }
        if self.view_change_timeout_us == 0 {
            return fail("view_change_timeout_us", "must be at least 1".into());
        }
        if self.state_chunk_bytes == 0 || self.state_chunk_bytes + 64 * 1024 > self.frame_bytes_max {
            return fail("state_chunk_bytes", "must be at least 1 and leave 64 KiB of a frame for the rest".into());
        }
        if self.client_window == 0 {
            return fail("client_window", "must be at least 1".into());
        }
        if self.request_bytes_max + 1024 > self.batch_bytes_max {
            return fail("batch_bytes_max", "must hold at least one request of request_bytes_max".into());
        }
        if self.reply_bytes_max == 0 || self.reply_bytes_max + 64 * 1024 > self.frame_bytes_max {
            return fail("reply_bytes_max", "must be at least 1 and leave 64 KiB of a frame for the rest".into());
        }
        if self.clock_skew_max_us == 0 {
            return fail("clock_skew_max_us", "must be at least 1".into());
        }
        if self.batch_bytes_max + 64 * 1024 > self.frame_bytes_max {
            return fail("frame_bytes_max", "must hold a full batch with its pre-prepare".into());
        }
        Ok(())
    }
}

/// Errors in a configuration. The runtime adds the file name when it loads one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn client_auth_modes_have_one_name_in_cluster_files_and_on_the_command_line() {
        let names: Vec<String> = ClientAuth::VARIANTS.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["signed", "connection"]);
        for mode in ClientAuth::VARIANTS {
            let serialized: String = rmp_serde::from_slice(&rmp_serde::to_vec(mode).unwrap()).unwrap();
            assert_eq!(serialized, mode.to_string(), "serde and strum disagree");
            assert_eq!(serialized.parse(), Ok(*mode));
        }
        let error = "mac".parse::<ClientAuth>().unwrap_err();
        assert_eq!(error, r#"client_auth is one of "signed", "connection", not "mac""#);
    }

    #[test]
    fn window_must_be_a_multiple_of_the_checkpoint_interval() {
        let params = ProtocolParams { checkpoint_interval: 100, watermark_window: 250, ..Default::default() };
        let err = params.validate().unwrap_err();
        assert!(err.to_string().starts_with("watermark_window"), "{err}");
    }
}
