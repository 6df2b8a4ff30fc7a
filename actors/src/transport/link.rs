//! The outbound links: one dialer per peer keeps a connection open for as long as the
//! endpoint runs, reconnecting with exponential backoff, so a peer that restarts is reached
//! again and frames queued meanwhile (up to the bound) still go out.

use super::connection::{run_connection, ConnectionEnd};
use super::stats::bump;
use super::{shut_down, Context};
use bulwark_framework::ids::PeerId;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long one connect attempt may take before it counts as failed. Refused connections
/// fail at once; this bounds attempts to addresses that silently drop packets.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reconnect delays: doubling from `min`, capped at `max`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Backoff {
    pub(super) min: Duration,
    pub(super) max: Duration,
}

/// The dialer of one outbound link: keeps a connection to `address` open for as long as
/// the endpoint runs, writing the link's queue to it and delivering what it reads.
pub(super) async fn run_link(
    replica: PeerId,
    address: SocketAddr,
    sender: mpsc::Sender<Bytes>,
    mut queue: mpsc::Receiver<Bytes>,
    backoff: Backoff,
    context: Context,
) {
    let mut shutdown = context.shutdown.clone();
    // The pause after the next failed attempt. It is reset once a connection that worked
    // is lost, not on connecting: a peer whose connections keep being closed for refused
    // messages is backed off like one that cannot be reached.
    let mut delay = backoff.min;
    let mut first_attempt = true;
    loop {
        if !first_attempt {
            bump(&context.counters.reconnects, 1);
        }
        first_attempt = false;
        let attempt = tokio::select! {
            biased;
            _ = shut_down(&mut shutdown) => return,
            attempt = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)) => attempt,
        };
        let pause = match attempt {
            Ok(Ok(stream)) => {
                tracing::debug!(%replica, %address, "link connected");
                let end = run_connection(stream, address, Some(replica), &mut queue, sender.clone(), &context).await;
                match end {
                    ConnectionEnd::Shutdown | ConnectionEnd::QueueClosed => return,
                    ConnectionEnd::ReaderStopped => {
                        tracing::info!(%replica, %address, "link closed by peer; reconnecting");
                        delay = backoff.min;
                        backoff.min
                    }
                    ConnectionEnd::WriteFailed(error) => {
                        tracing::info!(%replica, %address, %error, "link lost; reconnecting");
                        delay = backoff.min;
                        backoff.min
                    }
                    ConnectionEnd::Closed => {
                        tracing::info!(%replica, %address, retry_in = ?delay, "link closed after a refused message; reconnecting");
                        let pause = delay;
                        delay = (delay * 2).min(backoff.max);
                        pause
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(%replica, %address, %error, retry_in = ?delay, "connect failed");
                let pause = delay;
                delay = (delay * 2).min(backoff.max);
                pause
            }
            Err(_elapsed) => {
                tracing::debug!(%replica, %address, retry_in = ?delay, "connect timed out");
                let pause = delay;
                delay = (delay * 2).min(backoff.max);
                pause
            }
        };
        tokio::select! {
            biased;
            _ = shut_down(&mut shutdown) => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
