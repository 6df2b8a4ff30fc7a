//! Replica metrics in the Prometheus text exposition format, served over plain HTTP on an
//! optional port (`bulwark replica --metrics-port`).
//!
//! The endpoint answers every request on the port with the current metrics; it reads at
//! most a few kilobytes of the request and holds no per-connection state beyond one
//! response, so a scraper (or anyone else) cannot make it hold memory.

use crate::replica::{ReplicaHandle, ReplicaStatus};
use crate::verified_cache::HeavyVerificationStats;
use bulwark_framework::verify::RefusalCounts;
use bulwark_framework::Service;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The labels of every metric but the refusals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica: u32,
}

/// The labels of `bulwark_refused_total`: where a message was refused (`edge`: by the
/// verifier, before the roles see it; `protocol`: by a role's acceptance rules) and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    replica: u32,
    stage: &'static str,
    reason: String,
}

/// The labels of `bulwark_service_faults_total`: what the service did wrong (the
/// `ServiceFault` variant's name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    replica: u32,
    kind: &'static str,
}

/// A registry being filled with one replica's metrics, each family labelled by the replica.
/// The registry appends the full stop to each help text and, to a counter's name, `_total`.
struct ReplicaRegistry {
    registry: Registry,
    replica: ReplicaLabels,
}

impl ReplicaRegistry {
    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        let family = Family::<ReplicaLabels, Gauge<u64, AtomicU64>>::default();
        family.get_or_create(&self.replica).set(value);
        self.registry.register(name, help, family);
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let family = Family::<ReplicaLabels, Counter>::default();
        family.get_or_create(&self.replica).inc_by(value);
        self.registry.register(name, help, family);
    }
}

