//! What a batch orders: [`Command`]s, each a client's request or a command of the system
//! itself, and the batch digest that names them (PBFT.md M3, M4).
//!
//! A system command is ordered like any request (the same three phases, the same place in
//! every replica's history) but executed by the replica, never handed to the user's
//! service. It carries no signature of its own: whatever authorizes it travels inside it
//! and is judged at execution, the same way at every correct replica, so a batch that holds
//! one is valid whenever it is well formed. Reconfiguration and Steward's site messages
//! add their commands here.

use crate::messages::Request;
use bulwark_crypto::{Digest, DigestBuilder, Signed, Verified};
use serde::{Deserialize, Serialize};

/// A command of the system itself (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SystemCommand {
    /// Changes nothing: a point in the order that every replica reaches at the same
    /// sequence number, and reports (`ReplicaEvent::SystemExecuted`).
    Marker { label: u64 },
}

/// Domain tag of a system command's digest: never equal to a request's, whose tag differs.
const SYSTEM_COMMAND_DOMAIN: &[u8] = b"bulwark/system-command/v1";

impl SystemCommand {
    /// The digest that stands for this command in its batch's digest.
    pub fn digest(&self) -> Digest {
        let encoded = rmp_serde::to_vec(self).expect("encoding a system command cannot fail");
        Digest::of_parts(&[SYSTEM_COMMAND_DOMAIN, &encoded])
    }

    /// Approximate encoded size, for the `batch_bytes_max` bound.
    pub fn encoded_bytes(&self) -> usize {
        rmp_serde::to_vec(self).map_or(0, |encoded| encoded.len()) + 16
    }
}

/// One entry of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// A client's request, its signature checked (or its connection trusted).
    Request(Verified<Request>),
    /// A command of the system itself.
    System(SystemCommand),
}

impl Command {
    /// The digest that stands for this command in its batch's digest: a request's is its
    /// request digest (M2).
    pub fn digest(&self) -> Digest {
        match self {
            Command::Request(request) => request.digest(),
            Command::System(command) => command.digest(),
        }
    }

    fn encoded_bytes(&self) -> usize {
        match self {
            Command::Request(request) => request_size(request.payload()),
            Command::System(command) => command.encoded_bytes(),
        }
    }

    pub fn to_wire(&self) -> WireCommand {
        match self {
            Command::Request(request) => WireCommand::Request(request.signed().clone()),
            Command::System(command) => WireCommand::System(command.clone()),
        }
    }
}

/// A batch as it travels beside a PRE-PREPARE or a BATCH, and in the durable log: the
/// agreed time the primary proposed, and the commands. Not yet trusted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireBatch {
    pub time_us: u64,
    pub commands: Vec<WireCommand>,
}

impl WireBatch {
    /// A batch of client requests proposed at `time_us`.
    pub fn requests(time_us: u64, requests: impl IntoIterator<Item = Signed<Request>>) -> WireBatch {
        WireBatch { time_us, commands: WireCommand::requests(requests) }
    }
}

/// A command as it travels in a PRE-PREPARE's or BATCH's batch. Not yet trusted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireCommand {
    Request(Signed<Request>),
    System(SystemCommand),
}

impl WireCommand {
    /// Client requests as a batch's wire commands.
    pub fn requests(requests: impl IntoIterator<Item = Signed<Request>>) -> Vec<WireCommand> {
        requests.into_iter().map(WireCommand::Request).collect()
    }
}

/// Domain tag of batch digests (M3).
const BATCH_DOMAIN: &[u8] = b"bulwark/batch/v2";

/// The batch digest of M3: `H(tag ‖ t ‖ k ‖ D(m_1) ‖ … ‖ D(m_k))`, `t` the time the
/// primary proposed (N1.f), `D(m)` each command's digest. It binds neither view nor
/// sequence number, so a batch keeps its digest (and its time) when re-proposed in a later
/// view.
pub fn batch_digest<'a>(time_us: u64, command_digests: impl ExactSizeIterator<Item = &'a Digest>) -> Digest {
    let mut builder = DigestBuilder::new(BATCH_DOMAIN);
    builder.update_u64(time_us);
    builder.update_u64(command_digests.len() as u64);
    for digest in command_digests {
        builder.update(&digest.0);
    }
    builder.finish()
}

/// An ordered batch of commands with the time its primary proposed and its digest. The
/// empty batch at time 0 is the null request (M4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    commands: Vec<Command>,
    time_us: u64,
    digest: Digest,
    encoded_bytes: usize,
}

impl Batch {
    /// A batch of client requests only, proposed at time 0 (tests and tools; a primary
    /// proposes with [`Batch::timed`]).
    pub fn new(requests: Vec<Verified<Request>>) -> Self {
        Batch::of(requests.into_iter().map(Command::Request).collect())
    }

    /// A batch of `commands`, in this order, proposed at time 0.
    pub fn of(commands: Vec<Command>) -> Self {
        Batch::timed(commands, 0)
    }

    /// A batch of `commands` proposed at `time_us`, microseconds since the Unix epoch.
    pub fn timed(commands: Vec<Command>, time_us: u64) -> Self {
        let digest = batch_digest(time_us, commands.iter().map(Command::digest).collect::<Vec<_>>().iter());
        let encoded_bytes = commands.iter().map(Command::encoded_bytes).sum();
        Batch { commands, time_us, digest, encoded_bytes }
    }

    pub fn null() -> Self {
        Batch::of(Vec::new())
    }

    /// The time the primary proposed (N1.f); 0 for the null batch.
    pub fn time_us(&self) -> u64 {
        self.time_us
    }

    pub fn commands(&self) -> &[Command] {
        &self.commands
    }

    /// The client requests of the batch, in order.
    pub fn requests(&self) -> impl Iterator<Item = &Verified<Request>> {
        self.commands.iter().filter_map(|command| match command {
            Command::Request(request) => Some(request),
            Command::System(_) => None,
        })
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Commands in the batch.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Approximate encoded size, for the `batch_bytes_max` bound.
    pub fn encoded_bytes(&self) -> usize {
        self.encoded_bytes
    }

    pub fn to_wire(&self) -> WireBatch {
        WireBatch { time_us: self.time_us, commands: self.commands.iter().map(Command::to_wire).collect() }
    }
}

/// Approximate encoded size of a request: operation plus key, signature and framing.
pub fn request_size(request: &Request) -> usize {
    request.operation.len() + 128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m3_a_system_command_changes_its_batch_digest_and_its_place_counts() {
        let marker = |label| Command::System(SystemCommand::Marker { label });
        let null = Batch::null();
        let one = Batch::of(vec![marker(1)]);
        let other = Batch::of(vec![marker(2)]);
        let two = Batch::of(vec![marker(1), marker(2)]);
        let swapped = Batch::of(vec![marker(2), marker(1)]);
        let digests = [null.digest(), one.digest(), other.digest(), two.digest(), swapped.digest()];
        for (i, a) in digests.iter().enumerate() {
            for b in &digests[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(two.requests().count(), 0);
        assert_eq!(two.len(), 2);
    }
}
