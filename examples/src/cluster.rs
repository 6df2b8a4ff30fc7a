//! A load generator over a local cluster: what `bulwark demo` and `bulwark bench` are made
//! of. The local cluster itself is the runtime's ([`bulwark_actors::local`]), re-exported.

use crate::bank::{Bank, BankOp};
use crate::echo::{Echo, EchoOp};
use crate::kv::{KvOp, KvStore};
pub use bulwark_actors::local::{free_local_addresses, LocalCluster, LOCAL_CLUSTER_ID};

use bulwark_actors::client::Client;
use bulwark_framework::Service;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::io::IsTerminal as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Request and reply payload sizes of a workload (the PBFT paper uses 0/0, 4/0 and 0/4 KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub request_bytes: usize,
    pub reply_bytes: usize,
}

/// A service that can generate its own benchmark workload.
pub trait Workload: Service + Send + Unpin + Default {
    /// Operation number `index` of client `client`.
    fn operation(rng: &mut rand::rngs::StdRng, client: usize, index: u64, sizes: Sizes) -> Self::Op;
}

impl Workload for KvStore {
    fn operation(rng: &mut rand::rngs::StdRng, _: usize, index: u64, sizes: Sizes) -> KvOp {
        let key = format!("key-{}", rng.gen_range(0..1_000));
        if index % 4 == 3 {
            KvOp::Get { key }
        } else {
            KvOp::Put { key, value: vec![b'v'; sizes.request_bytes] }
        }
    }
}

impl Workload for Bank {
    fn operation(rng: &mut rand::rngs::StdRng, client: usize, index: u64, _: Sizes) -> BankOp {
        // Each client pays out of its own account (the bank lets only an account's owner
        // debit it) and into anyone's.
        let account = |n: u32| format!("account-{n}");
        let own = account(client as u32);
        match index % 3 {
            0 => BankOp::Deposit { account: own, amount: rng.gen_range(1..100) },
            1 => BankOp::Transfer { from: own, to: account(rng.gen_range(0..100)), amount: rng.gen_range(1..50) },
            _ => BankOp::Withdraw { account: own, amount: rng.gen_range(1..50) },
        }
    }
}

impl Workload for Echo {
    fn operation(_: &mut rand::rngs::StdRng, _: usize, _: u64, sizes: Sizes) -> EchoOp {
        EchoOp { payload: vec![0; sizes.request_bytes], reply_bytes: sizes.reply_bytes as u32, read_only: false }
    }
}

/// How to load a cluster.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Requests each client keeps outstanding (closed loop).
    pub concurrency: usize,
    /// Offered load in requests per second over all clients (open loop); `None` for closed
    /// loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Load applied before measuring starts.
    pub warmup: Duration,
    pub sizes: Sizes,
    /// Print a progress line to stderr every second: rewritten in place when stderr is a
    /// terminal, one line per second otherwise (a file or a pipe).
    pub progress: bool,
    /// Stop measuring once this many operations completed (or when `duration` is up,
    /// whichever comes first).
    pub ops_max: Option<u64>,
}

/// What a load run achieved.
#[derive(Debug)]
pub struct LoadReport {
    pub completed: u64,
    pub errors: u64,
    /// Open loop: requests not issued because every client window was full.
    pub shed: u64,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub latency_us: Histogram<u64>,
    pub first_error: Option<String>,
    /// Resident memory of this process when measuring started, at its end, and the
    /// highest one-second sample in between (Linux only; `None` elsewhere). With an
    /// in-process cluster this covers every replica and client.
    pub rss_start_bytes: Option<u64>,
    pub rss_end_bytes: Option<u64>,
    pub rss_max_bytes: Option<u64>,
}

/// Resident set size of this process, from `/proc/self/status` (`VmRSS`); `None` where
/// there is no procfs.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn mib(bytes: Option<u64>) -> f64 {
    bytes.map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0))
}