/// Renders a replica's status, edge refusals and how its verifier pool answered VIEW-CHANGEs
/// and NEW-VIEWs as Prometheus text (format 0.0.4).
pub fn render(status: &ReplicaStatus, refused_at_edge: &RefusalCounts, heavy: &HeavyVerificationStats) -> String {
    let replica = status.id.0;
    let mut metrics =
        ReplicaRegistry { registry: Registry::with_prefix("bulwark"), replica: ReplicaLabels { replica } };
    let m = &status.metrics;
    let t = &status.transport;
    let fp = &status.footprint;
    metrics.gauge("view", "Current view (the last view entered)", status.view.0);
    metrics.gauge(
        "view_changing",
        "1 while a view change is under way (VIEW-CHANGE sent, NEW-VIEW not yet accepted), else 0",
        u64::from(status.view_change_target.is_some()),
    );
    metrics.gauge(
        "view_change_target",
        "The view being changed to during a view change; the current view otherwise",
        status.view_change_target.unwrap_or(status.view).0,
    );
    metrics.counter("view_changes_started", "VIEW-CHANGE messages this replica signed", m.view_changes_started);
    metrics.counter("views_entered", "Views entered by a NEW-VIEW (or built as the new primary)", m.views_entered);
    metrics.counter(
        "primary_equivocations",
        "Times a primary was caught signing two pre-prepares for one view and sequence number",
        m.primary_equivocations,
    );
    metrics.gauge("stable_checkpoint", "Last stable checkpoint (low watermark)", status.stable.0);
    metrics.gauge("last_executed", "Last executed sequence number", status.last_executed.0);
    metrics.counter("requests_executed", "Client requests executed", m.requests_executed);
    metrics.counter("batches_executed", "Batches executed", m.batches_executed);
    metrics.counter("batches_proposed", "Batches proposed as primary", m.batches_proposed);
    metrics.counter("requests_shed", "Requests shed because the primary's queue was full", m.requests_shed);
    metrics.counter("status_sent", "STATUS messages sent (retransmission requests)", m.status_sent);
    metrics.counter("retransmitted", "Messages retransmitted to stuck peers", m.retransmitted);
    metrics.counter(
        "retransmissions_paced",
        "Pre-prepares not retransmitted to a peer over its retransmission budget",
        m.retransmissions_paced,
    );
    metrics.counter("state_transfers", "State transfers started", m.state_transfers);
    metrics.gauge("log_slots", "Agreement log entries (bounded by the watermark window)", fp.log_slots as u64);
    metrics.gauge("future_messages", "Messages buffered for the next window", fp.future_messages as u64);
    metrics.gauge("queued_requests", "Requests queued at the primary", fp.queued_requests as u64);
    metrics.gauge("in_flight_batches", "Batches proposed and not yet executed", fp.in_flight_batches as u64);
    metrics.gauge("clients", "Clients in the client table", fp.clients as u64);
    metrics.gauge("later_view_messages", "Messages buffered for a view not yet entered", fp.later_view_messages as u64);
    metrics.gauge(
        "waiting_requests",
        "Requests waiting to execute (watched by the view-change request timer)",
        fp.waiting_requests as u64,
    );
    metrics.gauge(
        "view_changes_held",
        "VIEW-CHANGE messages held from other replicas (at most one each)",
        fp.view_changes_held as u64,
    );
    metrics.counter("frames_in", "Frames received", t.frames_in);
    metrics.counter("frames_out", "Frames sent", t.frames_out);
    metrics.counter("bytes_in", "Bytes received", t.bytes_in);
    metrics.counter("bytes_out", "Bytes sent", t.bytes_out);
    metrics.counter("dropped_queue_full", "Frames dropped because a send queue was full", t.dropped_queue_full);
    metrics.counter(
        "dropped_oversized",
        "Frames not sent because they exceed frame_bytes_max (a NEW-VIEW among them stalls a view change)",
        t.dropped_oversized,
    );
    metrics.counter(
        "connections_refused_limit",
        "Connections closed at once because too many were open",
        t.connections_refused_limit,
    );
    metrics.counter(
        "connections_closed_bad_input",
        "Connections closed for undecodable input",
        t.connections_closed_bad_input,
    );
    // The pool is the process's (shared by the replicas it runs), so these count every copy
    // it was handed, for whichever replica.
    metrics.counter(
        "heavy_verified",
        "VIEW-CHANGE and NEW-VIEW messages verified in full by the verifier pool",
        heavy.verified_in_full,
    );
    metrics.counter(
        "heavy_cache_hits",
        "Copies of VIEW-CHANGE and NEW-VIEW messages answered from the cache of verified ones",
        heavy.served_from_cache,
    );
    metrics.counter(
        "heavy_coalesced",
        "Copies of VIEW-CHANGE and NEW-VIEW messages answered by a verification of the same bytes under way",
        heavy.coalesced,
    );
    metrics.counter(
        "heavy_new_view_parts_from_cache",
        "VIEW-CHANGE messages inside a NEW-VIEW taken from the cache of verified ones instead of verified again",
        heavy.view_changes_in_new_views_from_cache,
    );
    metrics.gauge(
        "heavy_cached",
        "Verified VIEW-CHANGE and NEW-VIEW messages kept (a few per member)",
        heavy.cached as u64,
    );
    if let Some(store) = &status.store {
        let st = &store.metrics;
        metrics.counter(
            "store_records_written",
            "Records written to the durable store (compactions included)",
            st.records_written,
        );
        metrics.counter(
            "store_bytes_written",
            "Bytes of records written to the durable store, checksums included",
            st.bytes_written,
        );
        metrics.counter(
            "store_transactions",
            "Durable store write transactions (each one fsync'd group commit)",
            st.transactions,
        );
        metrics.counter("store_compactions", "Rewrites of the durable store after a stable checkpoint", st.compactions);
        metrics.gauge(
            "store_last_commit_us",
            "Wall time of the last durable store commit, microseconds",
            st.last_commit_us,
        );
        metrics.gauge("store_records", "Records in the durable store now", st.records_stored);
        metrics.gauge("store_records_loaded", "Records read from the durable store at startup", st.records_loaded);
        metrics.counter(
            "store_corrupt_discarded",
            "Durable stores found corrupt at startup, moved aside and replaced by an empty one",
            st.corrupt_discarded,
        );
        metrics.counter(
            "store_groups",
            "Groups of records submitted to the durable store, one per input that persisted anything \
             (several share a transaction under load: group commit)",
            store.groups,
        );
        metrics.gauge(
            "store_held_actions",
            "Actions (sends, replies, timers) waiting for their records to become durable",
            store.held_actions as u64,
        );
        metrics.counter(
            "store_inbound_pauses",
            "Times inbound messages were paused because more actions than the bound waited for the disk",
            store.inbound_pauses,
        );
    }
    let refused = Family::<RefusalLabels, Counter>::default();
    for (kind, count) in refused_at_edge.iter() {
        refused.get_or_create(&RefusalLabels { replica, stage: "edge", reason: format!("{kind:?}") }).inc_by(count);
    }
    for (reason, count) in &m.refused {
        refused
            .get_or_create(&RefusalLabels { replica, stage: "protocol", reason: reason.label().to_owned() })
            .inc_by(*count);
    }
    metrics.registry.register("refused", "Messages refused, by where and why", refused);
    metrics.counter(
        "divergences",
        "Stable checkpoints at which this replica's own state differed from the quorum's: \
         the service is probably not deterministic",
        m.divergences,
    );
    let faults = Family::<FaultLabels, Counter>::default();
    for (kind, count) in &m.service_faults {
        faults.get_or_create(&FaultLabels { replica, kind }).inc_by(*count);
    }
    metrics.registry.register(
        "service_faults",
        "What the service did wrong (a panic in execute or query, a reply over reply_bytes_max, a refused \
         snapshot, a rebuild that came out different), by kind",
        faults,
    );
    let mut out = String::new();
    prometheus_text::encode(&mut out, &metrics.registry).expect("writing to a String cannot fail");
    out
}

