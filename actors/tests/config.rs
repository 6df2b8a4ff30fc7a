//! The cluster file, key files and keygen: round trips, and an error that names the file
//! and the field for each way a file can be broken.

use bulwark_actors::config::{
    key_path, keygen, load_replica_key, ClusterFile, ConfigFileError, Keygen, ReplicaEntry, CLUSTER_FILE_NAME,
};
use bulwark_crypto::KeyPair;
use bulwark_framework::{ClusterId, ProtocolParams, ReplicaId, View};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::path::Path;

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(7)
}

fn public_hex(i: u8) -> String {
    KeyPair::from_seed([i + 1; 32]).public().to_hex()
}

/// A hand-written, valid cluster file of `n` replicas; `extra` is appended verbatim.
fn file_text(n: u8, extra: &str) -> String {
    let mut text = String::from("# test cluster\ncluster_id = 1\n");
    for i in 0..n {
        text.push_str(&format!(
            "\n[[replica]]\nid = {i}\naddress = \"127.0.0.1:{}\"\npublic_key = \"{}\"\n",
            7000 + u16::from(i),
            public_hex(i)
        ));
    }
    text.push_str(extra);
    text
}

fn parse(text: &str) -> Result<ClusterFile, ConfigFileError> {
    ClusterFile::parse(text, Path::new("cluster.toml"))
}

/// Parses `text`, expects an error, and checks its message contains every one of `parts`.
#[track_caller]
fn expect_error(text: &str, parts: &[&str]) -> String {
    let err = parse(text).expect_err("the broken file was accepted");
    let message = err.to_string();
    for part in parts {
        assert!(message.contains(part), "error {message:?} does not contain {part:?}");
    }
    assert!(!message.contains('\n'), "multi-line error: {message:?}");
    message
}

#[test]
fn keygen_then_load_round_trips_for_4_and_7_replicas() {
    for (n, f, quorum) in [(4usize, 1usize, 3usize), (7, 2, 5)] {
        let dir = tempfile::tempdir().unwrap();
        let spec = Keygen { replicas: n, base_port: 9100, ..Keygen::default() };
        let generated = keygen(&spec, dir.path(), &mut rng()).unwrap();
        let path = dir.path().join(CLUSTER_FILE_NAME);
        let loaded = ClusterFile::load(&path).unwrap();
        assert_eq!(loaded, generated);

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&format!("# Bulwark cluster: {n} replicas, tolerates f = {f} Byzantine\n")), "{text}");

        let cluster = loaded.membership().unwrap();
        assert_eq!((cluster.n(), cluster.f(), cluster.quorum()), (n, f, quorum));
        assert_eq!(cluster.params, ProtocolParams::default());
        for (i, entry) in loaded.replicas.iter().enumerate() {
            assert_eq!(entry.id, ReplicaId(i as u32));
            assert_eq!(cluster.public_key(entry.id), Some(&entry.public_key));
            let key = KeyPair::load(&key_path(dir.path(), entry.id)).unwrap();
            assert_eq!(key.public(), entry.public_key);
        }
        let addresses = loaded.addresses();
        assert_eq!(addresses.len(), n);
        for (id, address) in addresses {
            assert_eq!(address, format!("127.0.0.1:{}", 9100 + id.0).parse().unwrap());
        }
    }
}

#[test]
fn key_path_is_replica_id_dot_key() {
    assert_eq!(key_path(Path::new("/etc/bulwark"), ReplicaId(3)), Path::new("/etc/bulwark/replica-3.key"));
}

#[test]
fn keygen_hosts_one_for_all_or_one_per_replica() {
    let dir = tempfile::tempdir().unwrap();
    let one = Keygen { hosts: vec!["10.0.0.9".into()], ..Keygen::default() };
    let file = keygen(&one, &dir.path().join("one"), &mut rng()).unwrap();
    let shown: Vec<String> = file.addresses().values().map(|a| a.to_string()).collect();
    assert_eq!(shown, ["10.0.0.9:7000", "10.0.0.9:7001", "10.0.0.9:7002", "10.0.0.9:7003"]);

    let each = Keygen {
        hosts: vec!["10.0.0.1".into(), "10.0.0.2".into(), "::1".into(), "10.0.0.4".into()],
        ..Keygen::default()
    };
    let file = keygen(&each, &dir.path().join("each"), &mut rng()).unwrap();
    let shown: Vec<String> = file.addresses().values().map(|a| a.to_string()).collect();
    assert_eq!(shown, ["10.0.0.1:7000", "10.0.0.2:7001", "[::1]:7002", "10.0.0.4:7003"]);
    // The IPv6 address survives the file.
    let loaded = ClusterFile::load(&dir.path().join("each").join(CLUSTER_FILE_NAME)).unwrap();
    assert_eq!(loaded, file);
}

