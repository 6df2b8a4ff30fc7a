//! Identifier and time newtypes. No bare integer stands for a cluster, an epoch, a view, a
//! sequence number or a replica anywhere in the protocol code.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty), $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}

id_newtype!(
    /// A cluster: a lone Bulwark cluster, or one site of a Steward deployment. Written in
    /// the cluster file; every signature binds it (see [`crate::membership::Scope`]).
    ClusterId(u32), "k"
);
id_newtype!(
    /// The generation of a cluster's membership: 0 for the members the cluster was formed
    /// with, one more at each reconfiguration. Every replica signature binds it.
    Epoch(u64), "e"
);
id_newtype!(
    /// A replica's stable name in its cluster: any number, chosen when the replica joins
    /// and kept for as long as it is a member. Never a position in a list: the members
    /// of a cluster need not be `0..n`, and the primary of a view is found in the sorted
    /// member list ([`crate::membership::Membership::primary`]).
    ReplicaId(u32), "r"
);
id_newtype!(
    /// A client, named by the first eight bytes of the digest of its public key.
    ClientId(u64), "c"
);
id_newtype!(
    /// A view number; its primary is member `v mod n` of the sorted member list.
    View(u64), "v"
);
id_newtype!(
    /// A sequence number assigned by the primary. Sequence 0 is the initial state.
    SeqNum(u64), "s"
);
id_newtype!(
    /// A client request timestamp: unique and increasing per client (PBFT.md CX1).
    Timestamp(u64), "t"
);

/// A replica of some cluster: how a transport names a peer it dials, which may belong to
/// another cluster (a Steward site speaking to another site).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId {
    pub cluster: ClusterId,
    pub replica: ReplicaId,
}

impl PeerId {
    pub fn new(cluster: ClusterId, replica: ReplicaId) -> Self {
        PeerId { cluster, replica }
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}/{:?}", self.cluster, self.replica)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl SeqNum {
    /// Saturating: numbers come from the network, and one near `u64::MAX` (refused or not
    /// further on) must not overflow on the way there.
    pub fn next(self) -> SeqNum {
        SeqNum(self.0.saturating_add(1))
    }
}

impl View {
    /// Saturating, like [`SeqNum::next`].
    pub fn next(self) -> View {
        View(self.0.saturating_add(1))
    }
}

/// A point in time, in microseconds since an arbitrary origin chosen by the runtime.
///
/// Roles never read a clock: the runtime (actix or the simulator) passes the current
/// `Instant` with every input.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Instant(pub u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);

    pub fn from_micros(micros: u64) -> Self {
        Instant(micros)
    }

    pub fn as_micros(self) -> u64 {
        self.0
    }

    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(rhs.as_micros() as u64))
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}