/// Serves `replica`'s metrics on `address` until the process ends. Must run inside an
/// actix System (it asks the replica actor for its status).
pub async fn serve<S: Service + Send + Unpin>(address: SocketAddr, replica: ReplicaHandle<S>) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics listener accept failed");
                continue;
            }
        };
        let mut request = [0u8; 4096];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), stream.read(&mut request)).await;
        let body = match replica.status().await {
            Some(status) => render(&status, &replica.refused(), &replica.verifier.heavy_stats()),
            None => String::from("# replica stopped\n"),
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            prometheus_text::CONTENT_TYPE,
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_framework::roles::replica::{Footprint, ReplicaMetrics};
    use bulwark_framework::{ReplicaId, RoleRefusal, SeqNum, View};

    fn status(view: u64, target: Option<u64>) -> ReplicaStatus {
        ReplicaStatus {
            id: ReplicaId(2),
            view: View(view),
            view_change_target: target.map(View),
            stable: SeqNum(128),
            last_executed: SeqNum(130),
            state_digest: Default::default(),
            metrics: ReplicaMetrics {
                view_changes_started: 3,
                views_entered: 2,
                primary_equivocations: 1,
                ..ReplicaMetrics::default()
            },
            footprint: Footprint { waiting_requests: 7, ..Footprint::default() },
            transport: Default::default(),
            store: None,
        }
    }

    fn value(text: &str, name: &str) -> u64 {
        let prefix = format!("bulwark_{name}{{replica=\"2\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    #[test]
    fn view_change_metrics_are_exported() {
        let text = render(&status(2, None), &RefusalCounts::default(), &HeavyVerificationStats::default());
        assert_eq!(value(&text, "view"), 2);
        assert_eq!(value(&text, "view_changing"), 0);
        assert_eq!(value(&text, "view_change_target"), 2);
        assert_eq!(value(&text, "view_changes_started_total"), 3);
        assert_eq!(value(&text, "views_entered_total"), 2);
        assert_eq!(value(&text, "primary_equivocations_total"), 1);
        assert_eq!(value(&text, "waiting_requests"), 7);
        assert!(text.contains("# TYPE bulwark_views_entered_total counter"), "{text}");

        let text = render(&status(2, Some(4)), &RefusalCounts::default(), &HeavyVerificationStats::default());
        assert_eq!(value(&text, "view"), 2);
        assert_eq!(value(&text, "view_changing"), 1);
        assert_eq!(value(&text, "view_change_target"), 4);
        assert!(!text.contains("bulwark_store_"), "no store metrics without a store: {text}");
    }

    #[test]
    fn heavy_verification_metrics_are_exported() {
        let heavy = HeavyVerificationStats {
            verified_in_full: 5,
            served_from_cache: 40,
            coalesced: 7,
            view_changes_in_new_views_from_cache: 6,
            cached: 3,
        };
        let text = render(&status(0, None), &RefusalCounts::default(), &heavy);
        assert_eq!(value(&text, "heavy_verified_total"), 5);
        assert_eq!(value(&text, "heavy_cache_hits_total"), 40);
        assert_eq!(value(&text, "heavy_coalesced_total"), 7);
        assert_eq!(value(&text, "heavy_new_view_parts_from_cache_total"), 6);
        assert_eq!(value(&text, "heavy_cached"), 3);
        assert!(text.contains("# TYPE bulwark_heavy_cache_hits_total counter"), "{text}");
    }

    #[test]
    fn store_metrics_are_exported() {
        use crate::replica::StoreStatus;
        use crate::store::StoreMetrics;
        let mut status = status(0, None);
        status.store = Some(StoreStatus {
            metrics: StoreMetrics {
                records_written: 10,
                bytes_written: 2_000,
                transactions: 4,
                compactions: 1,
                last_commit_us: 1_500,
                records_stored: 6,
                records_loaded: 3,
                corrupt_discarded: 1,
            },
            groups: 9,
            held_actions: 5,
            inbound_pauses: 2,
        });
        let text = render(&status, &RefusalCounts::default(), &HeavyVerificationStats::default());
        assert_eq!(value(&text, "store_records_written_total"), 10);
        assert_eq!(value(&text, "store_bytes_written_total"), 2_000);
        assert_eq!(value(&text, "store_transactions_total"), 4);
        assert_eq!(value(&text, "store_compactions_total"), 1);
        assert_eq!(value(&text, "store_last_commit_us"), 1_500);
        assert_eq!(value(&text, "store_records"), 6);
        assert_eq!(value(&text, "store_records_loaded"), 3);
        assert_eq!(value(&text, "store_corrupt_discarded_total"), 1);
        assert_eq!(value(&text, "store_groups_total"), 9);
        assert_eq!(value(&text, "store_held_actions"), 5);
        assert_eq!(value(&text, "store_inbound_pauses_total"), 2);
        assert!(text.contains("# TYPE bulwark_store_corrupt_discarded_total counter"), "{text}");
    }

    /// Every metric family the endpoint exposes, with its type: the names the README and
    /// dashboards rely on.
    const FAMILIES: [(&str, &str); 51] = [
        ("view", "gauge"),
        ("view_changing", "gauge"),
        ("view_change_target", "gauge"),
        ("view_changes_started_total", "counter"),
        ("views_entered_total", "counter"),
        ("primary_equivocations_total", "counter"),
        ("stable_checkpoint", "gauge"),
        ("last_executed", "gauge"),
        ("requests_executed_total", "counter"),
        ("batches_executed_total", "counter"),
        ("batches_proposed_total", "counter"),
        ("requests_shed_total", "counter"),
        ("status_sent_total", "counter"),
        ("retransmitted_total", "counter"),
        ("retransmissions_paced_total", "counter"),
        ("state_transfers_total", "counter"),
        ("log_slots", "gauge"),
        ("future_messages", "gauge"),
        ("queued_requests", "gauge"),
        ("in_flight_batches", "gauge"),
        ("clients", "gauge"),
        ("later_view_messages", "gauge"),
        ("waiting_requests", "gauge"),
        ("view_changes_held", "gauge"),
        ("frames_in_total", "counter"),
        ("frames_out_total", "counter"),
        ("bytes_in_total", "counter"),
        ("bytes_out_total", "counter"),
        ("dropped_queue_full_total", "counter"),
        ("dropped_oversized_total", "counter"),
        ("connections_refused_limit_total", "counter"),
        ("connections_closed_bad_input_total", "counter"),
        ("heavy_verified_total", "counter"),
        ("heavy_cache_hits_total", "counter"),
        ("heavy_coalesced_total", "counter"),
        ("heavy_new_view_parts_from_cache_total", "counter"),
        ("heavy_cached", "gauge"),
        ("store_records_written_total", "counter"),
        ("store_bytes_written_total", "counter"),
        ("store_transactions_total", "counter"),
        ("store_compactions_total", "counter"),
        ("store_last_commit_us", "gauge"),
        ("store_records", "gauge"),
        ("store_records_loaded", "gauge"),
        ("store_corrupt_discarded_total", "counter"),
        ("store_groups_total", "counter"),
        ("store_held_actions", "gauge"),
        ("store_inbound_pauses_total", "counter"),
        ("refused_total", "counter"),
        ("divergences_total", "counter"),
        ("service_faults_total", "counter"),
    ];

    /// What one family's lines say: its HELP and TYPE lines and its samples.
    #[derive(Debug, Default)]
    struct Exposed {
        helps: Vec<String>,
        types: Vec<String>,
        samples: usize,
    }

    /// Reads the text format enough to group its lines by family. A sample's family is its
    /// name (none of ours has a histogram's `_bucket`, `_sum` or `_count` lines).
    fn families(text: &str) -> std::collections::BTreeMap<String, Exposed> {
        let mut families = std::collections::BTreeMap::<String, Exposed>::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("HELP without text: {line}"));
                families.entry(name.to_owned()).or_default().helps.push(help.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("TYPE without a type: {line}"));
                families.entry(name.to_owned()).or_default().types.push(kind.to_owned());
            } else {
                assert!(!line.starts_with('#'), "unexpected comment: {line}");
                let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("sample without a value: {line}"));
                let value = line.rsplit_once(' ').map(|(_, value)| value).unwrap_or_default();
                assert!(value.parse::<u64>().is_ok(), "sample without a number: {line}");
                families.entry(line[..name_end].to_owned()).or_default().samples += 1;
            }
        }
        families
    }

    #[test]
    fn every_metric_appears_once_with_its_help_and_type() {
        use crate::replica::StoreStatus;
        let mut status = status(0, None);
        status.store = Some(StoreStatus { metrics: Default::default(), groups: 0, held_actions: 0, inbound_pauses: 0 });
        status.metrics.refused.insert(RoleRefusal::PrepareForAnotherView, 1);
        status.metrics.service_faults.insert("Panicked", 2);
        let text = render(&status, &RefusalCounts::default(), &HeavyVerificationStats::default());
        assert!(text.contains(r#"bulwark_service_faults_total{replica="2",kind="Panicked"} 2"#), "{text}");
        let exposed = families(&text);
        for (name, kind) in FAMILIES {
            let family = exposed.get(&format!("bulwark_{name}")).unwrap_or_else(|| panic!("no {name} in {text}"));
            assert_eq!(family.helps.len(), 1, "{name}: {family:?}");
            assert!(family.helps[0].ends_with('.') && family.helps[0].len() > 1, "{name}: {family:?}");
            assert_eq!(family.types, [kind], "{name}");
            assert_eq!(family.samples, 1, "{name}: one replica, one sample");
        }
        assert_eq!(exposed.len(), FAMILIES.len(), "families nobody listed: {exposed:?}");
    }

    /// Each refusal is labelled by its name, a role's as an edge's: what a dashboard
    /// selects on does not change when a log text is reworded.
    #[test]
    fn refusals_are_labelled_by_stage_and_name() {
        let mut status = status(0, None);
        status.metrics.refused.insert(RoleRefusal::ConflictingPrepare, 3);
        let mut edge = RefusalCounts::default();
        edge.add(bulwark_framework::verify::RefusalKind::BadSignature, 5);
        let text = render(&status, &edge, &HeavyVerificationStats::default());
        let samples: Vec<&str> = text.lines().filter(|line| line.starts_with("bulwark_refused_total")).collect();
        assert_eq!(samples.len(), 2, "{text}");
        let protocol = r#"bulwark_refused_total{replica="2",stage="protocol",reason="ConflictingPrepare"} 3"#;
        assert!(samples.contains(&protocol), "{samples:?}");
        assert!(samples.contains(&r#"bulwark_refused_total{replica="2",stage="edge",reason="BadSignature"} 5"#));
        assert_eq!(families(&text)["bulwark_refused_total"].samples, 2);
    }
}
