//! Real processes: `bulwark keygen`, four `bulwark replica` processes, `bulwark client`.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;
use support::*;

/// Starts replicas 0..4; replica `metrics_replica` serves Prometheus metrics on `metrics_port`.
fn start_replicas(config: &Path, metrics_replica: usize, metrics_port: u16) -> Replicas {
    start_replicas_with_ids(config, &[0, 1, 2, 3], metrics_replica, metrics_port)
}

/// Starts the replicas `ids`; replica `metrics_replica` serves metrics on `metrics_port`.
fn start_replicas_with_ids(config: &Path, ids: &[usize], metrics_replica: usize, metrics_port: u16) -> Replicas {
    let children = ids
        .iter()
        .map(|&id| {
            let mut args = vec!["replica".to_string(), "--config".into(), config.to_str().unwrap().into()];
            args.extend(["--id".to_string(), id.to_string()]);
            if id == metrics_replica {
                args.extend(["--metrics-port".to_string(), metrics_port.to_string()]);
            }
            let child = Command::new(BULWARK)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start replica");
            Some(child)
        })
        .collect();
    Replicas(children)
}

#[test]
fn four_replica_processes_serve_put_and_get_and_survive_a_killed_backup() {
    let dir = tempfile::tempdir().unwrap();
    let config = keygen(dir.path());
    // An ephemeral port from the OS: never inside keygen's consecutive range.
    let metrics_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut replicas = start_replicas(&config, 0, metrics_port);

    let put = put_when_ready(&config, "colour", "blue");
    assert!(put.status.success(), "put: {}", String::from_utf8_lossy(&put.stderr));
    let get = client(&config, &["get", "colour"]);
    assert_eq!(stdout(&get), r#"get colour: "blue""#, "stderr: {}", String::from_utf8_lossy(&get.stderr));

    // Replica 0 exports Prometheus metrics on the optional port. At least the put and the
    // (ordered) get; a retried first put would add one. The client completed on `f + 1`
    // replies, which need not include replica 0's, so it may execute the get a moment later.
    let executed_by_replica_0 = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("bulwark_requests_executed_total{replica=\"0\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no executed counter in {metrics}"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut metrics = scrape(metrics_port);
    while executed_by_replica_0(&metrics) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        metrics = scrape(metrics_port);
    }
    assert!(executed_by_replica_0(&metrics) >= 2, "{metrics}");
    assert!(metrics.contains("bulwark_view{replica=\"0\"} 0"), "{metrics}");

    // kill -9 a backup: 3 of 4 replicas still make a quorum of 2f + 1.
    replicas.kill(3);
    let put = client(&config, &["put", "colour", "green"]);
    assert!(put.status.success(), "put after kill: {}", String::from_utf8_lossy(&put.stderr));
    let get = client(&config, &["get", "colour"]);
    assert_eq!(stdout(&get), r#"get colour: "green""#);

    let status = client(&config, &["status"]);
    let text = stdout(&status);
    assert!(text.contains("no answer from: [3]"), "{text}");
    let digests: Vec<&str> = text.lines().skip(1).filter_map(|l| l.split_whitespace().nth(4)).collect();
    assert_eq!(digests.len(), 3, "{text}");
    let executed: Vec<&str> = text.lines().skip(1).filter_map(|l| l.split_whitespace().nth(3)).collect();
    if executed.windows(2).all(|w| w[0] == w[1]) {
        assert!(digests.windows(2).all(|w| w[0] == w[1]), "same point, different digests: {text}");
    }
}

/// Ids are names, not positions: a cluster of replicas 3, 8, 21 and 40 (cluster 7) made
/// by `keygen --ids` serves put and get, and `client status` lists it by those ids.
#[test]
fn replicas_with_ids_3_8_21_40_serve_put_get_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let config = keygen_with(dir.path(), &["--ids", "3,8,21,40", "--cluster-id", "7"]);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("cluster_id = 7"), "{text}");
    for id in [3, 8, 21, 40] {
        assert!(dir.path().join(format!("replica-{id}.key")).is_file());
    }
    let metrics_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _replicas = start_replicas_with_ids(&config, &[3, 8, 21, 40], 21, metrics_port);

    let put = put_when_ready(&config, "colour", "blue");
    assert!(put.status.success(), "put: {}", String::from_utf8_lossy(&put.stderr));
    let get = client(&config, &["get", "colour"]);
    assert_eq!(stdout(&get), r#"get colour: "blue""#, "stderr: {}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(metric(&scrape(metrics_port), "view", 21), 0);

    // Every replica answers an inquiry, named by its id; all at one point agree.
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = client(&config, &["status"]);
        let text = stdout(&status);
        let rows: Vec<Vec<&str>> = text.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
        let ids: Vec<&str> = rows.iter().filter_map(|row| row.first().copied()).collect();
        let executed: Vec<&str> = rows.iter().filter_map(|row| row.get(3).copied()).collect();
        let digests: Vec<&str> = rows.iter().filter_map(|row| row.get(4).copied()).collect();
        let together = executed.len() == 4 && executed.windows(2).all(|w| w[0] == w[1]);
        if ids == ["3", "8", "21", "40"] && together {
            assert!(digests.windows(2).all(|w| w[0] == w[1]), "same point, different digests: {text}");
            break;
        }
        assert!(Instant::now() < deadline, "status never showed replicas 3, 8, 21, 40 at one point: {text}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_broken_cluster_file_is_an_error_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = keygen(dir.path());
    let text = std::fs::read_to_string(&config).unwrap();
    let broken = text.replacen("address = \"127.0.0.1:", "address = \"not-an-address:", 1);
    std::fs::write(&config, broken).unwrap();
    let output = bulwark(&["replica", "--config", config.to_str().unwrap(), "--id", "0"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cluster.toml") && stderr.contains("replica[0].address"), "{stderr}");
}

#[test]
fn a_key_file_of_another_replica_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = keygen(dir.path());
    let wrong = dir.path().join("replica-1.key");
    let output =
        bulwark(&["replica", "--config", config.to_str().unwrap(), "--id", "0", "--key", wrong.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not the key of replica 0"), "{stderr}");
}

/// `kill -9` the primary of view 0: the backups move to view 1 (with the cluster file's
/// default timeouts), a client that still believes in view 0 broadcasts after its
/// retransmission timeout and gets its answer from view 1, and `client status` and the
/// metrics endpoint of a survivor show the new view.
#[test]
fn a_killed_primary_process_is_replaced_by_a_view_change() {
    let dir = tempfile::tempdir().unwrap();
    let config = keygen(dir.path());
    let metrics_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut replicas = start_replicas(&config, 1, metrics_port);

    let put = put_when_ready(&config, "colour", "blue");
    assert!(put.status.success(), "put: {}", String::from_utf8_lossy(&put.stderr));
    assert_eq!(metric(&scrape(metrics_port), "view", 1), 0);

    replicas.kill(0);
    let started = Instant::now();
    let put = client(&config, &["put", "colour", "green"]);
    assert!(put.status.success(), "put after killing the primary: {}", String::from_utf8_lossy(&put.stderr));
    eprintln!("first put after killing the primary took {:?}", started.elapsed());
    let get = client(&config, &["get", "colour"]);
    assert_eq!(stdout(&get), r#"get colour: "green""#, "stderr: {}", String::from_utf8_lossy(&get.stderr));

    let metrics = scrape(metrics_port);
    assert_eq!(metric(&metrics, "view", 1), 1, "{metrics}");
    assert_eq!(metric(&metrics, "view_changing", 1), 0, "{metrics}");
    assert!(metric(&metrics, "views_entered_total", 1) >= 1, "{metrics}");
    assert!(metric(&metrics, "view_changes_started_total", 1) >= 1, "{metrics}");
    assert_eq!(metric(&metrics, "primary_equivocations_total", 1), 0, "{metrics}");

    let status = client(&config, &["status"]);
    let text = stdout(&status);
    assert!(text.contains("no answer from: [0]"), "{text}");
    let views: Vec<&str> = text.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).take(3).collect();
    assert_eq!(views, ["1", "1", "1"], "{text}");
}
