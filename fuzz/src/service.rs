//! The replicated service the fuzzed replicas run: small, deterministic, and refusing
//! (never panicking on) snapshots it did not write.

use bulwark_framework::{Service, ServiceError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The operations of [`FuzzKv`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FuzzOp {
    Put { key: u8, value: Vec<u8> },
    Get { key: u8 },
}

/// A tiny key-value store: deterministic, canonical snapshots, and a `restore` that
/// refuses (never panics on) bytes it did not write.
#[derive(Debug, Default, Clone)]
pub struct FuzzKv {
    pub(crate) map: BTreeMap<u8, Vec<u8>>,
}

impl Service for FuzzKv {
    type Op = FuzzOp;
    type Reply = Option<Vec<u8>>;

    fn execute(&mut self, op: &FuzzOp, _: &mut bulwark_framework::service::ExecutionContext) -> Option<Vec<u8>> {
        match op {
            FuzzOp::Put { key, value } => self.map.insert(*key, value.clone()),
            FuzzOp::Get { key } => self.map.get(key).cloned(),
        }
    }

    fn query(&self, op: &FuzzOp, _: &bulwark_framework::service::Caller) -> Option<Option<Vec<u8>>> {
        match op {
            FuzzOp::Get { key } => Some(self.map.get(key).cloned()),
            FuzzOp::Put { .. } => None,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        rmp_serde::to_vec(&self.map).expect("a map of bytes always encodes")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ServiceError> {
        self.map = rmp_serde::from_slice(snapshot).map_err(|e| ServiceError(e.to_string()))?;
        Ok(())
    }
}
