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
mod tests;
