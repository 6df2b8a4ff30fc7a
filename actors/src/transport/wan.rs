//! Wide-area links emulated in the transport (kernel traffic shaping is not available on
//! every machine): a shaper task sits between an outbound link's queue and its connection
//! and gives every frame the [`LinkModel`] of its link.
//!
//! A frame is lost with the model's probability; otherwise it waits for the link to be
//! free, occupies it for its transmission time at the model's bandwidth (a token bucket
//! with no burst: bytes leave at the link's rate, never faster, so no coalesced write can
//! smuggle a burst past it), then travels the latency plus a uniform jitter. Frames keep
//! their order, as on one TCP connection, so jitter delays but never reorders. The delay
//! queue is bounded like the link's own queue: a sender faster than the link fills it and
//! the excess is dropped and counted (`dropped_queue_full`), as a router's full buffer
//! would.
//!
//! Only frames sent with `send_to_peer` are shaped. Answers on a connection
//! (`send_to_connection`: replies to clients, which are of the replica's own site) are not.

use super::stats::bump;
use super::{shut_down, Context};
use bulwark_framework::sim::wan::LinkModel;
use bytes::Bytes;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What one shaped link did, for logs, benchmarks and the metrics endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames that crossed the link (handed to its connection).
    pub frames: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Frames the emulated loss took.
    pub lost: u64,
    /// Frames dropped because the delay queue was full.
    pub dropped: u64,
    /// Summed time frames waited for the link to be free (queueing, not latency).
    pub queueing_us: u64,
    /// The longest such wait.
    pub queueing_max_us: u64,
}

/// The live counters behind [`LinkStats`].
#[derive(Debug, Default)]
pub(super) struct LinkCounters {
    frames: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    dropped: AtomicU64,
    queueing_us: AtomicU64,
    queueing_max_us: AtomicU64,
}

impl LinkCounters {
    pub(super) fn snapshot(&self) -> LinkStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        LinkStats {
            frames: get(&self.frames),
            bytes: get(&self.bytes),
            lost: get(&self.lost),
            dropped: get(&self.dropped),
            queueing_us: get(&self.queueing_us),
            queueing_max_us: get(&self.queueing_max_us),
        }
    }
}

/// The link's schedule: when it is free again and when the last frame arrives.
struct Schedule {
    model: LinkModel,
    free_at: Instant,
    last_arrival: Instant,
    rng: ChaCha8Rng,
}

impl Schedule {
    /// When a frame of `bytes` handed over at `now` arrives, and how long it waited for
    /// the link; `None` if the emulated loss takes it.
    fn arrival(&mut self, now: Instant, bytes: usize) -> Option<(Instant, Duration)> {
        if self.model.loss > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < self.model.loss {
            return None;
        }
        let start = self.free_at.max(now);
        self.free_at = start + self.model.transmission(bytes);
        let jitter_us = match self.model.jitter_us {
            0 => 0,
            jitter => self.rng.next_u64() % (jitter + 1),
        };
        let arrival = self.free_at + Duration::from_micros(self.model.latency_us + jitter_us);
        self.last_arrival = self.last_arrival.max(arrival);
        Some((self.last_arrival, start - now))
    }
}

/// Runs the shaper of one link until shutdown or until either side closes: frames from
/// `input` reach `output` as the link `model` would deliver them. `seed` makes loss and
/// jitter reproducible per link.
pub(super) async fn run_shaper(
    model: LinkModel,
    seed: u64,
    mut input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<Bytes>,
    counters: Arc<LinkCounters>,
    context: Context,
) {
    let mut shutdown = context.shutdown.clone();
    let now = Instant::now();
    let mut schedule = Schedule { model, free_at: now, last_arrival: now, rng: ChaCha8Rng::seed_from_u64(seed) };
    let mut in_flight: VecDeque<(Instant, Bytes)> = VecDeque::new();
    let bound = context.send_queue_frames_max;
    loop {
        let next = in_flight.front().map(|(at, _)| *at);
        tokio::select! {
            biased;
            _ = shut_down(&mut shutdown) => return,
            _ = sleep_until(next), if next.is_some() => {
                let now = Instant::now();
                while in_flight.front().is_some_and(|(at, _)| *at <= now) {
                    let (_, frame) = in_flight.pop_front().expect("checked");
                    let bytes = frame.len() as u64;
                    match output.try_send(frame) {
                        Ok(()) => {
                            bump(&counters.frames, 1);
                            bump(&counters.bytes, bytes);
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            bump(&counters.dropped, 1);
                            bump(&context.counters.dropped_queue_full, 1);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
            frame = input.recv() => {
                let Some(frame) = frame else { return };
                if in_flight.len() >= bound {
                    bump(&counters.dropped, 1);
                    bump(&context.counters.dropped_queue_full, 1);
                    continue;
                }
                match schedule.arrival(Instant::now(), frame.len()) {
                    None => bump(&counters.lost, 1),
                    Some((at, waited)) => {
                        let waited_us = waited.as_micros() as u64;
                        bump(&counters.queueing_us, waited_us);
                        counters.queueing_max_us.fetch_max(waited_us, Ordering::Relaxed);
                        in_flight.push_back((at, frame));
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(model: LinkModel) -> (Schedule, Instant) {
        let now = Instant::now();
        (Schedule { model, free_at: now, last_arrival: now, rng: ChaCha8Rng::seed_from_u64(1) }, now)
    }

    /// A 1 Mbit/s, 50 ms link: 1,250 bytes take 10 ms to send, then 50 ms to travel; a
    /// second frame handed over at once waits the first one's 10 ms.
    #[test]
    fn frames_take_their_transmission_time_in_turn_then_the_latency() {
        let (mut link, now) = schedule(LinkModel::symmetric(50, 1.0));
        let (first, waited) = link.arrival(now, 1_250).expect("no loss");
        assert_eq!((first - now, waited), (Duration::from_millis(60), Duration::ZERO));
        let (second, waited) = link.arrival(now, 1_250).expect("no loss");
        assert_eq!((second - now, waited), (Duration::from_millis(70), Duration::from_millis(10)));
    }

    /// Jitter delays frames but never reorders them; loss takes about its share.
    #[test]
    fn jitter_keeps_the_order_and_loss_takes_its_share() {
        let model = LinkModel { jitter_us: 20_000, loss: 0.1, ..LinkModel::symmetric(50, 0.0) };
        let (mut link, now) = schedule(model);
        let arrivals: Vec<Option<Instant>> = (0..10_000).map(|_| link.arrival(now, 100).map(|(at, _)| at)).collect();
        let delivered: Vec<Instant> = arrivals.iter().flatten().copied().collect();
        assert!(delivered.windows(2).all(|pair| pair[0] <= pair[1]), "in order");
        let lost = arrivals.len() - delivered.len();
        assert!((800..1_200).contains(&lost), "about 10% lost: {lost}");
        assert!(delivered.iter().all(|at| *at - now <= Duration::from_millis(70)));
    }
}
