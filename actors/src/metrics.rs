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
use std::fmt::Write as _;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Renders a replica's status, edge refusals and how its verifier pool answered VIEW-CHANGEs
/// and NEW-VIEWs as Prometheus text.
pub fn render(status: &ReplicaStatus, refused_at_edge: &RefusalCounts, heavy: &HeavyVerificationStats) -> String {
    let mut out = String::new();
    let replica = status.id.0;
    let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
        let _ = writeln!(out, "# HELP bulwark_{name} {help}");
        let _ = writeln!(out, "# TYPE bulwark_{name} {kind}");
        let _ = writeln!(out, "bulwark_{name}{{replica=\"{replica}\"}} {value}");
    };
    let m = &status.metrics;
    let t = &status.transport;
    let fp = &status.footprint;
    gauge("view", "Current view (the last view entered).", "gauge", status.view.0);
    gauge(
        "view_changing",
        "1 while a view change is under way (VIEW-CHANGE sent, NEW-VIEW not yet accepted), else 0.",
        "gauge",
        u64::from(status.view_change_target.is_some()),
    );
    gauge(
        "view_change_target",
        "The view being changed to during a view change; the current view otherwise.",
        "gauge",
        status.view_change_target.unwrap_or(status.view).0,
    );
    gauge("view_changes_started_total", "VIEW-CHANGE messages this replica signed.", "counter", m.view_changes_started);
    gauge(
        "views_entered_total",
        "Views entered by a NEW-VIEW (or built as the new primary).",
        "counter",
        m.views_entered,
    );
    gauge(
        "primary_equivocations_total",
        "Times a primary was caught signing two pre-prepares for one view and sequence number.",
        "counter",
        m.primary_equivocations,
    );
    gauge("stable_checkpoint", "Last stable checkpoint (low watermark).", "gauge", status.stable.0);
    gauge("last_executed", "Last executed sequence number.", "gauge", status.last_executed.0);
    gauge("requests_executed_total", "Client requests executed.", "counter", m.requests_executed);
    gauge("batches_executed_total", "Batches executed.", "counter", m.batches_executed);
    gauge("batches_proposed_total", "Batches proposed as primary.", "counter", m.batches_proposed);
    gauge("requests_shed_total", "Requests shed because the primary's queue was full.", "counter", m.requests_shed);
    gauge("status_sent_total", "STATUS messages sent (retransmission requests).", "counter", m.status_sent);
    gauge("retransmitted_total", "Messages retransmitted to stuck peers.", "counter", m.retransmitted);
    gauge(
        "retransmissions_paced_total",
        "Pre-prepares not retransmitted to a peer over its retransmission budget.",
        "counter",
        m.retransmissions_paced,
    );
    gauge("state_transfers_total", "State transfers started.", "counter", m.state_transfers);
    gauge("log_slots", "Agreement log entries (bounded by the watermark window).", "gauge", fp.log_slots as u64);
    gauge("future_messages", "Messages buffered for the next window.", "gauge", fp.future_messages as u64);
    gauge("queued_requests", "Requests queued at the primary.", "gauge", fp.queued_requests as u64);
    gauge("in_flight_batches", "Batches proposed and not yet executed.", "gauge", fp.in_flight_batches as u64);
    gauge("clients", "Clients in the client table.", "gauge", fp.clients as u64);
    gauge(
        "later_view_messages",
        "Messages buffered for a view not yet entered.",
        "gauge",
        fp.later_view_messages as u64,
    );
    gauge(
        "waiting_requests",
        "Requests waiting to execute (watched by the view-change request timer).",
        "gauge",
        fp.waiting_requests as u64,
    );
    gauge(
        "view_changes_held",
        "VIEW-CHANGE messages held from other replicas (at most one each).",
        "gauge",
        fp.view_changes_held as u64,
    );
    gauge("frames_in_total", "Frames received.", "counter", t.frames_in);
    gauge("frames_out_total", "Frames sent.", "counter", t.frames_out);
    gauge("bytes_in_total", "Bytes received.", "counter", t.bytes_in);
    gauge("bytes_out_total", "Bytes sent.", "counter", t.bytes_out);
    gauge("dropped_queue_full_total", "Frames dropped because a send queue was full.", "counter", t.dropped_queue_full);
    gauge(
        "dropped_oversized_total",
        "Frames not sent because they exceed frame_bytes_max (a NEW-VIEW among them stalls a view change).",
        "counter",
        t.dropped_oversized,
    );
    gauge(
        "connections_refused_limit_total",
        "Connections closed at once because too many were open.",
        "counter",
        t.connections_refused_limit,
    );
    gauge(
        "connections_closed_bad_input_total",
        "Connections closed for undecodable input.",
        "counter",
        t.connections_closed_bad_input,
    );
    // The pool is the process's (shared by the replicas it runs), so these count every copy
    // it was handed, for whichever replica.
    gauge(
        "heavy_verified_total",
        "VIEW-CHANGE and NEW-VIEW messages verified in full by the verifier pool.",
        "counter",
        heavy.verified_in_full,
    );
    gauge(
        "heavy_cache_hits_total",
        "Copies of VIEW-CHANGE and NEW-VIEW messages answered from the cache of verified ones.",
        "counter",
        heavy.served_from_cache,
    );
    gauge(
        "heavy_coalesced_total",
        "Copies of VIEW-CHANGE and NEW-VIEW messages answered by a verification of the same bytes under way.",
        "counter",
        heavy.coalesced,
    );
    gauge(
        "heavy_new_view_parts_from_cache_total",
        "VIEW-CHANGE messages inside a NEW-VIEW taken from the cache of verified ones instead of verified again.",
        "counter",
        heavy.view_changes_in_new_views_from_cache,
    );
    gauge(
        "heavy_cached",
        "Verified VIEW-CHANGE and NEW-VIEW messages kept (a few per member).",
        "gauge",
        heavy.cached as u64,
    );
    if let Some(store) = &status.store {
        let st = &store.metrics;
        gauge(
            "store_records_written_total",
            "Records written to the durable store (compactions included).",
            "counter",
            st.records_written,
        );
        gauge(
            "store_bytes_written_total",
            "Bytes of records written to the durable store, checksums included.",
            "counter",
            st.bytes_written,
        );
        gauge(
            "store_transactions_total",
            "Durable store write transactions (each one fsync'd group commit).",
            "counter",
            st.transactions,
        );
        gauge(
            "store_compactions_total",
            "Rewrites of the durable store after a stable checkpoint.",
            "counter",
            st.compactions,
        );
        gauge(
            "store_last_commit_us",
            "Wall time of the last durable store commit, microseconds.",
            "gauge",
            st.last_commit_us,
        );
        gauge("store_records", "Records in the durable store now.", "gauge", st.records_stored);
        gauge("store_records_loaded", "Records read from the durable store at startup.", "gauge", st.records_loaded);
        gauge(
            "store_corrupt_discarded_total",
            "Durable stores found corrupt at startup, moved aside and replaced by an empty one.",
            "counter",
            st.corrupt_discarded,
        );
        gauge(
            "store_groups_total",
            "Groups of records submitted to the durable store, one per input that persisted anything \
             (several share a transaction under load: group commit).",
            "counter",
            store.groups,
        );
        gauge(
            "store_held_actions",
            "Actions (sends, replies, timers) waiting for their records to become durable.",
            "gauge",
            store.held_actions as u64,
        );
        gauge(
            "store_inbound_pauses_total",
            "Times inbound messages were paused because more actions than the bound waited for the disk.",
            "counter",
            store.inbound_pauses,
        );
    }
    let _ = writeln!(out, "# HELP bulwark_refused_total Messages refused, by where and why.");
    let _ = writeln!(out, "# TYPE bulwark_refused_total counter");
    for (kind, count) in refused_at_edge.iter() {
        let _ =
            writeln!(out, "bulwark_refused_total{{replica=\"{replica}\",stage=\"edge\",reason=\"{kind:?}\"}} {count}");
    }
    for (reason, count) in &m.refused {
        let reason = reason.replace('"', "'");
        let _ = writeln!(
            out,
            "bulwark_refused_total{{replica=\"{replica}\",stage=\"protocol\",reason=\"{reason}\"}} {count}"
        );
    }
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
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
    use bulwark_framework::{ReplicaId, SeqNum, View};

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
}
