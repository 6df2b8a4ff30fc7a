//! Replica metrics in the Prometheus text exposition format, served over plain HTTP on an
//! optional port (`bulwark replica --metrics-port`).
//!
//! The endpoint answers every request on the port with the current metrics; it reads at
//! most a few kilobytes of the request and holds no per-connection state beyond one
//! response, so a scraper (or anyone else) cannot make it hold memory.

use crate::replica::{ReplicaHandle, ReplicaStatus};
use bulwark_framework::verify::RefusalCounts;
use bulwark_framework::Service;
use std::fmt::Write as _;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Renders a replica's status and edge refusals as Prometheus text.
pub fn render(status: &ReplicaStatus, refused_at_edge: &RefusalCounts) -> String {
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
    gauge("view", "Current view.", "gauge", status.view.0);
    gauge("stable_checkpoint", "Last stable checkpoint (low watermark).", "gauge", status.stable.0);
    gauge("last_executed", "Last executed sequence number.", "gauge", status.last_executed.0);
    gauge("requests_executed_total", "Client requests executed.", "counter", m.requests_executed);
    gauge("batches_executed_total", "Batches executed.", "counter", m.batches_executed);
    gauge("batches_proposed_total", "Batches proposed as primary.", "counter", m.batches_proposed);
    gauge("requests_shed_total", "Requests shed because the primary's queue was full.", "counter", m.requests_shed);
    gauge("status_sent_total", "STATUS messages sent (retransmission requests).", "counter", m.status_sent);
    gauge("retransmitted_total", "Messages retransmitted to stuck peers.", "counter", m.retransmitted);
    gauge("state_transfers_total", "State transfers started.", "counter", m.state_transfers);
    gauge("log_slots", "Agreement log entries (bounded by the watermark window).", "gauge", fp.log_slots as u64);
    gauge("future_messages", "Messages buffered for the next window.", "gauge", fp.future_messages as u64);
    gauge("queued_requests", "Requests queued at the primary.", "gauge", fp.queued_requests as u64);
    gauge("in_flight_batches", "Batches proposed and not yet executed.", "gauge", fp.in_flight_batches as u64);
    gauge("clients", "Clients in the client table.", "gauge", fp.clients as u64);
    gauge("frames_in_total", "Frames received.", "counter", t.frames_in);
    gauge("frames_out_total", "Frames sent.", "counter", t.frames_out);
    gauge("bytes_in_total", "Bytes received.", "counter", t.bytes_in);
    gauge("bytes_out_total", "Bytes sent.", "counter", t.bytes_out);
    gauge("dropped_queue_full_total", "Frames dropped because a send queue was full.", "counter", t.dropped_queue_full);
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
            Some(status) => render(&status, &replica.refused()),
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
