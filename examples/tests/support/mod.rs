//! Helpers for the tests that run real `bulwark` processes: keygen, replica processes
//! (killed with SIGKILL, restarted with their data dirs), `bulwark client`, its `status`
//! table, metrics scrapes, and an in-test client that writes under load and remembers what
//! was acknowledged.
#![allow(dead_code)]

use bulwark_actors::client::{Client, ClientOptions};
use bulwark_actors::config::ClusterFile;
use bulwark_actors::verifier::VerifierPool;
use bulwark_crypto::KeyPair;
use bulwark_examples::kv::{KvOp, KvReply, KvStore};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BULWARK: &str = env!("CARGO_BIN_EXE_bulwark");

/// Replica processes, killed when the test ends, however it ends.
pub struct Replicas(pub Vec<Option<Child>>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Replicas {
    /// `kill -9` of the `index`-th process.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.0[index].take() {
            child.kill().expect("kill -9 the replica");
            child.wait().expect("reap the replica");
        }
    }
}

/// A base port with `count` free consecutive ports after it. Tests run in parallel threads
/// of one process: each call starts its search elsewhere, so two clusters started at the
/// same moment do not pick the same (still free) range.
pub fn free_base_port(count: u16) -> u16 {
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let seed = std::process::id() as u16;
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for attempt in 0..500u16 {
        let step = attempt.wrapping_add(call.wrapping_mul(1_000));
        let base = 20_000 + (seed.wrapping_mul(7).wrapping_add(step.wrapping_mul(97))) % 40_000;
        if (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range found");
}

pub fn bulwark(args: &[&str]) -> Output {
    Command::new(BULWARK).args(args).output().expect("run bulwark")
}

pub fn client(config: &Path, args: &[&str]) -> Output {
    let config = config.to_str().unwrap();
    let mut all = vec!["client", "--config", config, "--timeout", "10s"];
    all.extend_from_slice(args);
    bulwark(&all)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Retries `put` until the cluster answers (replicas take a moment to bind and dial).
pub fn put_when_ready(config: &Path, key: &str, value: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = client(config, &["put", key, value]);
        if output.status.success() || Instant::now() > deadline {
            return output;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of `bulwark_<name>{replica="<replica>"}` in a metrics scrape.
pub fn metric(metrics: &str, name: &str, replica: usize) -> u64 {
    let prefix = format!("bulwark_{name}{{replica=\"{replica}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} for replica {replica} in {metrics}"))
}

pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint listens");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// An unused TCP port from the OS (never inside keygen's consecutive range).
pub fn ephemeral_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn keygen(dir: &Path) -> PathBuf {
    keygen_with(dir, &["--replicas", "4"])
}

/// `bulwark keygen` into `dir` with `args` (besides the output directory and a free base
/// port); the cluster file's path.
pub fn keygen_with(dir: &Path, args: &[&str]) -> PathBuf {
    let base = free_base_port(4).to_string();
    let out = dir.to_str().unwrap();
    let mut all = vec!["keygen", "--out", out, "--base-port", &base];
    all.extend_from_slice(args);
    let output = bulwark(&all);
    assert!(output.status.success(), "keygen: {}", String::from_utf8_lossy(&output.stderr));
    dir.join("cluster.toml")
}

/// Replaces `name = <value>` in the `[params]` of a cluster file.
pub fn set_param(config: &Path, name: &str, value: u64) {
    let text = std::fs::read_to_string(config).unwrap();
    let prefix = format!("{name} = ");
    let mut found = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with(&prefix) {
                found = true;
                format!("{prefix}{value}")
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(found, "no {name} in {text}");
    std::fs::write(config, lines.join("\n") + "\n").unwrap();
}

/// One row of `bulwark client status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    pub replica: u32,
    pub view: u64,
    pub stable: u64,
    pub executed: u64,
    pub digest: String,
}

/// Runs `bulwark client --config F status` and parses its table.
pub fn status(config: &Path) -> (Vec<StatusRow>, String) {
    let output = client(config, &["status"]);
    let text = stdout(&output);
    let rows = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [replica, view, stable, executed, digest] => Some(StatusRow {
                    replica: replica.parse().ok()?,
                    view: view.parse().ok()?,
                    stable: stable.parse().ok()?,
                    executed: executed.parse().ok()?,
                    digest: digest.to_string(),
                }),
                _ => None,
            }
        })
        .collect();
    (rows, text)
}

/// Polls `bulwark client status` until all four replicas answer at the same executed
/// sequence number with the same state digest; panics with the last table at `deadline`.
pub fn wait_for_agreement(config: &Path, within: Duration) -> Vec<StatusRow> {
    let deadline = Instant::now() + within;
    loop {
        let (rows, text) = status(config);
        let agree = rows.len() == 4
            && rows.windows(2).all(|w| w[0].executed == w[1].executed && w[0].digest == w[1].digest)
            && rows[0].executed > 0;
        if agree {
            eprintln!("replicas agree:\n{text}");
            return rows;
        }
        assert!(Instant::now() < deadline, "replicas did not agree within {within:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Four replica processes with data dirs, each logging to its own file.
pub struct Processes {
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub logs: PathBuf,
    children: Vec<Option<Child>>,
    starts: usize,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Processes {
    pub fn new(config: &Path, data_dir: &Path) -> Processes {
        let logs = data_dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        Processes {
            config: config.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            logs,
            children: (0..4).map(|_| None).collect(),
            starts: 0,
        }
    }

    /// Starts replica `id` with `--data-dir`; its stderr goes to `logs/replica-<id>-<n>.log`,
    /// which this returns.
    pub fn start(&mut self, id: usize, extra: &[&str]) -> PathBuf {
        assert!(self.children[id].is_none(), "replica {id} is running");
        self.starts += 1;
        let log = self.logs.join(format!("replica-{id}-{}.log", self.starts));
        let stderr = File::create(&log).unwrap();
        let child = Command::new(BULWARK)
            .args(["replica", "--config", self.config.to_str().unwrap(), "--id", &id.to_string()])
            .args(["--data-dir", self.data_dir.to_str().unwrap()])
            .args(extra)
            .env("RUST_LOG", "warn,bulwark_actors::store=info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start replica");
        self.children[id] = Some(child);
        log
    }

    pub fn start_all(&mut self) {
        for id in 0..4 {
            self.start(id, &[]);
        }
    }

    /// `kill -9` replica `id`.
    pub fn kill(&mut self, id: usize) {
        if let Some(mut child) = self.children[id].take() {
            child.kill().expect("kill -9 the replica");
            child.wait().expect("reap the replica");
        }
    }

    /// `kill -9` every replica at once: every signal is sent before any is reaped.
    pub fn kill_all(&mut self) {
        let mut children: Vec<Child> = self.children.iter_mut().filter_map(Option::take).collect();
        for child in &mut children {
            child.kill().expect("kill -9 a replica");
        }
        for child in &mut children {
            child.wait().expect("reap a replica");
        }
    }

    /// The store file of replica `id`.
    pub fn store(&self, id: usize) -> PathBuf {
        self.data_dir.join(format!("replica-{id}.redb"))
    }
}

pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Connects a kv client to the cluster of `config` (inside an actix System).
pub async fn connect(config: &Path, timeout: Duration) -> Client<KvStore> {
    let file = ClusterFile::load(config).unwrap();
    let membership = file.membership().unwrap();
    let verifier = VerifierPool::start(1, bulwark_framework::MembershipHandle::new(membership.clone()));
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let options = ClientOptions { timeout, ..ClientOptions::default() };
    Client::connect(membership, file.addresses(), key, verifier, options).await.expect("client connects")
}

/// Runs `ops` against the cluster from a fresh client in a System of its own, `lanes` at a
/// time, and returns each reply (in the order of `ops`).
pub fn run_ops(config: &Path, ops: Vec<KvOp>, lanes: usize, timeout: Duration) -> Vec<Result<KvReply, String>> {
    let config = config.to_path_buf();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let client = connect(&config, timeout).await;
            let ops = Arc::new(ops);
            let results = Arc::new(Mutex::new(vec![None; ops.len()]));
            let mut tasks = Vec::new();
            for lane in 0..lanes {
                let (client, ops, results) = (client.clone(), ops.clone(), results.clone());
                tasks.push(actix_rt::spawn(async move {
                    for i in (lane..ops.len()).step_by(lanes) {
                        let reply = client.invoke(&ops[i]).await.map_err(|e| e.to_string());
                        results.lock().unwrap()[i] = Some(reply);
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            client.close();
            let results = results.lock().unwrap().clone();
            results.into_iter().map(|r| r.expect("every op ran")).collect()
        })
    })
    .join()
    .expect("client thread")
}

/// Writes in the background: `lanes` sequential writers, lane `l`'s `i`-th put writing
/// `value(l, i)` under `key(l, i)`, each acknowledged put remembered.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

pub fn load_key(lane: usize, i: u64) -> String {
    format!("k-{lane}-{i}")
}

pub fn load_value(lane: usize, i: u64) -> String {
    format!("v-{lane}-{i}")
}

impl Load {
    pub fn start(config: &Path, lanes: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let config = config.to_path_buf();
        let (stop_in, acked_in) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let client = connect(&config, Duration::from_secs(3)).await;
                let mut tasks = Vec::new();
                for lane in 0..lanes {
                    let (client, stop, acked) = (client.clone(), stop_in.clone(), acked_in.clone());
                    tasks.push(actix_rt::spawn(async move {
                        let mut errors = 0u64;
                        let mut i = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let (key, value) = (load_key(lane, i), load_value(lane, i));
                            let op = KvOp::Put { key: key.clone(), value: value.clone().into_bytes() };
                            match client.invoke(&op).await {
                                Ok(KvReply::Done { .. }) => {
                                    acked.lock().unwrap().insert(key, value);
                                }
                                Ok(other) => panic!("put {key} answered {other:?}"),
                                Err(_) => errors += 1,
                            }
                            i += 1;
                        }
                        errors
                    }));
                }
                let mut errors = 0;
                for task in tasks {
                    errors += task.await.unwrap();
                }
                client.close();
                errors
            })
        });
        Load { stop, acked, thread: Some(thread) }
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// What was acknowledged so far.
    pub fn acked(&self) -> BTreeMap<String, String> {
        self.acked.lock().unwrap().clone()
    }

    /// Waits until at least `count` puts were acknowledged since this call (or panics).
    pub fn wait_for_acks(&self, count: usize, within: Duration) {
        let start = self.acked_count();
        let deadline = Instant::now() + within;
        while self.acked_count() < start + count {
            assert!(Instant::now() < deadline, "only {} puts acknowledged in {within:?}", self.acked_count() - start);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the writers (each finishes or times out its current put); returns everything
    /// acknowledged and the number of puts that failed.
    pub fn stop(mut self) -> (BTreeMap<String, String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.thread.take().unwrap().join().expect("load thread");
        (self.acked(), errors)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
