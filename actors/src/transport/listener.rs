//! The accept path: the listener takes connections from anyone, up to a bound on how many are
//! open at once (each holds bounded buffers, so their number bounds memory), and runs each on
//! a task of its own so that one bad or slow connection never holds up the others.

use super::connection::{run_connection, ConnectionEnd};
use super::stats::bump;
use super::{shut_down, Context};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Pause after a failed `accept` (typically out of file descriptors), so the listener
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Accepts connections until shutdown; each gets its own task, so one bad or slow
/// connection never holds up the others.
pub(super) async fn run_listener(listener: TcpListener, context: Context) {
    let mut shutdown = context.shutdown.clone();
    let open = Arc::new(tokio::sync::Semaphore::new(context.accepted_connections_max));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shut_down(&mut shutdown) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = open.clone().try_acquire_owned() else {
                    // Every connection holds bounded buffers, but their number must be
                    // bounded too: beyond the limit a new connection is closed at once.
                    bump(&context.counters.connections_refused_limit, 1);
                    tracing::warn!(%peer, limit = context.accepted_connections_max, "too many connections; closing");
                    drop(stream);
                    continue;
                };
                bump(&context.counters.connections_accepted, 1);
                tracing::debug!(%peer, "connection accepted");
                let context = context.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let (sender, mut queue) = mpsc::channel(context.send_queue_frames_max);
                    let end = run_connection(stream, peer, None, &mut queue, sender, &context).await;
                    if let ConnectionEnd::WriteFailed(error) = end {
                        tracing::debug!(%peer, %error, "write failed; connection closed");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::select! {
                    biased;
                    _ = shut_down(&mut shutdown) => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}