#[test]
fn keygen_refuses_a_wrong_spec() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Keygen, &str)> = vec![
        (
            Keygen { hosts: vec!["10.0.0.1".into(), "10.0.0.2".into()], ..Keygen::default() },
            "keygen: hosts: expected one host for all replicas or one per replica (4), got 2",
        ),
        (
            Keygen { hosts: vec!["example.com".into()], ..Keygen::default() },
            "keygen: hosts: \"example.com\" is not an IP address",
        ),
        (Keygen { replicas: 3, ..Keygen::default() }, "keygen: replicas: a BFT cluster needs at least 4 replicas"),
        (Keygen { base_port: 65534, ..Keygen::default() }, "keygen: base_port:"),
        (
            Keygen {
                params: ProtocolParams { checkpoint_interval: 100, watermark_window: 250, ..ProtocolParams::default() },
                ..Keygen::default()
            },
            "keygen: params.watermark_window: must be a multiple of checkpoint_interval",
        ),
    ];
    for (spec, expected) in cases {
        let out = dir.path().join("out");
        let err = keygen(&spec, &out, &mut rng()).unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        assert!(!out.join(CLUSTER_FILE_NAME).exists());
    }
}

#[test]
fn keygen_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let first = keygen(&Keygen::default(), dir.path(), &mut rng()).unwrap();

    // A second run over the same directory is refused and changes nothing.
    let err = keygen(&Keygen::default(), dir.path(), &mut ChaCha20Rng::seed_from_u64(8)).unwrap_err();
    assert!(matches!(err, ConfigFileError::Exists { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("cluster.toml"), "{message}");
    assert!(message.contains("already exists"), "{message}");
    let still = ClusterFile::load(&dir.path().join(CLUSTER_FILE_NAME)).unwrap();
    assert_eq!(still.replicas, first.replicas);

    // A lone key file left behind is refused too, and nothing is written.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(key_path(&other, ReplicaId(2)), "precious").unwrap();
    let message = keygen(&Keygen::default(), &other, &mut rng()).unwrap_err().to_string();
    assert!(message.contains("replica-2.key"), "{message}");
    assert!(message.contains("already exists"), "{message}");
    assert!(!other.join(CLUSTER_FILE_NAME).exists());
    assert!(!key_path(&other, ReplicaId(0)).exists());
    assert_eq!(std::fs::read_to_string(key_path(&other, ReplicaId(2))).unwrap(), "precious");
}

#[test]
fn keygen_creates_the_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a").join("b");
    keygen(&Keygen::default(), &out, &mut rng()).unwrap();
    assert!(out.join(CLUSTER_FILE_NAME).is_file());
    assert!(key_path(&out, ReplicaId(3)).is_file());
}

#[test]
fn replica_key_loads_for_its_own_id_only() {
    let dir = tempfile::tempdir().unwrap();
    keygen(&Keygen::default(), dir.path(), &mut rng()).unwrap();
    let cluster = ClusterFile::load(&dir.path().join(CLUSTER_FILE_NAME)).unwrap();

    let key = load_replica_key(&cluster, ReplicaId(2), &key_path(dir.path(), ReplicaId(2))).unwrap();
    assert_eq!(key.public(), cluster.replicas[2].public_key);

    let wrong = key_path(dir.path(), ReplicaId(1));
    let err = load_replica_key(&cluster, ReplicaId(2), &wrong).unwrap_err();
    let message = err.to_string();
    let expected = format!(
        "key file {} is not the key of replica 2 in cluster file {}",
        wrong.display(),
        dir.path().join(CLUSTER_FILE_NAME).display()
    );
    assert!(message.starts_with(&expected), "{message}");
    assert!(message.contains("it is the key of replica 1"), "{message}");

    let message = load_replica_key(&cluster, ReplicaId(9), &wrong).unwrap_err().to_string();
    assert!(message.contains("has no replica 9"), "{message}");

    let absent = dir.path().join("absent.key");
    let message = load_replica_key(&cluster, ReplicaId(0), &absent).unwrap_err().to_string();
    assert!(message.contains("absent.key"), "{message}");
}

