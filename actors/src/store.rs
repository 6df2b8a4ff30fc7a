//! A replica's durable store: the [`Record`]s its framework replica asks to persist
//! (`Action::Persist`), in one redb database file per replica, and the writer thread that
//! commits them in groups.
//!
//! **Layout.** Table `records` maps a monotonically increasing `u64` key to
//! `checksum ‖ body`: `body` is the rmp-serde encoding of the record's [`StoredRecord`]
//! form and `checksum` the blake3 digest of the key and the body
//! ([`Digest::of_parts`]), so torn or flipped bytes and a record moved to another key are
//! caught before anything is decoded. Table `meta` holds the first and the next key: the
//! keys in between must all be there, so a record lost to a damaged page is caught too.
//! It also names the cluster the store belongs to: a store is written for one cluster
//! and refused (the replica stops, nothing is moved) when opened for another, since its
//! records are signed for that cluster and the directory is most likely the wrong one.
//!
//! **Writing.** [`Store::append`] writes the records of one group in one write
//! transaction with immediate durability (fsync) and two-phase commit: with two-phase
//! commit redb never silently falls back to the previous commit when the latest one is
//! damaged, which could otherwise drop a vote this replica already acted on. The store keeps
//! a live [`Recovered`] beside the file; a group with a [`Record::Stable`] rewrites the table
//! to [`Recovered::to_records`] in the same transaction, so the file holds one checkpoint
//! image plus at most one watermark window of records.
//!
//! **Loading.** [`Store::open`] asks redb to check every page checksum, reads the records
//! in key order, checks each checksum, decodes it, re-verifies every signature, certificate
//! and digest in it ([`StoredRecord::verify`]) and folds it into a [`Recovered`]. If any of
//! that fails, or redb reports corruption (or panics on a damaged file), the store is not
//! trusted: an error naming the file and the reason is logged and counted, the file is moved
//! aside with a `.corrupt-<unix time>` suffix, and the replica starts from an empty
//! `Recovered` and catches up from its peers by state transfer. Errors that say nothing
//! about the file's contents (another process holds it, permission denied, a full disk)
//! stop the replica instead: discarding a good store on a transient error could lose what
//! it alone remembers.
//!
//! **Group commit.** [`StoreWriter`] runs a store on its own thread. The replica actor
//! submits the records of each `handle` call with a ticket and holds back every later
//! action; the writer commits everything submitted while its previous commit was under way
//! in one transaction and reports the highest ticket it made durable
//! ([`StoreEvent::Durable`]), and the actor then releases what it held, in order.

use actix::prelude::*;
use bulwark_crypto::Digest;
use bulwark_framework::durable::{Record, Recovered, StoredRecord};
use bulwark_framework::{ClusterId, Membership, MembershipHandle, ReplicaId};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use std::io::ErrorKind;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FIRST_KEY: &str = "first";
const NEXT_KEY: &str = "next";
const CLUSTER_KEY: &str = "cluster";
const CHECKSUM_BYTES: usize = 32;

/// The database file of replica `id` under `dir`.
pub fn store_path(dir: &Path, id: ReplicaId) -> PathBuf {
    dir.join(format!("replica-{}.redb", id.0))
}

/// Counters of one store, shared between its writer thread and the replica's status.
#[derive(Debug, Default)]
pub struct StoreStats {
    records_written: AtomicU64,
    bytes_written: AtomicU64,
    transactions: AtomicU64,
    compactions: AtomicU64,
    last_commit_us: AtomicU64,
    records_stored: AtomicU64,
    records_loaded: AtomicU64,
    corrupt_discarded: AtomicU64,
}

