//! The store: records round-trip, group commit, corruption found and moved aside, another cluster's store refused.

use super::*;
use bulwark_crypto::KeyPair;
use bulwark_framework::messages::{Request, VerifiedMessage};
use bulwark_framework::roles::node::Node;
use bulwark_framework::{Action, Input, ProtocolParams, Service, ServiceError, TimerKind, Timestamp};
use std::collections::VecDeque;

/// A replicated counter: enough service to produce every kind of record.
#[derive(Debug, Default)]
struct Counter(u64);

impl Service for Counter {
    type Op = u64;
    type Reply = u64;
    fn execute(&mut self, op: &u64, _: &mut bulwark_framework::service::ExecutionContext) -> u64 {
        self.0 = self.0.wrapping_add(*op);
        self.0
    }
    fn query(&self, _: &u64, _: &bulwark_framework::service::Caller) -> Option<u64> {
        None
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), ServiceError> {
        let bytes: [u8; 8] = bytes.try_into().map_err(|_| ServiceError("8 bytes".into()))?;
        self.0 = u64::from_le_bytes(bytes);
        Ok(())
    }
}

fn config_of(keys: &[KeyPair]) -> MembershipHandle {
    cluster_of(ClusterId(1), keys)
}

fn cluster_of(cluster: ClusterId, keys: &[KeyPair]) -> MembershipHandle {
    let params = ProtocolParams { checkpoint_interval: 4, watermark_window: 8, ..ProtocolParams::default() };
    MembershipHandle::new(Membership::numbered(cluster, keys.iter().map(KeyPair::public).collect(), params).unwrap())
}

fn keys(seed: u8) -> Vec<KeyPair> {
    (0..4).map(|i| KeyPair::from_seed([seed + i; 32])).collect()
}

/// Four framework replicas, each with its roles, wired directly to each other run `requests` requests; returns
/// the config and replica 1's `Persist` records, one group per `handle` call.
fn record_groups(requests: u64) -> (MembershipHandle, Vec<Vec<Record>>) {
    let config = config_of(&keys(1));
    let mut replicas: Vec<Node<Counter>> = keys(1)
        .into_iter()
        .enumerate()
        .map(|(i, key)| {
            let handle = MembershipHandle::new((*config.current()).clone());
            let mut node = Node::new(ReplicaId(i as u32), key, handle, Counter::default());
            node.start(bulwark_framework::Instant(0));
            node
        })
        .collect();
    let client = KeyPair::from_seed([99; 32]);
    let mut groups = Vec::new();
    let mut now = bulwark_framework::Instant(0);
    for t in 1..=requests {
        let request = Request {
            client_key: client.public().into(),
            timestamp: Timestamp(t),
            read_only: false,
            operation: rmp_serde::to_vec(&t).unwrap(),
        };
        let request = config.sign(request, &client);
        let mut queue: VecDeque<(usize, Input)> = VecDeque::new();
        queue.push_back((0, Input::Message(VerifiedMessage::Request(request))));
        now = now + config.current().params.batch_delay() * 2;
        queue.push_back((0, Input::Timer(TimerKind::Batch)));
        while let Some((to, input)) = queue.pop_front() {
            let actions = replicas[to].handle(input, now);
            let mut group = Vec::new();
            for action in actions {
                match action {
                    Action::Persist(record) => group.push(record),
                    Action::Broadcast { message } => {
                        for peer in (0..4).filter(|p| *p != to) {
                            queue.push_back((peer, Input::Message(message.clone())));
                        }
                    }
                    Action::Send { to, message } => queue.push_back((to.0 as usize, Input::Message(message))),
                    _ => {}
                }
            }
            if to == 1 && !group.is_empty() {
                groups.push(group);
            }
        }
    }
    (config, groups)
}

fn folded(groups: &[Vec<Record>]) -> Recovered {
    let mut recovered = Recovered::default();
    for record in groups.iter().flatten() {
        recovered.apply(record.clone());
    }
    recovered
}

fn has_stable(group: &[Record]) -> bool {
    group.iter().any(|r| matches!(r, Record::Stable { .. }))
}

