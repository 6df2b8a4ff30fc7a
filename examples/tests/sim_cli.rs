//! `bulwark sim`: a campaign ends with `violations: 0`; with f + 1 Byzantine replicas (the
//! negative control) it finds violations, says so, names the seed and how to replay it,
//! and exits with status 1.

use std::process::Command;

fn sim(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_bulwark")).arg("sim").args(args).output().expect("bulwark runs");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn a_campaign_with_f_byzantine_replicas_reports_no_violations() {
    let (ok, out) = sim(&["--replicas", "0", "--seeds", "10"]);
    assert!(ok, "{out}");
    assert_eq!(out.lines().last(), Some("violations: 0"), "{out}");
}

#[test]
fn with_f_plus_1_byzantine_replicas_it_finds_a_violation_and_says_how_to_replay_it() {
    let (ok, out) = sim(&["--seeds", "20", "--byzantine", "2"]);
    assert!(!ok, "f + 1 Byzantine replicas went unnoticed:\n{out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.starts_with("violations: ") && last.contains("replay with `bulwark sim"), "{out}");
    let seed: String =
        last.split("first at seed ").nth(1).unwrap_or_default().chars().take_while(char::is_ascii_digit).collect();
    let (ok, replay) = sim(&["--first-seed", &seed, "--seeds", "1", "--byzantine", "2"]);
    assert!(!ok && replay.contains("1 unsafe"), "the replay did not reproduce the violation:\n{replay}");
}