impl StoreStats {
    pub fn snapshot(&self) -> StoreMetrics {
        StoreMetrics {
            records_written: self.records_written.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
            compactions: self.compactions.load(Ordering::Relaxed),
            last_commit_us: self.last_commit_us.load(Ordering::Relaxed),
            records_stored: self.records_stored.load(Ordering::Relaxed),
            records_loaded: self.records_loaded.load(Ordering::Relaxed),
            corrupt_discarded: self.corrupt_discarded.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of [`StoreStats`] (for status output and Prometheus).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Records written (appended, or rewritten by a compaction).
    pub records_written: u64,
    /// Bytes of record values written, checksums included.
    pub bytes_written: u64,
    /// Write transactions committed (each one fsync'd group commit).
    pub transactions: u64,
    /// Rewrites of the table after a stable checkpoint.
    pub compactions: u64,
    /// Wall time of the last commit, microseconds.
    pub last_commit_us: u64,
    /// Records in the file now.
    pub records_stored: u64,
    /// Records read back when the store was opened.
    pub records_loaded: u64,
    /// Stores found corrupt at startup and moved aside.
    pub corrupt_discarded: u64,
}

/// The store cannot be used: opening failed for a reason that says nothing about its
/// contents, or a write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("durable store {}: {reason}", path.display())]
pub struct StoreFailure {
    pub path: PathBuf,
    pub reason: String,
}

/// A store found corrupt at startup and moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discarded {
    pub moved_to: PathBuf,
    pub reason: String,
}

/// What [`Store::open`] found.
#[derive(Debug)]
pub struct Opened {
    /// What the records rebuild (empty for a new or discarded store).
    pub recovered: Recovered,
    /// Records read.
    pub records: u64,
    /// Set when the file was corrupt and moved aside.
    pub discarded: Option<Discarded>,
}

/// Why loading failed.
#[derive(Debug)]
enum LoadError {
    /// The file's contents cannot be trusted.
    Corrupt(String),
    /// Something outside the file's contents is wrong.
    Fatal(String),
}

/// Sorts a redb error into corruption of the file and everything else.
fn classify(error: impl Into<redb::Error>) -> LoadError {
    match error.into() {
        redb::Error::DatabaseAlreadyOpen => LoadError::Fatal("the database is open in another process".into()),
        redb::Error::UpgradeRequired(version) => {
            LoadError::Fatal(format!("the database is in file format {version}, which this build does not read"))
        }
        redb::Error::PreviousIo => LoadError::Fatal("an earlier I/O error left the database unusable".into()),
        redb::Error::Io(io) if !matches!(io.kind(), ErrorKind::UnexpectedEof | ErrorKind::InvalidData) => {
            LoadError::Fatal(format!("I/O error: {io}"))
        }
        other => LoadError::Corrupt(format!("redb reports: {other}")),
    }
}

fn write_error(path: &Path, error: impl Into<redb::Error>) -> StoreFailure {
    StoreFailure { path: path.to_path_buf(), reason: format!("write failed: {}", error.into()) }
}

/// `checksum ‖ body` for the record stored under `key`.
fn encode(key: u64, record: &Record) -> Result<Vec<u8>, String> {
    let body = rmp_serde::to_vec(&StoredRecord::from(record)).map_err(|e| format!("record does not encode: {e}"))?;
    let checksum = Digest::of_parts(&[&key.to_be_bytes(), &body]);
    let mut value = Vec::with_capacity(CHECKSUM_BYTES + body.len());
    value.extend_from_slice(checksum.as_bytes());
    value.extend_from_slice(&body);
    Ok(value)
}

/// Checks, decodes and re-verifies the value stored under `key`.
fn decode(key: u64, value: &[u8], config: &Membership) -> Result<Record, String> {
    if value.len() < CHECKSUM_BYTES {
        return Err(format!("{} bytes, shorter than its checksum", value.len()));
    }
    let (checksum, body) = value.split_at(CHECKSUM_BYTES);
    if Digest::of_parts(&[&key.to_be_bytes(), body]).as_bytes()[..] != checksum[..] {
        return Err("checksum mismatch (torn or flipped bytes)".into());
    }
    let stored: StoredRecord = rmp_serde::from_slice(body).map_err(|e| format!("does not decode: {e}"))?;
    stored.verify(config).map_err(|e| e.to_string())
}

/// What a good file holds.
struct Loaded {
    db: Database,
    recovered: Recovered,
    first_key: u64,
    next_key: u64,
}

fn load(path: &Path, config: &Membership) -> Result<Loaded, LoadError> {
    let mut db = Database::create(path).map_err(classify)?;
    // Checks every page checksum, which redb otherwise does only after an unclean shutdown.
    if !db.check_integrity().map_err(classify)? {
        tracing::warn!(file = %path.display(), "redb repaired the database file while checking it");
    }
    let (recovered, first_key, next_key) = read_records(&db, config)?;
    Ok(Loaded { db, recovered, first_key, next_key })
}

/// Names `cluster` in a store that names none yet (a new one), with its (empty) range of
/// records: a meta table always holds all three keys.
fn claim_for(db: &Database, cluster: ClusterId, path: &Path) -> Result<(), StoreFailure> {
    let failed = |e: redb::Error| write_error(path, e);
    let txn = db.begin_write().map_err(|e| failed(e.into()))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| failed(e.into()))?;
        if meta.get(CLUSTER_KEY).map_err(|e| failed(e.into()))?.is_some() {
            return Ok(());
        }
        meta.insert(CLUSTER_KEY, u64::from(cluster.0)).map_err(|e| failed(e.into()))?;
        for key in [FIRST_KEY, NEXT_KEY] {
            if meta.get(key).map_err(|e| failed(e.into()))?.is_none() {
                meta.insert(key, 0).map_err(|e| failed(e.into()))?;
            }
        }
    }
    txn.commit().map_err(|e| failed(e.into()))
}

