//! The first test to run on a new service: does it give the same replies and the same
//! snapshot bytes when two instances run one operation sequence? A service that iterates a
//! `HashMap`, reads the clock or draws its own random numbers usually does not, and a
//! cluster running it would never agree on a checkpoint.
//!
//! Two instances made by the same constructor get different `HashMap` hash keys (the
//! standard library draws fresh keys for every map), so iteration-order bugs show.

use crate::ids::SeqNum;
use crate::service::{Caller, ExecutionContext, Service};
use bulwark_crypto::Digest;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Where two instances of a service first differed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotDeterministic {
    #[error("operation {index} ({operation}): the replies differ: {first} vs {second}")]
    Replies { index: usize, operation: String, first: String, second: String },
    #[error("after operation {index} ({operation}): the snapshots differ (digests {first} and {second})")]
    Snapshots { index: usize, operation: String, first: Digest, second: Digest },
    #[error("after operation {index}: restoring the snapshot and taking it again gives other bytes")]
    NotCanonical { index: usize },
    #[error("after operation {index}: the service refused its own snapshot: {message}")]
    RestoreFailed { index: usize, message: String },
    #[error("operation {index} ({operation}) panicked in one instance and not in the other")]
    Panicked { index: usize, operation: String },
}

/// Runs `operations` in order (as `caller`, one per batch, the agreed time advancing by a
/// second each) on two instances from `make_service`, and a third restored from the first's
/// snapshot after every operation. Checks after each operation that the replies are equal,
/// the snapshots are byte for byte equal, and a snapshot restored and taken again is the same
/// bytes. A panic must happen in both instances or in neither.
pub fn check_determinism<S: Service>(
    make_service: impl Fn() -> S,
    operations: &[S::Op],
    caller: Caller,
) -> Result<(), NotDeterministic>
where
    S::Reply: Debug,
{
    let (mut first, mut second, mut restored) = (make_service(), make_service(), make_service());
    for (index, operation) in operations.iter().enumerate() {
        let batch = Digest::of(&index.to_le_bytes());
        let context = || ExecutionContext::new(caller, SeqNum(index as u64 + 1), 1_000_000 * index as u64, &batch, 0);
        let text = || format!("{operation:?}");
        let before = first.snapshot();
        let a = catch_unwind(AssertUnwindSafe(|| first.execute(operation, &mut context())));
        let b = catch_unwind(AssertUnwindSafe(|| second.execute(operation, &mut context())));
        match (a, b) {
            (Ok(a), Ok(b)) if a != b => {
                let (first, second) = (format!("{a:?}"), format!("{b:?}"));
                return Err(NotDeterministic::Replies { index, operation: text(), first, second });
            }
            (Ok(_), Ok(_)) => {}
            (Err(_), Err(_)) => {
                // Both panicked: the operation has no effect, as at a replica (E6).
                for service in [&mut first, &mut second] {
                    *service = make_service();
                    service.restore(&before).map_err(|e| NotDeterministic::RestoreFailed { index, message: e.0 })?;
                }
            }
            _ => return Err(NotDeterministic::Panicked { index, operation: text() }),
        }
        let (snapshot, other) = (first.snapshot(), second.snapshot());
        if snapshot != other {
            let (first, second) = (Digest::of(&snapshot), Digest::of(&other));
            return Err(NotDeterministic::Snapshots { index, operation: text(), first, second });
        }
        restored.restore(&snapshot).map_err(|e| NotDeterministic::RestoreFailed { index, message: e.0 })?;
        if restored.snapshot() != snapshot {
            return Err(NotDeterministic::NotCanonical { index });
        }
    }
    Ok(())
}
