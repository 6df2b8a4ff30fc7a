//! Bulwark's protocol core: PBFT as pure state machines.
//!
//! * [`messages`], [`wire`] and [`verify`]: what travels, how it is encoded, and the one
//!   road from untrusted bytes to [`messages::VerifiedMessage`]; [`batch`]: what a batch
//!   orders (client requests and commands of the system itself).
//! * [`membership`]: a cluster's members in one epoch (stable ids, keys, quorum math,
//!   protocol parameters) as one value, shared by a replica's roles through a handle;
//!   [`config`]: the protocol parameters; [`signing`]: every signature binds the cluster
//!   and epoch it belongs to.
//! * [`quorum`]: vote collection with one vote per member.
//! * [`roles`]: primary, backup, executor, checkpoint collector and client, each a pure
//!   state machine (input and `now` in, actions out), and [`roles::replica::Replica`]
//!   which wires the replica roles together.
//! * [`service`]: the trait a user implements.
//! * [`sim`]: the seeded deterministic simulator and its safety checker.
//!
//! This crate never imports a runtime (no actix, no tokio), never reads a clock and never
//! draws global randomness: that is what lets the simulator replay any run from its seed.
//! Rule IDs in comments and test names (N1.c, C5, …) refer to `docs/PBFT.md`.

pub mod batch;
pub mod config;
pub mod durable;
pub mod ids;
pub mod membership;
pub mod messages;
pub mod quorum;
pub mod roles;
pub mod service;
pub mod signing;
pub mod sim;
pub mod state;
pub mod steward;
pub mod testkit;
pub mod verify;
pub mod wire;

pub use config::{ConfigError, ProtocolParams};
pub use ids::{ClientId, ClusterId, Epoch, Instant, PeerId, ReplicaId, SeqNum, Timestamp, View};
pub use membership::{MemberMap, Membership, MembershipHandle, Scope};
pub use messages::{Message, VerifiedMessage};
pub use roles::client::{Client, ClientAction, ClientError, ClientInput};
pub use roles::refusal::RoleRefusal;
pub use roles::replica::{Input, Replica};
pub use roles::{Action, ReplicaEvent, Role, TimerKind};
pub use service::{Caller, ExecutionContext, Outcome, Service, ServiceError};