fn read_records(db: &Database, config: &Membership) -> Result<(Recovered, u64, u64), LoadError> {
    let txn = db.begin_read().map_err(classify)?;
    let (first_key, next_key) = match txn.open_table(META) {
        Ok(meta) => {
            if let Some(cluster) = meta.get(CLUSTER_KEY).map_err(classify)? {
                let (theirs, mine) = (cluster.value(), config.cluster());
                if theirs != u64::from(mine.0) {
                    return Err(LoadError::Fatal(format!(
                        "it belongs to cluster {theirs}, and this replica is a member of cluster {}: \
                         refusing another cluster's records (is the data directory the right one?)",
                        mine.0
                    )));
                }
            }
            let get = |name: &str| -> Result<u64, LoadError> {
                match meta.get(name).map_err(classify)? {
                    Some(value) => Ok(value.value()),
                    None => Err(LoadError::Corrupt(format!("meta table has no {name:?} key"))),
                }
            };
            (get(FIRST_KEY)?, get(NEXT_KEY)?)
        }
        Err(redb::TableError::TableDoesNotExist(_)) => (0, 0),
        Err(error) => return Err(classify(error)),
    };
    if first_key > next_key {
        return Err(LoadError::Corrupt(format!("meta table says records {first_key}..{next_key}")));
    }
    let mut recovered = Recovered::default();
    let mut expected = first_key;
    match txn.open_table(RECORDS) {
        Ok(table) => {
            for entry in table.iter().map_err(classify)? {
                let (key, value) = entry.map_err(classify)?;
                let key = key.value();
                if key != expected {
                    return Err(LoadError::Corrupt(format!("expected record {expected}, found record {key}")));
                }
                let record = decode(key, value.value(), config)
                    .map_err(|reason| LoadError::Corrupt(format!("record {key}: {reason}")))?;
                recovered.apply(record);
                expected += 1;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(error) => return Err(classify(error)),
    }
    if expected != next_key {
        return Err(LoadError::Corrupt(format!("records {expected}..{next_key} are missing")));
    }
    Ok((recovered, first_key, next_key))
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Moves a corrupt file aside: `<file>.corrupt-<unix time>` (with `-<n>` if taken).
fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "store".into());
    let mut target = path.with_file_name(format!("{name}.corrupt-{seconds}"));
    let mut n = 1;
    while target.exists() {
        target = path.with_file_name(format!("{name}.corrupt-{seconds}-{n}"));
        n += 1;
    }
    std::fs::rename(path, &target)?;
    Ok(target)
}

/// One replica's durable store (see the module documentation).
pub struct Store {
    path: PathBuf,
    db: Database,
    membership: MembershipHandle,
    /// What the file holds, folded: compaction writes its `to_records()`.
    recovered: Recovered,
    first_key: u64,
    next_key: u64,
    stats: Arc<StoreStats>,
    /// Set when a write failed: the store takes no more.
    failed: Option<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({}, records {}..{})", self.path.display(), self.first_key, self.next_key)
    }
}