#[test]
fn records_appended_load_back_as_the_same_recovered_state() {
    let (config, groups) = record_groups(3);
    assert!(groups.iter().all(|g| !has_stable(g)), "no checkpoint yet in 3 requests");
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path(), ReplicaId(1));
    let (mut store, opened) = Store::open(&path, config.clone()).unwrap();
    assert!(opened.recovered.is_empty() && opened.discarded.is_none() && opened.records == 0);
    for group in &groups {
        store.append(group).unwrap();
    }
    let appended: usize = groups.iter().map(Vec::len).sum();
    let metrics = store.stats().snapshot();
    assert_eq!(metrics.transactions, groups.len() as u64);
    assert_eq!(metrics.records_written, appended as u64);
    assert!(metrics.bytes_written > 0);
    // Exactly what was appended, in order, survives the checksum and re-verification.
    assert_eq!(store.stored_records().unwrap(), groups.concat());
    drop(store);

    let (store, opened) = Store::open(&path, config).unwrap();
    assert!(opened.discarded.is_none());
    assert_eq!(opened.records, appended as u64);
    let expected = folded(&groups);
    assert!(!expected.committed.is_empty() && !expected.votes.is_empty() && !expected.prepared.is_empty());
    assert_eq!(opened.recovered.to_records(), expected.to_records());
    assert_eq!(store.recovered().to_records(), expected.to_records());
    assert_eq!(store.stats().snapshot().corrupt_discarded, 0);
}

#[test]
fn compaction_after_a_stable_checkpoint_keeps_exactly_to_records() {
    let (config, groups) = record_groups(11);
    let stable_groups = groups.iter().filter(|g| has_stable(g)).count();
    assert!(stable_groups >= 2, "checkpoints at 4 and 8: {stable_groups}");
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path(), ReplicaId(1));
    let (mut store, _) = Store::open(&path, config.clone()).unwrap();
    let mut longest = 0;
    for (i, group) in groups.iter().enumerate() {
        store.append(group).unwrap();
        let stored = store.stored_records().unwrap();
        longest = longest.max(stored.len());
        if has_stable(group) {
            // The table is exactly the compacted form of everything so far.
            let expected = folded(&groups[..=i]);
            assert_eq!(stored, expected.to_records());
            assert!(matches!(stored[0], Record::Stable { .. }));
        }
    }
    assert_eq!(store.stats().snapshot().compactions, stable_groups as u64);
    let all: usize = groups.iter().map(Vec::len).sum();
    assert!(longest < all, "compaction bounds the table: at most {longest} of {all} records");
    drop(store);
    let (_, opened) = Store::open(&path, config).unwrap();
    assert!(opened.discarded.is_none());
    assert_eq!(opened.recovered.to_records(), folded(&groups).to_records());
    assert_eq!(opened.recovered.low().0, 8);
}

#[test]
fn a_flipped_byte_fails_the_checksum_before_decoding() {
    let (config, groups) = record_groups(1);
    let record = &groups[0][0];
    let value = encode(7, record).unwrap();
    let config = config.current();
    assert_eq!(&decode(7, &value, &config).unwrap(), record);
    for position in [0, CHECKSUM_BYTES, value.len() / 2, value.len() - 1] {
        let mut flipped = value.clone();
        flipped[position] ^= 0x10;
        let error = decode(7, &flipped, &config).unwrap_err();
        assert!(error.contains("checksum"), "byte {position}: {error}");
    }
    assert!(decode(8, &value, &config).unwrap_err().contains("checksum"), "a record moved to another key");
    assert!(decode(7, &value[..10], &config).unwrap_err().contains("shorter"));
}

/// Every byte position holding `needle` in the file at `path`.
fn find_all(bytes: &[u8], needle: &[u8]) -> Vec<usize> {
    bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect()
}

fn assert_discarded(path: &Path, config: MembershipHandle, why: &str) {
    let (store, opened) = Store::open(path, config).unwrap();
    let discarded = opened.discarded.unwrap_or_else(|| panic!("{why}: not detected"));
    assert!(opened.recovered.is_empty(), "{why}");
    assert!(discarded.moved_to.exists(), "{why}: the bad file is kept aside");
    assert!(discarded.moved_to.to_string_lossy().contains(".redb.corrupt-"), "{:?}", discarded.moved_to);
    assert_eq!(store.stats().snapshot().corrupt_discarded, 1);
    assert!(store.stored_records().unwrap().is_empty(), "{why}: a fresh store");
    eprintln!("{why}: {}", discarded.reason);
}

fn written_store(groups: &[Vec<Record>], config: &MembershipHandle) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path(), ReplicaId(1));
    let (mut store, _) = Store::open(&path, config.clone()).unwrap();
    for group in groups {
        store.append(group).unwrap();
    }
    (dir, path)
}

