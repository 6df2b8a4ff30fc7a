//! A service that is not deterministic, over the real runtime (docs/PBFT.md C8): one of
//! four replicas' services takes different snapshots from the others'. That replica, and
//! only it, logs that the service is probably not deterministic, counts it on the metrics
//! endpoint (`bulwark_divergences_total`) and marks it in its REPORT, which `bulwark client
//! status` shows as DIVERGED; state transfer keeps it serving.

use bulwark_actors::client::ClientOptions;
use bulwark_actors::local::LocalCluster;
use bulwark_framework::service::{Caller, ExecutionContext};
use bulwark_framework::{ProtocolParams, ReplicaId, Service, ServiceError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A counter whose snapshot, at one replica, carries a byte the others' do not: as a
/// service would that put a local clock reading or a `HashMap` order into its state.
#[derive(Debug, Default)]
struct Skewed {
    count: u64,
    skew: bool,
}

impl Service for Skewed {
    type Op = u64;
    type Reply = u64;

    fn execute(&mut self, add: &u64, _: &mut ExecutionContext) -> u64 {
        self.count += add;
        self.count
    }

    fn query(&self, _: &u64, _: &Caller) -> Option<u64> {
        None
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut bytes = self.count.to_le_bytes().to_vec();
        if self.skew {
            bytes.push(1);
        }
        bytes
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ServiceError> {
        let count: [u8; 8] = snapshot.get(..8).and_then(|b| b.try_into().ok()).ok_or(ServiceError("8 bytes".into()))?;
        self.count = u64::from_le_bytes(count);
        Ok(())
    }
}

/// Collects everything logged, on every thread.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[actix_rt::test]
async fn a_replica_whose_state_departs_from_the_quorums_says_the_service_is_not_deterministic() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).init();

    let params = ProtocolParams { checkpoint_interval: 4, watermark_window: 8, ..ProtocolParams::default() };
    let made = AtomicUsize::new(0);
    let mut cluster = LocalCluster::start(4, params, move || Skewed {
        count: 0,
        // Replicas are made in id order: the third is replica 2.
        skew: made.fetch_add(1, Ordering::SeqCst) == 2,
    })
    .await
    .unwrap();
    let options = ClientOptions { timeout: Duration::from_secs(10), ..ClientOptions::default() };
    let client = cluster.client(options).await.unwrap();
    for add in 1..=12 {
        assert_eq!(client.invoke(&1).await, Ok(add));
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    let statuses = loop {
        let statuses: Vec<_> = cluster.statuses().await.into_iter().flatten().collect();
        if statuses.iter().any(|s| s.metrics.divergences > 0) || Instant::now() > deadline {
            break statuses;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    let diverged: Vec<ReplicaId> = statuses.iter().filter(|s| s.metrics.divergences > 0).map(|s| s.id).collect();
    assert_eq!(diverged, vec![ReplicaId(2)], "{statuses:?}");

    let status = statuses.iter().find(|s| s.id == ReplicaId(2)).unwrap();
    let metrics = bulwark_actors::metrics::render(status, &Default::default(), &Default::default());
    let line = metrics.lines().find(|l| l.starts_with("bulwark_divergences_total{replica=\"2\"}")).unwrap();
    assert_ne!(line.rsplit(' ').next(), Some("0"), "{line}");

    let reports = client.inquire(Duration::from_secs(2)).await.unwrap();
    for report in &reports {
        assert_eq!(report.diverged_at.is_some(), report.replica == ReplicaId(2), "{report:?}");
    }

    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).to_string();
    let named = text.lines().find(|l| l.contains("probably not deterministic")).unwrap_or_else(|| panic!("{text}"));
    assert!(named.contains("ERROR") && named.contains("replica=r2"), "{named}");
    cluster.shutdown();
}