impl Store {
    /// Opens (or creates) the store at `path` and loads it; a corrupt one is moved aside
    /// and replaced by an empty one (see the module documentation).
    pub fn open(path: &Path, membership: MembershipHandle) -> Result<(Store, Opened), StoreFailure> {
        let config = membership.current();
        let failure = |reason: String| StoreFailure { path: path.to_path_buf(), reason };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| failure(format!("cannot create {}: {e}", parent.display())))?;
        }
        let stats = Arc::new(StoreStats::default());
        // redb may panic on a damaged file rather than return an error (a truncated file
        // fails an assertion): that is corruption too. This relies on panic = "unwind",
        // the default of every profile in this workspace.
        let loaded = catch_unwind(AssertUnwindSafe(|| load(path, &config))).unwrap_or_else(|panic| {
            Err(LoadError::Corrupt(format!("redb panicked reading it: {}", panic_text(panic.as_ref()))))
        });
        let (loaded, discarded) = match loaded {
            Ok(loaded) => (loaded, None),
            Err(LoadError::Fatal(reason)) => return Err(failure(reason)),
            Err(LoadError::Corrupt(reason)) => {
                tracing::error!(
                    file = %path.display(),
                    %reason,
                    "durable store is corrupt: not trusting it, moving it aside and starting empty \
                     (the replica catches up from its peers)"
                );
                stats.corrupt_discarded.fetch_add(1, Ordering::Relaxed);
                let moved_to = set_aside(path)
                    .map_err(|e| failure(format!("corrupt ({reason}) and cannot be moved aside: {e}")))?;
                tracing::error!(file = %path.display(), moved_to = %moved_to.display(), "corrupt durable store moved aside");
                let db = Database::create(path).map_err(|e| failure(format!("cannot create a new store: {e}")))?;
                let empty = Loaded { db, recovered: Recovered::default(), first_key: 0, next_key: 0 };
                (empty, Some(Discarded { moved_to, reason }))
            }
        };
        let Loaded { db, recovered, first_key, next_key } = loaded;
        claim_for(&db, config.cluster(), path)?;
        let records = next_key - first_key;
        stats.records_loaded.store(records, Ordering::Relaxed);
        stats.records_stored.store(records, Ordering::Relaxed);
        let opened = Opened { recovered: recovered.clone(), records, discarded };
        let store =
            Store { path: path.to_path_buf(), db, membership, recovered, first_key, next_key, stats, failed: None };
        Ok((store, opened))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> Arc<StoreStats> {
        self.stats.clone()
    }

    /// What the store holds, folded.
    pub fn recovered(&self) -> &Recovered {
        &self.recovered
    }

    /// Makes `records` durable in one write transaction (fsync'd before this returns). A
    /// group holding a stable checkpoint rewrites the table to what the records fold into.
    pub fn append(&mut self, records: &[Record]) -> Result<(), StoreFailure> {
        if let Some(reason) = &self.failed {
            return Err(StoreFailure { path: self.path.clone(), reason: format!("an earlier write failed: {reason}") });
        }
        if records.is_empty() {
            return Ok(());
        }
        let result = self.write(records);
        if let Err(failure) = &result {
            // The live `Recovered` may be ahead of the file now: no further writes.
            self.failed = Some(failure.reason.clone());
        }
        result
    }

    fn write(&mut self, records: &[Record]) -> Result<(), StoreFailure> {
        let started = Instant::now();
        for record in records {
            self.recovered.apply(record.clone());
        }
        let compact = records.iter().any(|r| matches!(r, Record::Stable { .. }));
        let compacted;
        let written: &[Record] = if compact {
            compacted = self.recovered.to_records();
            &compacted
        } else {
            records
        };
        let first_key = if compact { self.next_key } else { self.first_key };
        let mut next_key = self.next_key;
        let mut bytes = 0u64;
        let path = &self.path;
        let mut txn = self.db.begin_write().map_err(|e| write_error(path, e))?;
        txn.set_durability(Durability::Immediate);
        txn.set_two_phase_commit(true);
        {
            if compact {
                txn.delete_table(RECORDS).map_err(|e| write_error(path, e))?;
            }
            let mut table = txn.open_table(RECORDS).map_err(|e| write_error(path, e))?;
            for record in written {
                let value = encode(next_key, record).map_err(|reason| StoreFailure { path: path.clone(), reason })?;
                bytes += value.len() as u64;
                table.insert(next_key, value.as_slice()).map_err(|e| write_error(path, e))?;
                next_key += 1;
            }
            let mut meta = txn.open_table(META).map_err(|e| write_error(path, e))?;
            meta.insert(FIRST_KEY, first_key).map_err(|e| write_error(path, e))?;
            meta.insert(NEXT_KEY, next_key).map_err(|e| write_error(path, e))?;
        }
        txn.commit().map_err(|e| write_error(path, e))?;
        self.first_key = first_key;
        self.next_key = next_key;
        let stats = &self.stats;
        stats.records_written.fetch_add(written.len() as u64, Ordering::Relaxed);
        stats.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats.compactions.fetch_add(u64::from(compact), Ordering::Relaxed);
        stats.records_stored.store(next_key - first_key, Ordering::Relaxed);
        stats.last_commit_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The records in the file, in key order, checked and verified (for tests and tools).
    pub fn stored_records(&self) -> Result<Vec<Record>, StoreFailure> {
        let failure = |reason: String| StoreFailure { path: self.path.clone(), reason };
        let txn = self.db.begin_read().map_err(|e| failure(e.to_string()))?;
        let table = match txn.open_table(RECORDS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(failure(error.to_string())),
        };
        let mut records = Vec::new();
        for entry in table.iter().map_err(|e| failure(e.to_string()))? {
            let (key, value) = entry.map_err(|e| failure(e.to_string()))?;
            records.push(decode(key.value(), value.value(), &self.membership.current()).map_err(failure)?);
        }
        Ok(records)
    }
}

