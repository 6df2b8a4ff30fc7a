//! The Bulwark runtime: actix actors for the protocol roles (per replica one for its
//! backup, executor and state fetcher, one each for its primary role, its checkpoint
//! collector and its view-changer; one per client), the TCP transport, timers, storage and
//! configuration loading. The protocol it drives lives in `bulwark-framework`.
//!
//! A program that replicates its own service starts from [`launch`] (a replica from a
//! cluster file and a key file, a client from a cluster file) or [`local`] (a whole cluster
//! in one process).
pub mod checkpoints;
pub mod client;
pub mod clock;
pub mod config;
pub mod launch;
pub mod local;
pub mod metrics;
pub mod primary;
pub mod recent_requests;
pub mod replica;
pub mod store;
pub mod transport;
pub mod verified_cache;
pub mod verifier;
pub mod view_changer;

#[cfg(test)]
mod test_fixtures;

/// Runs `future` on `arbiter`'s thread and returns its output: how a replica or client is
/// started so that its actor and its transport tasks live on that arbiter.
pub(crate) async fn on_arbiter<T, F>(arbiter: &actix::ArbiterHandle, what: &str, future: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let (reply_to, result) = tokio::sync::oneshot::channel();
    let started = arbiter.spawn(async move {
        let _ = reply_to.send(future.await);
    });
    if !started {
        return Err(std::io::Error::other(format!("the {what}'s arbiter is not running")));
    }
    result.await.map_err(|_| std::io::Error::other(format!("the {what}'s arbiter stopped while starting")))
}
