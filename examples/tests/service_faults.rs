//! A service's mistakes over the real runtime (docs/PBFT.md E6): one client's operation
//! divides by zero at every replica of a durable cluster; that client is told the service
//! failed, the other client keeps being served, the digests agree, and the whole cluster
//! restarted from its stores replays the batch without going down. A reply over
//! `reply_bytes_max` reaches its client as a typed error.

use bulwark_actors::client::{ClientOptions, InvokeError};
use bulwark_actors::local::LocalCluster;
use bulwark_framework::service::{Caller, ExecutionContext};
use bulwark_framework::{ProtocolParams, Service, ServiceError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Op {
    Set(String, u64),
    /// Divides the value by `divisor`: a divisor of 0 panics, as a careless service would.
    Divide(String, u64),
    /// A reply of this many bytes.
    Big(usize),
}

#[derive(Debug, Default)]
struct Fragile(BTreeMap<String, u64>);

impl Service for Fragile {
    type Op = Op;
    type Reply = Vec<u8>;

    fn execute(&mut self, op: &Op, _: &mut ExecutionContext) -> Vec<u8> {
        match op {
            Op::Set(key, value) => {
                self.0.insert(key.clone(), *value);
            }
            Op::Divide(key, divisor) => {
                let value = self.0.entry(key.clone()).or_insert(100);
                *value /= *divisor;
            }
            Op::Big(bytes) => return vec![1; *bytes],
        }
        Vec::new()
    }

    fn query(&self, _: &Op, _: &Caller) -> Option<Vec<u8>> {
        None
    }

    fn snapshot(&self) -> Vec<u8> {
        rmp_serde::to_vec(&self.0).unwrap()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ServiceError> {
        self.0 = rmp_serde::from_slice(snapshot).map_err(|e| ServiceError(e.to_string()))?;
        Ok(())
    }
}

fn options() -> ClientOptions {
    ClientOptions { timeout: Duration::from_secs(10), ..ClientOptions::default() }
}

#[actix_rt::test]
async fn a_panicking_operation_is_answered_and_a_durable_cluster_restarts_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let params = ProtocolParams { reply_bytes_max: 4_096, ..ProtocolParams::default() };
    let mut cluster =
        LocalCluster::start_in(4, params, Fragile::default, Some(dir.path().to_path_buf())).await.unwrap();
    let (poisoner, other) = (cluster.client(options()).await.unwrap(), cluster.client(options()).await.unwrap());

    other.invoke(&Op::Set("a".into(), 1)).await.unwrap();
    assert_eq!(poisoner.invoke(&Op::Divide("x".into(), 0)).await, Err(InvokeError::ServiceFailed));
    for i in 0..20 {
        other.invoke(&Op::Set(format!("k{i}"), i)).await.unwrap();
    }
    assert_eq!(poisoner.invoke(&Op::Divide("x".into(), 4)).await, Ok(Vec::new()), "the poisoner is served too");
    let too_large = other.invoke(&Op::Big(10_000)).await;
    assert!(matches!(too_large, Err(InvokeError::ReplyTooLarge { limit: 4_096, .. })), "{too_large:?}");

    let (agree, statuses) = cluster.settle(Duration::from_secs(10)).await;
    assert!(agree && statuses.len() == 4, "{statuses:?}");
    for status in &statuses {
        assert_eq!(status.metrics.service_faults.get("Panicked"), Some(&1), "replica {}", status.id.0);
        assert_eq!(status.metrics.service_faults.get("ReplyTooLarge"), Some(&1), "replica {}", status.id.0);
    }

    // Every replica restarts from its store and executes the stored batches again, the one
    // that panicked included: none goes down, and they agree and serve.
    cluster.restart(Fragile::default).await.unwrap();
    let after = cluster.client(options()).await.unwrap();
    after.invoke(&Op::Set("after".into(), 1)).await.unwrap();
    let (agree, statuses) = cluster.settle(Duration::from_secs(10)).await;
    assert!(agree && statuses.len() == 4, "after the restart: {statuses:?}");
    for status in &statuses {
        let replayed = status.metrics.service_faults.get("Panicked");
        assert_eq!(replayed, Some(&1), "replica {} replayed the batch that panicked", status.id.0);
        assert!(status.store.as_ref().is_some_and(|store| store.metrics.records_loaded > 0), "{status:?}");
    }
    cluster.shutdown();
}