/// What the writer thread tells the replica actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// Every group submitted with a ticket up to this one is durable.
    Durable(u64),
    /// A write failed: nothing submitted after the last `Durable` is durable, and nothing
    /// more will be. The replica must stop.
    Failed(String),
}

impl actix::Message for StoreEvent {
    type Result = ();
}

/// A [`Store`] on its own thread, committing what is submitted in groups.
pub struct StoreWriter {
    sender: Option<mpsc::Sender<(u64, Vec<Record>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<StoreStats>,
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreWriter")
    }
}

impl StoreWriter {
    /// Starts the writer thread; it reports to `events`.
    pub fn start(mut store: Store, events: Recipient<StoreEvent>) -> std::io::Result<StoreWriter> {
        let stats = store.stats();
        let (sender, receiver) = mpsc::channel::<(u64, Vec<Record>)>();
        let name = format!("store-{}", store.path.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default());
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            while let Ok((ticket, mut records)) = receiver.recv() {
                // Everything submitted while the last commit was under way goes in this one.
                let mut last = ticket;
                while let Ok((ticket, more)) = receiver.try_recv() {
                    last = ticket;
                    records.extend(more);
                }
                match store.append(&records) {
                    Ok(()) => events.do_send(StoreEvent::Durable(last)),
                    Err(failure) => {
                        tracing::error!(%failure, "durable store write failed");
                        events.do_send(StoreEvent::Failed(failure.to_string()));
                        return;
                    }
                }
            }
        })?;
        Ok(StoreWriter { sender: Some(sender), thread: Some(thread), stats })
    }

    /// Submits the records of one `handle` call; they are committed together. False if the
    /// writer has stopped (after a failure it reported).
    pub fn submit(&self, ticket: u64, records: Vec<Record>) -> bool {
        self.sender.as_ref().is_some_and(|sender| sender.send((ticket, records)).is_ok())
    }

    pub fn metrics(&self) -> StoreMetrics {
        self.stats.snapshot()
    }
}

impl Drop for StoreWriter {
    /// Finishes what was submitted and closes the database (so it can be opened again).
    fn drop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
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
        fn execute(&mut self, op: &u64) -> u64 {
            self.0 = self.0.wrapping_add(*op);
            self.0
        }
        fn query(&self, _: &u64) -> Option<u64> {
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
        MembershipHandle::new(
            Membership::numbered(cluster, keys.iter().map(KeyPair::public).collect(), params).unwrap(),
        )
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
}