impl LoadReport {
    pub fn ops_per_sec(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn rss_start_mib(&self) -> f64 {
        mib(self.rss_start_bytes)
    }

    pub fn rss_end_mib(&self) -> f64 {
        mib(self.rss_end_bytes)
    }

    pub fn rss_max_mib(&self) -> f64 {
        mib(self.rss_max_bytes)
    }
}

#[derive(Debug)]
struct Tally {
    measuring: bool,
    completed: u64,
    errors: u64,
    shed: u64,
    latency_us: Histogram<u64>,
    interval_completed: u64,
    interval_latency_us: Histogram<u64>,
    first_error: Option<String>,
    outstanding: usize,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// How long a closed-loop lane waits after a failed request before the next one.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Runs `spec` against `clients`. Must be called inside a running actix System.
pub async fn run_load<S: Workload>(clients: &[Client<S>], spec: &LoadSpec) -> LoadReport {
    let tally = Rc::new(RefCell::new(Tally {
        measuring: spec.warmup.is_zero(),
        completed: 0,
        errors: 0,
        shed: 0,
        latency_us: histogram(),
        interval_completed: 0,
        interval_latency_us: histogram(),
        first_error: None,
        outstanding: 0,
    }));
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let stop_at = measure_from + spec.duration;
    let one = |client: Client<S>, tally: Rc<RefCell<Tally>>, op: S::Op| async move {
        tally.borrow_mut().outstanding += 1;
        let sent = Instant::now();
        let result = client.invoke(&op).await;
        let failed = result.is_err();
        let mut t = tally.borrow_mut();
        t.outstanding -= 1;
        if !t.measuring {
            return failed;
        }
        match result {
            Ok(_) => {
                let micros = sent.elapsed().as_micros().max(1) as u64;
                t.completed += 1;
                t.interval_completed += 1;
                let _ = t.latency_us.record(micros);
                let _ = t.interval_latency_us.record(micros);
            }
            Err(error) => {
                t.errors += 1;
                if t.first_error.is_none() {
                    t.first_error = Some(error.to_string());
                }
            }
        }
        failed
    };
    let mut tasks = Vec::new();
    match spec.rate {
        None => {
            for (index, client) in clients.iter().enumerate() {
                for lane in 0..spec.concurrency {
                    let client = client.clone();
                    let tally = tally.clone();
                    let sizes = spec.sizes;
                    tasks.push(actix::spawn(async move {
                        let mut rng = rand::rngs::StdRng::seed_from_u64((index * 10_000 + lane) as u64);
                        let mut n = 0;
                        while Instant::now() < stop_at {
                            let op = S::operation(&mut rng, index, n, sizes);
                            n += 1;
                            if one(client.clone(), tally.clone(), op).await {
                                // A lane that failed (a full client window after timeouts,
                                // say) waits before trying again: retrying at once spins
                                // millions of refusals a second and starves the cluster
                                // that shares this process of the CPU it needs to recover.
                                actix_rt::time::sleep(ERROR_BACKOFF).await;
                            }
                        }
                    }));
                }
            }
        }
        Some(rate) => {
            let clients = clients.to_vec();
            let tally = tally.clone();
            let sizes = spec.sizes;
            let cap = clients.len() * spec.concurrency;
            tasks.push(actix::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(7);
                let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
                let mut next = Instant::now();
                let mut n: u64 = 0;
                while Instant::now() < stop_at {
                    // Issue every request that is due; sleep in 1 ms steps to keep timer
                    // overhead low at high rates.
                    while next <= Instant::now() {
                        next += period;
                        let index = (n % clients.len() as u64) as usize;
                        n += 1;
                        if tally.borrow().outstanding >= cap {
                            let mut t = tally.borrow_mut();
                            if t.measuring {
                                t.shed += 1;
                            }
                            continue;
                        }
                        let op = S::operation(&mut rng, index, n, sizes);
                        actix::spawn(one(clients[index].clone(), tally.clone(), op));
                    }
                    actix_rt::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
    }
    // Warm-up, then measure, printing progress every second.
    if !spec.warmup.is_zero() {
        actix_rt::time::sleep_until(measure_from.into()).await;
        tally.borrow_mut().measuring = true;
    }
    let measuring_started = Instant::now();
    let rss_start_bytes = resident_bytes();
    let mut rss_max_bytes = rss_start_bytes;
    let mut last_tick = Instant::now();
    // On a terminal the progress line is rewritten in place (`\r`); in a file or a pipe each
    // second gets a line of its own, so a log is not one line of thousands of characters.
    let in_place = std::io::stderr().is_terminal();
    // Checked every 10 ms so that `ops_max` ends the run close to the count asked for.
    let check_every = if spec.ops_max.is_some() { Duration::from_millis(10) } else { Duration::from_secs(1) };
    while Instant::now() < stop_at {
        let step = check_every.min(stop_at.saturating_duration_since(Instant::now()));
        actix_rt::time::sleep(step).await;
        let done = spec.ops_max.is_some_and(|max| tally.borrow().completed >= max);
        if !done && last_tick.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let rss = resident_bytes();
        rss_max_bytes = rss_max_bytes.max(rss);
        if spec.progress {
            let mut t = tally.borrow_mut();
            let secs = last_tick.elapsed().as_secs_f64().max(1e-9);
            let line = format!(
                "[{:>4.0}s] {:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  completed {:>9}  errors {}  rss {:.0} MiB",
                measuring_started.elapsed().as_secs_f64(),
                t.interval_completed as f64 / secs,
                t.interval_latency_us.value_at_quantile(0.5) as f64 / 1000.0,
                t.interval_latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                t.completed,
                t.errors,
                mib(rss),
            );
            if in_place {
                // The trailing spaces cover what is left of a longer previous line.
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
            t.interval_completed = 0;
            t.interval_latency_us.reset();
        }
        last_tick = Instant::now();
        if done {
            break;
        }
    }
    let elapsed = measuring_started.elapsed();
    let rss_end_bytes = resident_bytes();
    rss_max_bytes = rss_max_bytes.max(rss_end_bytes);
    tally.borrow_mut().measuring = false;
    if spec.progress && in_place {
        eprintln!();
    }
    for task in tasks {
        task.abort();
    }
    let t = tally.borrow();
    LoadReport {
        completed: t.completed,
        errors: t.errors,
        shed: t.shed,
        elapsed,
        latency_us: t.latency_us.clone(),
        first_error: t.first_error.clone(),
        rss_start_bytes,
        rss_end_bytes,
        rss_max_bytes,
    }
}