#[test]
fn a_flipped_byte_in_the_file_is_detected_and_the_store_moved_aside() {
    let (config, groups) = record_groups(3);
    let (_dir, path) = written_store(&groups, &config);
    // Flip one byte in the middle of a stored record's value, wherever redb put it.
    let committed = groups.concat().into_iter().find(|r| matches!(r, Record::Committed { .. })).unwrap();
    let key = groups.concat().iter().position(|r| *r == committed).unwrap() as u64;
    let value = encode(key, &committed).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let hits = find_all(&bytes, &value);
    assert!(!hits.is_empty(), "the record's value is in the file");
    for at in hits {
        bytes[at + value.len() / 2] ^= 0x01;
    }
    std::fs::write(&path, &bytes).unwrap();
    assert_discarded(&path, config, "a flipped byte");
}

#[test]
fn a_truncated_file_is_detected() {
    let (config, groups) = record_groups(3);
    let (_dir, path) = written_store(&groups, &config);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    assert_discarded(&path, config, "a truncated file");
}

#[test]
fn a_store_whose_signatures_do_not_verify_is_not_trusted() {
    // Checksums are fine, but the records were signed by another cluster's keys: as if
    // someone rewrote the store with a consistent checksum.
    let (config, groups) = record_groups(3);
    let (_dir, path) = written_store(&groups, &config);
    let other = config_of(&keys(50));
    assert_discarded(&path, other, "foreign signatures");
}

#[test]
fn a_new_store_opened_again_before_any_record_loads_empty() {
    let (config, _) = record_groups(1);
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path(), ReplicaId(1));
    drop(Store::open(&path, config.clone()).unwrap());
    let (store, opened) = Store::open(&path, config).unwrap();
    assert!(opened.discarded.is_none(), "{:?}", opened.discarded);
    assert!(opened.recovered.is_empty() && opened.records == 0);
    assert_eq!(store.stats().snapshot().corrupt_discarded, 0);
}

#[test]
fn a_store_of_another_cluster_is_refused_and_left_where_it_is() {
    let (config, groups) = record_groups(3);
    let (_dir, path) = written_store(&groups, &config);
    // The same keys and records, opened by a replica of cluster 2.
    let failure = Store::open(&path, cluster_of(ClusterId(2), &keys(1))).unwrap_err();
    assert!(failure.reason.contains("belongs to cluster 1"), "{failure}");
    assert!(path.exists(), "nothing is moved aside");
    // Its own cluster still opens it.
    let (_, opened) = Store::open(&path, config).unwrap();
    assert!(opened.discarded.is_none() && opened.records > 0);
}

#[test]
fn garbage_instead_of_a_database_is_detected() {
    let (config, _) = record_groups(1);
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path(), ReplicaId(1));
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    assert_discarded(&path, config, "garbage");
}

#[test]
fn a_store_held_by_another_process_is_an_error_not_a_discard() {
    let (config, groups) = record_groups(1);
    let (_dir, path) = written_store(&groups, &config);
    let (_held, _) = Store::open(&path, config.clone()).unwrap();
    let failure = Store::open(&path, config).unwrap_err();
    assert!(failure.reason.contains("another process"), "{failure}");
    assert!(path.exists());
}

#[test]
fn the_writer_commits_submitted_groups_and_reports_the_last_ticket() {
    actix_rt::System::new().block_on(writer_commits_groups());
}

async fn writer_commits_groups() {
    struct Sink(tokio::sync::mpsc::UnboundedSender<StoreEvent>);
    impl Actor for Sink {
        type Context = Context<Self>;
    }
    impl Handler<StoreEvent> for Sink {
        type Result = ();
        fn handle(&mut self, event: StoreEvent, _: &mut Context<Self>) {
            let _ = self.0.send(event);
        }
    }
    let (config, groups) = record_groups(11);
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(dir.path(), ReplicaId(1));
    let (store, _) = Store::open(&path, config.clone()).unwrap();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let sink = Sink(events_tx).start();
    let writer = StoreWriter::start(store, sink.recipient()).unwrap();
    for (ticket, group) in groups.iter().enumerate() {
        assert!(writer.submit(ticket as u64 + 1, group.clone()));
    }
    let last = groups.len() as u64;
    loop {
        match events.recv().await.unwrap() {
            StoreEvent::Durable(ticket) if ticket == last => break,
            StoreEvent::Durable(ticket) => assert!(ticket < last),
            StoreEvent::Failed(reason) => panic!("{reason}"),
        }
    }
    assert!(writer.metrics().transactions <= last);
    drop(writer);
    let (_, opened) = Store::open(&path, config).unwrap();
    assert_eq!(opened.recovered.to_records(), folded(&groups).to_records());
}