#[test]
fn params_are_optional_and_partial() {
    let file = parse(&file_text(4, "")).unwrap();
    assert_eq!(file.params, ProtocolParams::default());

    let file = parse(&file_text(4, "\n[params]\nbatch_size_max = 17\n")).unwrap();
    assert_eq!(file.params, ProtocolParams { batch_size_max: 17, ..ProtocolParams::default() });
    assert_eq!(file.membership().unwrap().params.batch_size_max, 17);
}

#[test]
fn view_change_params_are_read_written_and_checked() {
    let text = file_text(4, "\n[params]\nview_change_timeout_us = 250000\nordering_rate_min_per_s = 40\n");
    let file = parse(&text).unwrap();
    let expected =
        ProtocolParams { view_change_timeout_us: 250_000, ordering_rate_min_per_s: 40, ..ProtocolParams::default() };
    assert_eq!(file.params, expected);
    let cluster = file.membership().unwrap();
    assert_eq!(cluster.params.view_change_timeout(), std::time::Duration::from_millis(250));
    assert_eq!(cluster.params.ordering_rate_min_per_s, 40);

    // Written by save (and keygen), read back unchanged.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CLUSTER_FILE_NAME);
    file.save(&path).unwrap();
    let saved = std::fs::read_to_string(&path).unwrap();
    assert!(saved.contains("view_change_timeout_us = 250000"), "{saved}");
    assert!(saved.contains("ordering_rate_min_per_s = 40"), "{saved}");
    assert_eq!(ClusterFile::load(&path).unwrap().params, expected);

    let text = file_text(4, "\n[params]\nview_change_timeout_us = 0\n");
    expect_error(&text, &["cluster.toml: params.view_change_timeout_us: must be at least 1"]);
    let text = file_text(4, "\n[params]\nordering_rate_min_per_s = \"fast\"\n");
    expect_error(&text, &["cluster.toml: params.ordering_rate_min_per_s: invalid type: string \"fast\""]);
}

#[test]
fn replicas_may_be_listed_in_any_order() {
    let mut text = String::from("cluster_id = 1\n");
    for i in [2u8, 0, 3, 1] {
        text.push_str(&format!(
            "[[replica]]\nid = {i}\naddress = \"127.0.0.1:{}\"\npublic_key = \"{}\"\n",
            7000 + u16::from(i),
            public_hex(i)
        ));
    }
    let file = parse(&text).unwrap();
    let ids: Vec<u32> = file.replicas.iter().map(|e| e.id.0).collect();
    assert_eq!(ids, [0, 1, 2, 3]);
    let cluster = file.membership().unwrap();
    assert_eq!(cluster.public_key(ReplicaId(2)), Some(&KeyPair::from_seed([3; 32]).public()));
}

#[test]
fn save_then_load_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saved.toml");
    let mut file = parse(&file_text(5, "")).unwrap();
    file.params.client_window = 9;
    file.save(&path).unwrap();
    let loaded = ClusterFile::load(&path).unwrap();
    assert_eq!(loaded.replicas, file.replicas);
    assert_eq!(loaded.params, file.params);
    assert_eq!(loaded.path.as_deref(), Some(path.as_path()));
}

#[test]
fn in_memory_changes_are_checked_by_membership() {
    let mut file = parse(&file_text(4, "")).unwrap();
    let copy = file.replicas[0].clone();
    file.replicas.push(ReplicaEntry { id: ReplicaId(4), ..copy });
    let message = file.membership().unwrap_err().to_string();
    assert!(message.contains("cluster.toml: replica[4].address: duplicate address"), "{message}");
}

