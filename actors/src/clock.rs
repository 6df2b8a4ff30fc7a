//! The runtime's clock: framework roles never read one, the runtime passes `now` in.

use actix::{Actor, ActorFutureExt, AsyncContext, Context, SpawnHandle};
use bulwark_framework::Instant;
use std::sync::OnceLock;

/// The monotonic clock's reading at the first call, and the wall clock's at that moment.
static ORIGIN: OnceLock<(std::time::Instant, u64)> = OnceLock::new();

/// Microseconds since the Unix epoch, as a framework [`Instant`]: the wall clock read once,
/// at the first call in this process, then advanced by the monotonic clock. So the roles'
/// timers never jump when the wall clock is stepped, while the times a primary proposes
/// for its batches (PBFT.md N1.f) are comparable across replicas whose clocks agree.
pub fn now() -> Instant {
    let (origin, wall_at_origin_us) = ORIGIN.get_or_init(|| (std::time::Instant::now(), wall_clock_micros()));
    Instant(wall_at_origin_us + origin.elapsed().as_micros() as u64)
}

/// Microseconds since the Unix epoch: a client's first timestamp, so a restarted client
/// starts above every timestamp it used before (PBFT.md CX1).
pub fn wall_clock_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1)
}

/// Runs `fire` on the actor at `at` by [`now`], never earlier, and returns the handle that
/// cancels it. Roles keep their own deadlines and some ignore an early firing without
/// re-arming (the view-change timer would then be lost), so the wait is checked against
/// this clock rather than left to the timer wheel's rounding.
pub fn run_at<A>(ctx: &mut Context<A>, at: Instant, fire: impl FnOnce(&mut A, &mut Context<A>) + 'static) -> SpawnHandle
where
    A: Actor<Context = Context<A>>,
{
    let wait = async move {
        loop {
            let left = at.saturating_since(now());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    };
    ctx.spawn(actix::fut::wrap_future::<_, A>(wait).map(move |(), actor, ctx| fire(actor, ctx)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Probe {
        fired_at: tokio::sync::mpsc::UnboundedSender<Instant>,
    }

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    /// A firing comes at or after its instant by this clock, and a cancelled one never.
    #[actix_rt::test]
    async fn run_at_fires_not_before_its_instant_and_a_cancelled_one_never() {
        let (fired_at, mut fired) = tokio::sync::mpsc::unbounded_channel();
        let at = now() + Duration::from_millis(30);
        let cancelled = now() + Duration::from_millis(10);
        let _probe = Probe::create(move |ctx| {
            let handle = run_at(ctx, cancelled, |probe: &mut Probe, _| {
                let _ = probe.fired_at.send(Instant(0));
            });
            ctx.cancel_future(handle);
            run_at(ctx, at, |probe: &mut Probe, _| {
                let _ = probe.fired_at.send(now());
            });
            Probe { fired_at }
        });
        let first = tokio::time::timeout(Duration::from_secs(5), fired.recv()).await.unwrap().unwrap();
        assert!(first >= at, "fired at {first:?}, due at {at:?}");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), fired.recv()).await.is_err(),
            "the cancelled one fired"
        );
    }
}
