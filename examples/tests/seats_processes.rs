//! A user-defined service as real processes: `bulwark keygen`, four `seats replica`
//! processes (the example program `examples/src/bin/seats.rs`, built on the library entry
//! points alone) and `seats client`, with `kill -9` of one replica. The caller the service
//! sees is the request's signer: Bob cannot cancel Alice's seat.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

const SEATS: &str = env!("CARGO_BIN_EXE_seats");

fn seats_client(config: &Path, key: &Path, request: &[&str]) -> Output {
    let mut args = vec!["client", "--config", config.to_str().unwrap(), "--key", key.to_str().unwrap()];
    args.extend_from_slice(request);
    Command::new(SEATS).args(&args).output().expect("run seats client")
}

/// Retries until the cluster answers (replicas take a moment to bind and dial).
fn when_ready(config: &Path, key: &Path, request: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = seats_client(config, key, request);
        if output.status.success() || Instant::now() > deadline {
            return output;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_user_defined_service_runs_as_four_processes_and_survives_a_killed_replica() {
    let dir = tempfile::tempdir().unwrap();
    let config = keygen(dir.path());
    let mut replicas = Replicas(
        (0..4)
            .map(|id| {
                let args = ["replica", "--config", config.to_str().unwrap(), "--id", &id.to_string()];
                Some(Command::new(SEATS).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
            })
            .collect(),
    );
    let (alice, bob) = (dir.path().join("alice.key"), dir.path().join("bob.key"));

    let held = when_ready(&config, &alice, &["reserve", "12"]);
    assert!(held.status.success(), "{}", String::from_utf8_lossy(&held.stderr));
    assert!(stdout(&held).starts_with("seat 12: held for you until"), "{}", stdout(&held));
    assert_eq!(stdout(&seats_client(&config, &bob, &["reserve", "12"])), "seat 12: taken");
    assert_eq!(stdout(&seats_client(&config, &bob, &["cancel", "12"])), "seat 12: not held by you");

    // kill -9 one replica: 3 of 4 still make a quorum.
    replicas.kill(3);

    assert_eq!(stdout(&seats_client(&config, &alice, &["confirm", "12"])), "seat 12: confirmed");
    let any = seats_client(&config, &bob, &["reserve-any"]);
    let text = stdout(&any);
    assert!(text.starts_with("seat ") && text.contains("held for you"), "{text}");
    assert!(!text.starts_with("seat 12:"), "a taken seat was handed out: {text}");
    assert_eq!(stdout(&seats_client(&config, &alice, &["cancel", "12"])), "seat 12: cancelled");
    assert_eq!(stdout(&seats_client(&config, &bob, &["reserve", "12"]))[..25], *"seat 12: held for you unt");
    let shown = stdout(&seats_client(&config, &alice, &["show"]));
    assert!(shown.starts_with("2 taken: "), "{shown}");
    assert!(shown.split_whitespace().any(|seat| seat == "12?"), "{shown}");
}