#[test]
fn missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let err = ClusterFile::load(&path).unwrap_err();
    assert!(matches!(err, ConfigFileError::Io { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("cannot read cluster file"), "{message}");
}

#[test]
fn syntax_error_gives_line_and_column() {
    let text = format!("{}\n[[replica]]\nid = \n", file_text(4, ""));
    let line = text.lines().count();
    expect_error(&text, &["cluster.toml: TOML syntax error at line", &format!("line {line}, column 6")]);
}

#[test]
fn bad_public_key_is_named() {
    let text = file_text(4, "").replace(&public_hex(2), "abc123");
    expect_error(
        &text,
        &[
            "cluster.toml: replica[2].public_key: not a valid ed25519 public key \
             (expected 64 hex digits)",
            "(line ",
        ],
    );
    // 64 hex digits that are not a curve point.
    let not_a_point = format!("02{}", "0".repeat(62));
    assert!(bulwark_crypto::PublicKey::from_hex(&not_a_point).is_err());
    let text = file_text(4, "").replace(&public_hex(1), &not_a_point);
    expect_error(&text, &["cluster.toml: replica[1].public_key: not a valid ed25519 public key"]);
    let text = file_text(4, "").replace(&format!("\"{}\"", public_hex(0)), "7");
    expect_error(&text, &["cluster.toml: replica[0].public_key: expected a string of 64 hex digits, found integer 7"]);
}

/// Ids are names, not positions: any distinct ids form a cluster, and the primary of view
/// `v` is the member at position `v mod n` of the ids in ascending order.
#[test]
fn ids_need_not_be_0_to_n() {
    let text = file_text(4, "")
        .replace("\nid = 3\n", "\nid = 8\n")
        .replace("\nid = 2\n", "\nid = 21\n")
        .replace("\nid = 1\n", "\nid = 3\n")
        .replace("\nid = 0\n", "\nid = 40\n");
    let file = parse(&text).unwrap();
    assert_eq!(file.ids(), [ReplicaId(3), ReplicaId(8), ReplicaId(21), ReplicaId(40)]);
    let membership = file.membership().unwrap();
    assert_eq!(membership.cluster(), ClusterId(1));
    let primaries: Vec<u32> = (0..5).map(|v| membership.primary(View(v)).0).collect();
    assert_eq!(primaries, [3, 8, 21, 40, 3]);
    // The replica listed first with id 40 keeps its key under id 40.
    assert_eq!(membership.public_key(ReplicaId(40)), Some(&KeyPair::from_seed([1; 32]).public()));
}

#[test]
fn cluster_id_is_required_and_checked() {
    let text = file_text(4, "").replace("cluster_id = 1\n", "");
    expect_error(&text, &["cluster.toml: cluster_id: required field is missing"]);
    let text = file_text(4, "").replace("cluster_id = 1", "cluster_id = -1");
    expect_error(&text, &["cluster.toml: cluster_id: -1 is out of range", "(line 2, column 14)"]);
    let text = file_text(4, "").replace("cluster_id = 1", "cluster_id = 4294967296");
    expect_error(&text, &["cluster.toml: cluster_id: 4294967296 is out of range"]);
    let text = file_text(4, "").replace("cluster_id = 1", "cluster_id = \"one\"");
    expect_error(&text, &["cluster.toml: cluster_id: expected an integer, found string \"one\""]);
    let text = file_text(4, "").replace("cluster_id = 1", "cluster_id = 4294967295");
    assert_eq!(parse(&text).unwrap().cluster_id, ClusterId(u32::MAX));
}

#[test]
fn keygen_writes_the_ids_and_cluster_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let ids = vec![ReplicaId(40), ReplicaId(3), ReplicaId(21), ReplicaId(8)];
    let spec = Keygen { cluster_id: ClusterId(7), ids, ..Keygen::default() };
    let generated = keygen(&spec, dir.path(), &mut rng()).unwrap();
    let loaded = ClusterFile::load(&dir.path().join(CLUSTER_FILE_NAME)).unwrap();
    assert_eq!(loaded, generated);
    assert_eq!(loaded.cluster_id, ClusterId(7));
    assert_eq!(loaded.ids(), [ReplicaId(3), ReplicaId(8), ReplicaId(21), ReplicaId(40)]);
    // Ports follow the ids in ascending order; every key file is named by its id.
    let shown: Vec<String> = loaded.addresses().values().map(|a| a.to_string()).collect();
    assert_eq!(shown, ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]);
    for id in loaded.ids() {
        let key = load_replica_key(&loaded, id, &key_path(dir.path(), id)).unwrap();
        assert_eq!(Some(&key.public()), loaded.membership().unwrap().public_key(id));
    }
    let message = load_replica_key(&loaded, ReplicaId(0), &key_path(dir.path(), ReplicaId(3))).unwrap_err();
    assert!(message.to_string().contains("has no replica 0 (its replicas are 3, 8, 21, 40)"), "{message}");

    let twice = Keygen { ids: vec![ReplicaId(1), ReplicaId(2), ReplicaId(2), ReplicaId(3)], ..Keygen::default() };
    let message = keygen(&twice, &dir.path().join("twice"), &mut rng()).unwrap_err().to_string();
    assert!(message.contains("keygen: ids: id 2 appears twice"), "{message}");
    let short = Keygen { ids: vec![ReplicaId(1), ReplicaId(2)], ..Keygen::default() };
    let message = keygen(&short, &dir.path().join("short"), &mut rng()).unwrap_err().to_string();
    assert!(message.contains("keygen: ids: 2 ids for 4 replicas"), "{message}");
}

