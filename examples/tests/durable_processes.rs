//! Durable replicas as real processes: `bulwark replica --data-dir`, killed with SIGKILL
//! under load and restarted from their stores.
//!
//! The tests of this file run one at a time (each has four replica processes and a client
//! busy on a 2-core machine); each takes well under 30 s.

mod support;

use bulwark_examples::kv::{KvOp, KvReply};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::*;

/// One cluster of processes at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A cluster file with a short checkpoint interval, so stable checkpoints (and with them
/// compactions and state transfer) happen within a second or two of load.
fn cluster(dir: &Path) -> std::path::PathBuf {
    let config = keygen(dir);
    set_param(&config, "checkpoint_interval", 32);
    set_param(&config, "watermark_window", 64);
    config
}

/// Waits until every replica log at `log` says what it recovered.
fn wait_for_log(log: &Path, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = read_log(log);
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "{} never said {needle:?}:\n{text}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Four durable replica processes (stores under `dir/data`) serving once `key` = `value`
/// was put.
fn durable_cluster(dir: &Path, key: &str, value: &str) -> (std::path::PathBuf, Processes) {
    let config = cluster(dir);
    let mut replicas = Processes::new(&config, &dir.join("data"));
    replicas.start_all();
    let put = put_when_ready(&config, key, value);
    assert!(put.status.success(), "put: {}", String::from_utf8_lossy(&put.stderr));
    (config, replicas)
}

/// The number in `recovered from N records` of a replica log.
fn records_recovered(log: &str) -> u64 {
    log.lines()
        .find_map(|line| line.split("recovered from ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'recovered from N records' in:\n{log}"))
}

/// Every acknowledged put is still there: `get` returns exactly the acknowledged value
/// (every put of the load writes a key of its own).
fn assert_all_present(config: &Path, acked: &std::collections::BTreeMap<String, String>) {
    let keys: Vec<&String> = acked.keys().collect();
    let ops = keys.iter().map(|key| KvOp::Get { key: key.to_string() }).collect();
    let replies = run_ops(config, ops, 16, Duration::from_secs(10));
    let mut lost = Vec::new();
    for (key, reply) in keys.iter().zip(replies) {
        let expected = KvReply::Value(Some(acked[*key].clone().into_bytes()));
        if reply.as_ref() != Ok(&expected) {
            lost.push(format!("{key}: {reply:?}"));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged puts lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

/// Issue 5: under load, kill -9 a backup, restart it with its data dir: it recovers from
/// its store, catches up, and `bulwark client status` shows all four replicas at the same
/// state digest.
#[test]
fn a_backup_killed_under_load_restarts_from_its_store_and_catches_up() {
    let _serial = serial();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (config, mut replicas) = durable_cluster(dir.path(), "colour", "blue");

    let load = Load::start(&config, 8);
    load.wait_for_acks(300, Duration::from_secs(15));
    replicas.kill(3);
    load.wait_for_acks(200, Duration::from_secs(15));
    assert!(replicas.store(3).exists());
    let log = replicas.start(3, &[]);
    let text = wait_for_log(&log, "recovered from", Duration::from_secs(10));
    let recovered = records_recovered(&text);
    assert!(recovered > 0, "the backup came back from its records:\n{text}");
    load.wait_for_acks(300, Duration::from_secs(15));
    let (acked, _) = load.stop();

    let rows = wait_for_agreement(&config, Duration::from_secs(20));
    assert!(rows.iter().all(|row| row.stable > 0), "{rows:?}");
    let get = client(&config, &["get", "colour"]);
    assert_eq!(stdout(&get), r#"get colour: "blue""#);
    assert!(!read_log(&log).contains("corrupt"), "{}", read_log(&log));
    eprintln!(
        "{} puts acknowledged; the backup recovered {recovered} records; {:?} in all",
        acked.len(),
        started.elapsed()
    );
}

/// Issue 5: kill -9 all four replicas at once while a client is writing, restart them
/// with their data dirs: every put the client saw acknowledged is still there, and the
/// cluster serves new operations.
#[test]
fn every_replica_killed_at_once_loses_no_acknowledged_put() {
    let _serial = serial();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (config, mut replicas) = durable_cluster(dir.path(), "colour", "blue");

    let load = Load::start(&config, 16);
    load.wait_for_acks(600, Duration::from_secs(20));
    replicas.kill_all();
    // Nothing more can be acknowledged; the writers give up on their last puts.
    let (acked, failed) = load.stop();
    eprintln!("{} puts acknowledged before the crash, {failed} not", acked.len());
    assert!(acked.len() >= 600);

    let logs: Vec<_> = (0..4).map(|id| replicas.start(id, &[])).collect();
    for log in &logs {
        let text = wait_for_log(log, "recovered from", Duration::from_secs(10));
        assert!(!text.contains("corrupt"), "{text}");
        assert!(records_recovered(&text) > 0, "every replica comes back from its records:\n{text}");
    }
    assert_all_present(&config, &acked);

    // New operations are served, and every replica ends at the same state.
    let put = client(&config, &["put", "colour", "green"]);
    assert!(put.status.success(), "put after the restart: {}", String::from_utf8_lossy(&put.stderr));
    let get = client(&config, &["get", "colour"]);
    assert_eq!(stdout(&get), r#"get colour: "green""#);
    let more = Load::start(&config, 8);
    more.wait_for_acks(100, Duration::from_secs(15));
    more.stop();
    wait_for_agreement(&config, Duration::from_secs(20));
    eprintln!("{:?} in all", started.elapsed());
}

/// Issue 5: a store overwritten in the middle while its replica was down is detected at
/// startup: logged with the file's name, moved aside, and the replica starts empty,
/// catches up from its peers by state transfer, and the cluster agrees on the digest.
#[test]
fn a_corrupted_store_is_detected_moved_aside_and_the_replica_catches_up() {
    let _serial = serial();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // A value that is easy to find in the database file (in committed batches and in
    // checkpoint images).
    let marker = "corruption-target-0123456789abcdef";
    let (config, mut replicas) = durable_cluster(dir.path(), marker, marker);
    let load = Load::start(&config, 8);
    load.wait_for_acks(400, Duration::from_secs(20));
    let (acked, _) = load.stop();
    wait_for_agreement(&config, Duration::from_secs(20));
    replicas.kill(2);

    // Overwrite the marker wherever it is in replica 2's file.
    let path = replicas.store(2);
    let mut bytes = std::fs::read(&path).unwrap();
    let hits: Vec<usize> = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, window)| *window == marker.as_bytes())
        .map(|(at, _)| at)
        .collect();
    assert!(!hits.is_empty(), "the marker is in the store");
    for at in &hits {
        bytes[*at..*at + marker.len()].fill(b'#');
    }
    std::fs::write(&path, &bytes).unwrap();
    eprintln!("overwrote {} bytes at {} places in a {} byte file", marker.len(), hits.len(), bytes.len());

    let metrics_port = ephemeral_port();
    let log = replicas.start(2, &["--metrics-port", &metrics_port.to_string()]);
    let text = wait_for_log(&log, "listening on", Duration::from_secs(10));
    assert!(text.contains("durable store is corrupt") && text.contains("replica-2.redb"), "{text}");
    assert!(text.contains("moved aside"), "{text}");
    for line in text.lines().filter(|line| line.contains("corrupt")) {
        eprintln!("replica 2 logged: {line}");
    }
    let aside: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("replica-2.redb.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the corrupt store is kept aside");

    // More load moves the others on; the empty replica fetches their stable checkpoint.
    let more = Load::start(&config, 8);
    more.wait_for_acks(200, Duration::from_secs(15));
    more.stop();
    wait_for_agreement(&config, Duration::from_secs(20));
    let metrics = scrape(metrics_port);
    assert_eq!(metric(&metrics, "store_corrupt_discarded_total", 2), 1, "{metrics}");
    assert!(metric(&metrics, "state_transfers_total", 2) >= 1, "{metrics}");
    assert!(metric(&metrics, "store_transactions_total", 2) > 0, "{metrics}");
    // What was acknowledged before is all there, and the marker is readable again.
    assert_all_present(&config, &acked);
    let get = client(&config, &["get", marker]);
    assert_eq!(stdout(&get), format!("get {marker}: {marker:?}"));
    eprintln!("{:?} in all", started.elapsed());
}

/// A data dir that cannot hold a store, or a store another process holds, stops the
/// replica at startup with an error naming the file; the store is never discarded for it.
#[test]
fn an_unusable_data_dir_is_an_error_naming_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let config = keygen(dir.path());
    let config_arg = config.to_str().unwrap();
    let not_a_dir = dir.path().join("not-a-dir");
    std::fs::write(&not_a_dir, b"a file").unwrap();
    let output = bulwark(&["replica", "--config", config_arg, "--id", "0", "--data-dir", not_a_dir.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not-a-dir") && stderr.contains("durable store"), "{stderr}");

    let mut replicas = Processes::new(&config, &dir.path().join("data"));
    let log = replicas.start(0, &[]);
    wait_for_log(&log, "listening on", Duration::from_secs(10));
    let data = dir.path().join("data");
    let output = bulwark(&["replica", "--config", config_arg, "--id", "0", "--data-dir", data.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("replica-0.redb") && stderr.contains("another process"), "{stderr}");
    assert!(!read_log(&log).contains("corrupt"));
    let aside = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt"));
    assert_eq!(aside.count(), 0, "nothing was moved aside");
}

/// A replica's store records the cluster it belongs to: pointed at another cluster's data
/// dir, a replica stops at startup with an error naming the store and both clusters, and
/// the other cluster's store is left as it is.
#[test]
fn a_store_of_another_cluster_is_refused_and_kept() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let first = keygen_with(&dir.path().join("first"), &["--replicas", "4", "--cluster-id", "11"]);
    let data = dir.path().join("data");
    let mut replicas = Processes::new(&first, &data);
    let log = replicas.start(0, &[]);
    wait_for_log(&log, "listening on", Duration::from_secs(10));
    replicas.kill(0);
    let store = data.join("replica-0.redb");

    let second = keygen_with(&dir.path().join("second"), &["--replicas", "4", "--cluster-id", "12"]);
    let output =
        bulwark(&["replica", "--config", second.to_str().unwrap(), "--id", "0", "--data-dir", data.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("replica-0.redb") && stderr.contains("belongs to cluster 11") && stderr.contains("cluster 12"),
        "{stderr}"
    );
    // The first cluster's replica still finds its store whole.
    let membership = bulwark_actors::config::ClusterFile::load(&first).unwrap().membership().unwrap();
    let handle = bulwark_framework::MembershipHandle::new(membership);
    let (_, opened) = bulwark_actors::store::Store::open(&store, handle).expect("the first cluster opens its store");
    assert!(opened.discarded.is_none(), "the first cluster's store was discarded: {:?}", opened.discarded);
    let aside = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt"));
    assert_eq!(aside.count(), 0, "nothing was moved aside");
}
