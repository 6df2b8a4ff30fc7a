//! `bulwark sim`: a campaign ends with `violations: 0`; with f + 1 Byzantine replicas (the
//! negative control) it finds violations, says so, names the seed and how to replay it,
//! and exits with status 1. The same with `--twins`: one twin at n = 4 is safe, f + 1
//! twins break safety, and the named seed replays the violation.

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

#[test]
fn twins_with_one_twin_at_n4_reports_no_violations() {
    let (ok, out) = sim(&["--twins", "--replicas", "4", "--seeds", "40"]);
    assert!(ok, "{out}");
    assert!(out.starts_with("Twins: n = 4, 1 twinned, 2 rounds of 400 ms: 1024 scenarios"), "{out}");
    assert!(out.contains("40 seeds") && out.contains("0 unsafe, 0 not live"), "{out}");
    assert_eq!(out.lines().last(), Some("violations: 0"), "{out}");
}

#[test]
fn twins_for_f_plus_1_replicas_find_a_violation_and_the_replay_reproduces_it() {
    let (ok, out) = sim(&["--twins", "--replicas", "4", "--byzantine", "2", "--rounds", "1", "--seeds", "192"]);
    assert!(!ok, "f + 1 twins went unnoticed:\n{out}");
    assert!(out.contains("192 scenarios; running seeds 1..=192 (exhaustive)"), "{out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.contains("replay with `bulwark sim --twins --replicas 4 --byzantine 2 --rounds 1"), "{out}");
    let seed: String =
        last.split("first at seed ").nth(1).unwrap_or_default().chars().take_while(char::is_ascii_digit).collect();
    let replay =
        ["--twins", "--replicas", "4", "--byzantine", "2", "--rounds", "1", "--first-seed", &seed, "--seeds", "1"];
    let (ok, replay) = sim(&replay);
    assert!(!ok && replay.contains("1 unsafe"), "the replay did not reproduce the violation:\n{replay}");
}