#[test]
fn duplicate_id_is_named() {
    let text = file_text(4, "").replace("id = 3", "id = 1");
    expect_error(&text, &["cluster.toml: replica[3].id: duplicate id 1 (also the id of replica[1])"]);
}

#[test]
fn bad_id_values_are_named() {
    let text = file_text(4, "").replace("id = 2", "id = -2");
    expect_error(&text, &["cluster.toml: replica[2].id: -2 is out of range"]);
    let text = file_text(4, "").replace("id = 2", "id = \"2\"");
    expect_error(&text, &["cluster.toml: replica[2].id: expected an integer, found string \"2\""]);
}

#[test]
fn bad_address_is_named() {
    let text = file_text(4, "").replace("127.0.0.1:7001", "foo");
    expect_error(&text, &["cluster.toml: replica[1].address: invalid socket address \"foo\"", "(line "]);
}

#[test]
fn duplicate_address_is_named() {
    let text = file_text(4, "").replace("127.0.0.1:7002", "127.0.0.1:7000");
    expect_error(
        &text,
        &["cluster.toml: replica[2].address: duplicate address 127.0.0.1:7000 \
             (also the address of replica[0])"],
    );
}

#[test]
fn duplicate_public_key_is_named() {
    let text = file_text(4, "").replace(&public_hex(3), &public_hex(0));
    expect_error(&text, &["cluster.toml: replica[3].public_key: duplicate public key (also the key of replica[0])"]);
}

#[test]
fn too_few_replicas_is_named() {
    expect_error(&file_text(3, ""), &["cluster.toml: replica: a BFT cluster needs at least 4 replicas", "lists 3"]);
    expect_error("cluster_id = 1\n", &["cluster.toml: replica: a BFT cluster needs at least 4 replicas", "lists 0"]);
}

#[test]
fn missing_field_is_named() {
    let text = file_text(4, "").replace(&format!("public_key = \"{}\"\n", public_hex(0)), "");
    expect_error(&text, &["cluster.toml: replica[0].public_key: required field is missing", "(line 4, column 1)"]);
}

#[test]
fn unknown_fields_are_named_with_their_line() {
    // In a replica table.
    let text = file_text(4, "").replace("\nid = 1\n", "\nid = 1\nport = 7001\n");
    let line = text.lines().position(|l| l == "port = 7001").unwrap() + 1;
    expect_error(&text, &["cluster.toml: replica[1].port: unknown field `port`", &format!("(line {line}, column 8)")]);
    // At the top level (`replicas` for `replica`).
    let text = file_text(4, "").replace("[[replica]]", "[[replicas]]");
    expect_error(&text, &["cluster.toml: replicas: unknown field `replicas`", "line 4, column"]);
    // In [params].
    let text = file_text(4, "\n[params]\nbatch_size = 3\n");
    let line = text.lines().count();
    expect_error(
        &text,
        &["cluster.toml: params.batch_size: unknown field `batch_size`", &format!("(line {line}, column 14)")],
    );
}

#[test]
fn mistyped_params_are_named() {
    let text = file_text(4, "\n[params]\nbatch_size_max = \"many\"\n");
    expect_error(&text, &["cluster.toml: params.batch_size_max: invalid type: string \"many\""]);
    let text = file_text(4, "\n[params]\nclient_window = -1\n");
    expect_error(&text, &["cluster.toml: params.client_window: invalid value"]);
}

#[test]
fn invalid_params_are_named() {
    let text = file_text(4, "\n[params]\ncheckpoint_interval = 100\nwatermark_window = 250\n");
    let line = text.lines().count();
    expect_error(
        &text,
        &[
            "cluster.toml: params.watermark_window: must be a multiple of checkpoint_interval",
            &format!("(line {line}, column 20)"),
        ],
    );
    let text = file_text(4, "\n[params]\nbatch_size_max = 0\n");
    expect_error(&text, &["cluster.toml: params.batch_size_max: must be at least 1"]);
}

#[test]
fn misshapen_tables_are_named() {
    expect_error("replica = 5\n", &["cluster.toml: replica: invalid type", "line 1, column 11"]);
    expect_error("replica = [1]\n", &["cluster.toml: replica[0]: invalid type", "line 1"]);
    expect_error(
        &format!("params = 3\n{}", file_text(4, "")),
        &["cluster.toml: params: invalid type", "line 1, column 10"],
    );
    // After a [[replica]] header, the same line belongs to that replica's table.
    expect_error(&file_text(4, "params = 3\n"), &["cluster.toml: replica[3].params: unknown field `params`"]);
}
