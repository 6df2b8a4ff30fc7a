//! The null service of the PBFT paper's micro benchmarks: an operation carries a payload of
//! some size and asks for a reply of some size; executing it only counts it. Benchmarks use
//! it to measure the replication protocol rather than a service.

use bulwark_framework::service::{Caller, ExecutionContext, Service, ServiceError};
use serde::{Deserialize, Serialize};

/// Largest reply an operation may ask for.
pub const REPLY_BYTES_MAX: u32 = 64 * 1024;

/// An operation: `payload` bytes in, `reply_bytes` bytes out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoOp {
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub reply_bytes: u32,
    /// Answer from current state without ordering (the read-only path).
    pub read_only: bool,
}

/// A reply of the requested size (zeros), capped at [`REPLY_BYTES_MAX`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReply(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// The service: its whole state is the number of operations executed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Echo {
    executed: u64,
}

impl Echo {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn executed(&self) -> u64 {
        self.executed
    }
}

fn reply(op: &EchoOp) -> EchoReply {
    EchoReply(vec![0; op.reply_bytes.min(REPLY_BYTES_MAX) as usize])
}

impl Service for Echo {
    type Op = EchoOp;
    type Reply = EchoReply;

    fn execute(&mut self, op: &EchoOp, _: &mut ExecutionContext) -> EchoReply {
        self.executed += 1;
        reply(op)
    }

    fn query(&self, op: &EchoOp, _: &Caller) -> Option<EchoReply> {
        op.read_only.then(|| reply(op))
    }

    fn snapshot(&self) -> Vec<u8> {
        self.executed.to_le_bytes().to_vec()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ServiceError> {
        let bytes: [u8; 8] = snapshot
            .try_into()
            .map_err(|_| ServiceError(format!("echo snapshot is {} bytes, expected 8", snapshot.len())))?;
        self.executed = u64::from_le_bytes(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execute_counts_and_answers_the_requested_size() {
        let mut echo = Echo::new();
        let op = EchoOp { payload: vec![1; 10], reply_bytes: 4096, read_only: false };
        assert_eq!(echo.execute(&op, &mut ExecutionContext::test(Caller::test(1), 1, 0)).0.len(), 4096);
        assert_eq!(echo.executed(), 1);
        let huge = EchoOp { payload: vec![], reply_bytes: u32::MAX, read_only: false };
        assert_eq!(
            echo.execute(&huge, &mut ExecutionContext::test(Caller::test(1), 1, 0)).0.len(),
            REPLY_BYTES_MAX as usize
        );
    }

    #[test]
    fn snapshot_round_trips_and_garbage_is_refused() {
        let mut echo = Echo::new();
        echo.execute(
            &EchoOp { payload: vec![], reply_bytes: 0, read_only: false },
            &mut ExecutionContext::test(Caller::test(1), 1, 0),
        );
        let mut other = Echo::new();
        other.restore(&echo.snapshot()).unwrap();
        assert_eq!(other, echo);
        assert!(other.restore(b"abc").is_err());
    }

    #[test]
    fn only_read_only_operations_are_answered_by_query() {
        let echo = Echo::new();
        assert!(echo.query(&EchoOp { payload: vec![], reply_bytes: 1, read_only: false }, &Caller::test(1)).is_none());
        assert!(echo.query(&EchoOp { payload: vec![], reply_bytes: 1, read_only: true }, &Caller::test(1)).is_some());
    }
}
