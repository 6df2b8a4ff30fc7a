//! The cluster file, replica key files and `keygen`.
//!
//! A Bulwark cluster is described by one TOML file, written by [`keygen`] and read by
//! every replica and every client. It names the cluster, lists each replica's id, network
//! address and ed25519 public key, and optionally overrides protocol parameters:
//!
//! ```toml
//! # Bulwark cluster: 4 replicas, tolerates f = 1 Byzantine
//! cluster_id = 7
//!
//! [[replica]]
//! id = 3
//! address = "127.0.0.1:7000"
//! public_key = "5a9f…64 hex digits…"
//!
//! [[replica]]
//! id = 8
//! address = "127.0.0.1:7001"
//! public_key = "0c3e…"
//!
//! # … replicas 21 and 40 …
//!
//! # Optional. Any field of `ProtocolParams`; a missing field takes its default.
//! [params]
//! batch_size_max = 256
//! checkpoint_interval = 128
//! watermark_window = 256
//! view_change_timeout_us = 1000000   # suspect a silent primary after 1 s (doubles per view change)
//! ordering_rate_min_per_s = 0        # 0: no minimum ordering rate (Aardvark-style guard off)
//! ```
//!
//! Rules, each checked when the file is read ([`ClusterFile::parse`]):
//!
//! * `cluster_id` names the cluster (0 to 2^32 - 1). Every signature binds it, so two
//!   clusters must not share an id; a replica's durable store records it and refuses to be
//!   opened for another cluster;
//! * at least 4 replicas (`n = 3f + 1`, `f >= 1`; a larger `n` gives `f = (n - 1) / 3`);
//! * ids are any distinct numbers (0 to 2^32 - 1), in any order in the file: a replica's
//!   id is its name, not its position, and the primary of view `v` is the replica at
//!   position `v mod n` of the ids in ascending order;
//! * `address` is an `IP:port` socket address (host names are not resolved), distinct
//!   per replica;
//! * `public_key` is 64 hex digits encoding a valid ed25519 point, distinct per replica;
//! * `[params]` names only fields of [`ProtocolParams`], whose values satisfy
//!   [`ProtocolParams::validate`];
//! * no other key, at the top level or in a table, is allowed.
//!
//! Every error names the file and the field, and where it knows it the line and column:
//! `cluster.toml: replica[2].public_key: not a valid ed25519 public key (expected 64 hex
//! digits) (line 14, column 14)`. `replica[i]` counts the `[[replica]]` tables of the file
//! from 0, in file order, whatever ids they hold.
//!
//! Each replica's secret key lives in its own file, `replica-<id>.key` (the
//! [`KeyPair::save`] format), which only that replica's host needs; [`load_replica_key`]
//! reads it and checks that it belongs to the replica the cluster file says it does.

use bulwark_crypto::{CryptoError, KeyPair, PublicKey};
use bulwark_framework::config::{ConfigError, ProtocolParams};
use bulwark_framework::ids::{ClusterId, Epoch, ReplicaId};
use bulwark_framework::membership::Membership;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Name of the cluster file that [`keygen`] writes in its output directory.
pub const CLUSTER_FILE_NAME: &str = "cluster.toml";

/// The path of replica `id`'s secret key file in `dir`: `dir/replica-<id>.key`.
pub fn key_path(dir: &Path, id: ReplicaId) -> PathBuf {
    dir.join(format!("replica-{}.key", id.0))
}

/// One `[[replica]]` table of the cluster file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaEntry {
    pub id: ReplicaId,
    pub address: SocketAddr,
    pub public_key: PublicKey,
}

/// A parsed and checked cluster file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFile {
    /// The cluster's id, bound into every signature its members and clients make.
    pub cluster_id: ClusterId,
    /// The replicas, sorted by id.
    pub replicas: Vec<ReplicaEntry>,
    pub params: ProtocolParams,
    /// The file this was read from (or, for [`keygen`], written to). Used only to name
    /// the file in error messages; `None` for a cluster built in memory.
    pub path: Option<PathBuf>,
}

/// A line and column (both from 1, the column in characters) in a cluster file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` of `text`.
    fn of(text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Location { line: before.matches('\n').count() + 1, column: before[line_start..].chars().count() + 1 }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Errors reading or writing the cluster file or key files, or running [`keygen`].
/// Every message names the file (and, in a cluster file, the field) it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// A file or directory could not be read, written or created.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The cluster file is not valid TOML.
    #[error("{}: TOML syntax error at {at}: {message}", path.display())]
    Syntax { path: PathBuf, at: Location, message: String },
    /// The cluster file is valid TOML but breaks a rule of the format. `field` is a path
    /// such as `replica[2].public_key` or `params.watermark_window`; it is `None` only when
    /// the reason itself names what is wrong.
    #[error(
        "{}: {}{reason}{}",
        path.display(),
        field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default(),
        at.map(|at| format!(" ({at})")).unwrap_or_default()
    )]
    Invalid { path: PathBuf, field: Option<String>, reason: String, at: Option<Location> },
    /// `keygen` would overwrite an existing cluster file or key file.
    #[error("{}: already exists; keygen never overwrites a cluster file or a key", path.display())]
    Exists { path: PathBuf },
    /// A [`Keygen`] specification that cannot produce a valid cluster.
    #[error("keygen: {field}: {reason}")]
    Keygen { field: String, reason: String },
    /// A key file that is missing, unreadable or malformed (the message names it).
    #[error(transparent)]
    Key(#[from] CryptoError),
    /// A key file that is well formed but holds another key than the cluster file lists.
    #[error(
        "key file {} is not the key of replica {} in cluster file {}{}",
        key_path.display(), id.0, cluster_path.display(),
        belongs_to.map(|other| format!(" (it is the key of replica {})", other.0)).unwrap_or_default()
    )]
    WrongKey {
        key_path: PathBuf,
        id: ReplicaId,
        cluster_path: PathBuf,
        /// The replica whose key it is, if it is one of the cluster's.
        belongs_to: Option<ReplicaId>,
    },
    /// A replica id that the cluster file does not list.
    #[error(
        "cluster file {} has no replica {} (its replicas are {})",
        cluster_path.display(), id.0,
        ids.iter().map(|id| id.0.to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoSuchReplica { cluster_path: PathBuf, id: ReplicaId, ids: Vec<ReplicaId> },
}

/// Shorthand for [`ConfigFileError::Invalid`].
fn invalid(path: &Path, field: Option<String>, reason: impl Into<String>, at: Option<Location>) -> ConfigFileError {
    ConfigFileError::Invalid { path: path.to_path_buf(), field, reason: reason.into(), at }
}

/// A table of the file as parsed, before checking: every value keeps its span so that an
/// error can give its line and column.
type RawTable = Spanned<BTreeMap<String, Spanned<toml::Value>>>;

/// The file's top level as parsed, before checking.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster_id: Option<Spanned<toml::Value>>,
    #[serde(default)]
    replica: Vec<RawTable>,
    #[serde(default)]
    params: Option<RawTable>,
}

/// A replica entry with where each field was found, for the cluster-wide checks.
struct Located {
    entry: ReplicaEntry,
    /// Index of the `[[replica]]` table in the file (or in `ClusterFile::replicas`).
    index: usize,
    id_at: Option<Location>,
    address_at: Option<Location>,
    key_at: Option<Location>,
}

const REPLICA_FIELDS: &str = "expected `id`, `address` or `public_key`";

impl ClusterFile {
    /// Reads and checks the cluster file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Io {
            path: path.to_path_buf(),
            action: "cannot read cluster file",
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks a cluster file's text. `path` is used only in error messages and
    /// recorded in [`ClusterFile::path`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigFileError> {
        // Syntax first, so that a structural error below is never a syntax error.
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigFileError::Syntax {
            path: path.to_path_buf(),
            at: Location::of(text, e.span().map_or(0, |s| s.start)),
            message: one_line(e.message()),
        })?;
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let message = one_line(e.message());
            let field = unknown_field(&message).or_else(|| misplaced_field(&table));
            let at = e.span().map(|s| Location::of(text, s.start));
            invalid(path, field, message, at)
        })?;

        let cluster_id = parse_cluster_id(text, path, raw.cluster_id.as_ref())?;
        let mut located = Vec::with_capacity(raw.replica.len());
        for (index, table) in raw.replica.iter().enumerate() {
            located.push(parse_replica(text, path, index, table)?);
        }
        let params = match &raw.params {
            Some(table) => parse_params(text, path, table)?,
            None => ProtocolParams::default(),
        };
        check_cluster(path, &located)?;

        let mut replicas: Vec<ReplicaEntry> = located.into_iter().map(|l| l.entry).collect();
        replicas.sort_by_key(|entry| entry.id);
        Ok(ClusterFile { cluster_id, replicas, params, path: Some(path.to_path_buf()) })
    }

    /// Writes the cluster file to `path`: a header comment, the replicas in id order, and
    /// every protocol parameter under `[params]` (so that all replicas agree on them even
    /// if their binaries' defaults differ).
    pub fn save(&self, path: &Path) -> Result<(), ConfigFileError> {
        std::fs::write(path, self.to_toml(path)?).map_err(|source| ConfigFileError::Io {
            path: path.to_path_buf(),
            action: "cannot write cluster file",
            source,
        })
    }

    /// The text [`ClusterFile::save`] writes.
    fn to_toml(&self, path: &Path) -> Result<String, ConfigFileError> {
        let n = self.replicas.len();
        let mut out = String::new();
        let _ = writeln!(out, "# Bulwark cluster: {n} replicas, tolerates f = {} Byzantine", n.saturating_sub(1) / 3);
        out.push_str(
            "# Read by every replica and client. Each replica also needs its own secret key\n\
             # file (replica-<id>.key), which no other host should have.\n",
        );
        out.push_str("# Bound into every signature: no two clusters may share it.\n");
        let _ = writeln!(out, "cluster_id = {}", self.cluster_id.0);
        let mut replicas: Vec<&ReplicaEntry> = self.replicas.iter().collect();
        replicas.sort_by_key(|entry| entry.id);
        for entry in replicas {
            let _ = write!(
                out,
                "\n[[replica]]\nid = {}\naddress = {}\npublic_key = {}\n",
                entry.id.0,
                toml::Value::String(entry.address.to_string()),
                toml::Value::String(entry.public_key.to_hex()),
            );
        }
        let params = toml::to_string(&self.params)
            .map_err(|e| invalid(path, Some("params".into()), format!("cannot encode: {e}"), None))?;
        out.push_str("\n# Protocol parameters; a field left out takes its default.\n[params]\n");
        out.push_str(&params);
        Ok(out)
    }

    /// The cluster's first membership (epoch 0) as the protocol sees it: its id, the
    /// members' ids and public keys, and the parameters. Checks the same rules as
    /// [`ClusterFile::parse`], for a `ClusterFile` built or changed in memory.
    pub fn membership(&self) -> Result<Membership, ConfigFileError> {
        let path = self.display_path();
        let located: Vec<Located> = self
            .replicas
            .iter()
            .enumerate()
            .map(|(index, entry)| Located { entry: entry.clone(), index, id_at: None, address_at: None, key_at: None })
            .collect();
        self.params.validate().map_err(|e| params_error(path, e, None))?;
        check_cluster(path, &located)?;
        let members = self.replicas.iter().map(|entry| (entry.id, entry.public_key));
        Membership::new(self.cluster_id, Epoch(0), members, self.params.clone()).map_err(|e| match e {
            ConfigError::Invalid { field: "members", reason } => invalid(path, Some("replica".into()), reason, None),
            other => params_error(path, other, None),
        })
    }

    /// Each replica's address.
    pub fn addresses(&self) -> BTreeMap<ReplicaId, SocketAddr> {
        self.replicas.iter().map(|entry| (entry.id, entry.address)).collect()
    }

    /// The replicas' ids, ascending.
    pub fn ids(&self) -> Vec<ReplicaId> {
        let mut ids: Vec<ReplicaId> = self.replicas.iter().map(|entry| entry.id).collect();
        ids.sort();
        ids
    }

    /// The entry of replica `id`, if the cluster has one.
    pub fn replica(&self, id: ReplicaId) -> Option<&ReplicaEntry> {
        self.replicas.iter().find(|entry| entry.id == id)
    }

    /// The path to name in error messages.
    fn display_path(&self) -> &Path {
        self.path.as_deref().unwrap_or_else(|| Path::new("<cluster file>"))
    }
}

/// A TOML or serde message on one line.
fn one_line(message: &str) -> String {
    message.trim().replace('\n', "; ")
}

/// The key named by a serde "unknown field `key`, expected …" message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// For a structural error at the top level, the field whose shape is wrong.
fn misplaced_field(table: &toml::Table) -> Option<String> {
    match table.get("replica") {
        Some(toml::Value::Array(items)) => {
            if let Some(i) = items.iter().position(|item| !item.is_table()) {
                return Some(format!("replica[{i}]"));
            }
        }
        Some(_) => return Some("replica".into()),
        None => {}
    }
    match table.get("params") {
        Some(value) if !value.is_table() => Some("params".into()),
        _ => None,
    }
}

/// Checks the top-level `cluster_id`: present, an integer that fits 32 bits.
fn parse_cluster_id(
    text: &str,
    path: &Path,
    value: Option<&Spanned<toml::Value>>,
) -> Result<ClusterId, ConfigFileError> {
    let field = Some("cluster_id".to_string());
    let Some(value) = value else {
        return Err(invalid(
            path,
            field,
            "required field is missing (the cluster's id, bound into every signature; `bulwark keygen` writes one)",
            None,
        ));
    };
    let at = Some(Location::of(text, value.span().start));
    match value.get_ref() {
        toml::Value::Integer(id) => u32::try_from(*id)
            .map(ClusterId)
            .map_err(|_| invalid(path, field, format!("{id} is out of range (0 to {})", u32::MAX), at)),
        other => Err(invalid(path, field, format!("expected an integer, found {}", describe(other)), at)),
    }
}

/// Checks one `[[replica]]` table's fields, each on its own.
fn parse_replica(text: &str, path: &Path, index: usize, table: &RawTable) -> Result<Located, ConfigFileError> {
    let at = |span: std::ops::Range<usize>| Some(Location::of(text, span.start));
    let field = |name: &str| Some(format!("replica[{index}].{name}"));
    let entry_at = at(table.span());
    let fields = table.get_ref();
    if let Some((key, value)) = fields.iter().find(|(key, _)| !matches!(key.as_str(), "id" | "address" | "public_key"))
    {
        return Err(invalid(path, field(key), format!("unknown field `{key}`, {REPLICA_FIELDS}"), at(value.span())));
    }
    let get =
        |name: &str| fields.get(name).ok_or_else(|| invalid(path, field(name), "required field is missing", entry_at));

    let id = get("id")?;
    let id_at = at(id.span());
    let id = match id.get_ref() {
        toml::Value::Integer(value) => u32::try_from(*value)
            .map_err(|_| invalid(path, field("id"), format!("{value} is out of range (0 to {})", u32::MAX), id_at))?,
        other => {
            return Err(invalid(path, field("id"), format!("expected an integer, found {}", describe(other)), id_at))
        }
    };

    let address = get("address")?;
    let address_at = at(address.span());
    let address = match address.get_ref() {
        toml::Value::String(text) => text.parse::<SocketAddr>().map_err(|_| {
            invalid(
                path,
                field("address"),
                format!(
                    "invalid socket address {text:?} (expected IP:port, such as \
                     \"127.0.0.1:7000\"; host names are not resolved)"
                ),
                address_at,
            )
        })?,
        other => {
            return Err(invalid(
                path,
                field("address"),
                format!("expected a string such as \"127.0.0.1:7000\", found {}", describe(other)),
                address_at,
            ))
        }
    };

    let key = get("public_key")?;
    let key_at = at(key.span());
    let public_key = match key.get_ref() {
        toml::Value::String(hex) => {
            parse_public_key(hex).map_err(|reason| invalid(path, field("public_key"), reason, key_at))?
        }
        other => {
            return Err(invalid(
                path,
                field("public_key"),
                format!("expected a string of 64 hex digits, found {}", describe(other)),
                key_at,
            ))
        }
    };

    Ok(Located { entry: ReplicaEntry { id: ReplicaId(id), address, public_key }, index, id_at, address_at, key_at })
}

fn parse_public_key(hex: &str) -> Result<PublicKey, String> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("not a valid ed25519 public key (expected 64 hex digits)".into());
    }
    PublicKey::from_hex(hex)
        .map_err(|_| "not a valid ed25519 public key (the 64 hex digits do not encode a curve point)".into())
}

/// A TOML value's type, and the value itself when it is short.
fn describe(value: &toml::Value) -> String {
    let shown = value.to_string();
    if shown.chars().count() <= 40 {
        format!("{} {shown}", value.type_str())
    } else {
        value.type_str().to_string()
    }
}

/// Checks the `[params]` table: each key on its own (so an error names it), then the
/// whole, then [`ProtocolParams::validate`].
fn parse_params(text: &str, path: &Path, table: &RawTable) -> Result<ProtocolParams, ConfigFileError> {
    let mut all = toml::Table::new();
    for (key, value) in table.get_ref() {
        let at = Some(Location::of(text, value.span().start));
        let mut one = toml::Table::new();
        one.insert(key.clone(), value.get_ref().clone());
        ProtocolParams::deserialize(toml::Value::Table(one))
            .map_err(|e| invalid(path, Some(format!("params.{key}")), one_line(e.message()), at))?;
        all.insert(key.clone(), value.get_ref().clone());
    }
    let at = Some(Location::of(text, table.span().start));
    let params = ProtocolParams::deserialize(toml::Value::Table(all))
        .map_err(|e| invalid(path, Some("params".into()), one_line(e.message()), at))?;
    params.validate().map_err(|e| {
        let at = match &e {
            ConfigError::Invalid { field, .. } => {
                table.get_ref().get(*field).map(|value| Location::of(text, value.span().start)).or(at)
            }
        };
        params_error(path, e, at)
    })?;
    Ok(params)
}

/// A framework parameter error as `params.<field>`.
fn params_error(path: &Path, error: ConfigError, at: Option<Location>) -> ConfigFileError {
    match error {
        ConfigError::Invalid { field, reason } => invalid(path, Some(format!("params.{field}")), reason, at),
    }
}

/// The rules across replicas: enough of them, distinct ids, addresses and keys.
fn check_cluster(path: &Path, replicas: &[Located]) -> Result<(), ConfigFileError> {
    let n = replicas.len();
    if n < 4 {
        return Err(invalid(
            path,
            Some("replica".into()),
            format!(
                "a BFT cluster needs at least 4 replicas (n = 3f + 1 with f >= 1), \
                 the file lists {n}"
            ),
            None,
        ));
    }
    let mut ids: HashMap<ReplicaId, usize> = HashMap::new();
    for located in replicas {
        let id = located.entry.id;
        if let Some(first) = ids.insert(id, located.index) {
            return Err(invalid(
                path,
                Some(format!("replica[{}].id", located.index)),
                format!("duplicate id {} (also the id of replica[{first}])", id.0),
                located.id_at,
            ));
        }
    }
    let mut addresses: HashMap<SocketAddr, usize> = HashMap::new();
    for located in replicas {
        if let Some(first) = addresses.insert(located.entry.address, located.index) {
            return Err(invalid(
                path,
                Some(format!("replica[{}].address", located.index)),
                format!("duplicate address {} (also the address of replica[{first}])", located.entry.address),
                located.address_at,
            ));
        }
    }
    let mut keys: HashMap<PublicKey, usize> = HashMap::new();
    for located in replicas {
        if let Some(first) = keys.insert(located.entry.public_key, located.index) {
            return Err(invalid(
                path,
                Some(format!("replica[{}].public_key", located.index)),
                format!("duplicate public key (also the key of replica[{first}])"),
                located.key_at,
            ));
        }
    }
    Ok(())
}

/// What [`keygen`] generates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keygen {
    /// The cluster's id.
    pub cluster_id: ClusterId,
    /// Number of replicas, at least 4.
    pub replicas: usize,
    /// The replicas' ids, one per replica, distinct; empty means `0..replicas`.
    pub ids: Vec<ReplicaId>,
    /// The replicas' IP addresses: one per replica, or one for all. Empty means
    /// `127.0.0.1` for all. Host names are not accepted (the file holds socket addresses).
    pub hosts: Vec<String>,
    /// The `i`-th replica (in ascending id order) listens on `base_port + i` of its host.
    pub base_port: u16,
    /// Written under `[params]` of the cluster file.
    pub params: ProtocolParams,
}

impl Default for Keygen {
    /// Cluster 1: four replicas with ids 0 to 3 on `127.0.0.1:7000..7003`, with the default
    /// parameters.
    fn default() -> Self {
        Keygen {
            cluster_id: ClusterId(1),
            replicas: 4,
            ids: Vec::new(),
            hosts: Vec::new(),
            base_port: 7000,
            params: ProtocolParams::default(),
        }
    }
}

impl Keygen {
    /// The replicas' ids, ascending, or the reason the spec is invalid.
    fn ids(&self) -> Result<Vec<ReplicaId>, ConfigFileError> {
        if self.ids.is_empty() {
            return Ok((0..self.replicas as u32).map(ReplicaId).collect());
        }
        let fail = |reason: String| ConfigFileError::Keygen { field: "ids".to_string(), reason };
        if self.ids.len() != self.replicas {
            return Err(fail(format!("{} ids for {} replicas", self.ids.len(), self.replicas)));
        }
        let mut ids = self.ids.clone();
        ids.sort();
        if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(fail(format!("id {} appears twice", pair[0].0)));
        }
        Ok(ids)
    }

    /// The address of each replica, in id order, or the reason the spec is invalid.
    fn addresses(&self) -> Result<Vec<SocketAddr>, ConfigFileError> {
        let n = self.replicas;
        let fail = |field: &str, reason: String| ConfigFileError::Keygen { field: field.to_string(), reason };
        if n < 4 {
            return Err(fail(
                "replicas",
                format!("a BFT cluster needs at least 4 replicas (n = 3f + 1 with f >= 1), got {n}"),
            ));
        }
        let hosts: Vec<&str> = match self.hosts.len() {
            0 => vec!["127.0.0.1"; n],
            1 => vec![self.hosts[0].as_str(); n],
            len if len == n => self.hosts.iter().map(String::as_str).collect(),
            len => {
                return Err(fail(
                    "hosts",
                    format!("expected one host for all replicas or one per replica ({n}), got {len}"),
                ))
            }
        };
        if self.base_port == 0 {
            return Err(fail("base_port", "must be at least 1".into()));
        }
        if usize::from(self.base_port) + n - 1 > usize::from(u16::MAX) {
            return Err(fail("base_port", format!("{} + {n} replicas runs past port {}", self.base_port, u16::MAX)));
        }
        hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let bare = host.trim().trim_start_matches('[').trim_end_matches(']');
                let ip: IpAddr = bare.parse().map_err(|_| {
                    let field = if self.hosts.len() == n { format!("hosts[{i}]") } else { "hosts".into() };
                    fail(&field, format!("{host:?} is not an IP address (host names are not resolved)"))
                })?;
                Ok(SocketAddr::new(ip, self.base_port + i as u16))
            })
            .collect()
    }
}

/// Generates a cluster: a fresh key pair per replica, written to `out_dir/replica-<i>.key`,
/// and the cluster file `out_dir/cluster.toml` listing them. Creates `out_dir` if needed.
///
/// Never overwrites: if the cluster file or any key file already exists, nothing is
/// written and the error names the file.
pub fn keygen(
    spec: &Keygen,
    out_dir: &Path,
    rng: &mut impl rand_core::CryptoRngCore,
) -> Result<ClusterFile, ConfigFileError> {
    let addresses = spec.addresses()?;
    spec.params.validate().map_err(|ConfigError::Invalid { field, reason }| ConfigFileError::Keygen {
        field: format!("params.{field}"),
        reason,
    })?;
    std::fs::create_dir_all(out_dir).map_err(|source| ConfigFileError::Io {
        path: out_dir.to_path_buf(),
        action: "cannot create directory",
        source,
    })?;
    let cluster_path = out_dir.join(CLUSTER_FILE_NAME);
    let ids = spec.ids()?;
    let key_paths: Vec<PathBuf> = ids.iter().map(|id| key_path(out_dir, *id)).collect();
    for path in std::iter::once(&cluster_path).chain(&key_paths) {
        if path.symlink_metadata().is_ok() {
            return Err(ConfigFileError::Exists { path: path.clone() });
        }
    }

    let keys: Vec<KeyPair> = (0..spec.replicas).map(|_| KeyPair::generate(rng)).collect();
    let file = ClusterFile {
        cluster_id: spec.cluster_id,
        replicas: keys
            .iter()
            .zip(addresses)
            .zip(&ids)
            .map(|((key, address), id)| ReplicaEntry { id: *id, address, public_key: key.public() })
            .collect(),
        params: spec.params.clone(),
        path: Some(cluster_path.clone()),
    };
    file.membership()?;
    for (key, path) in keys.iter().zip(&key_paths) {
        key.save(path)?;
    }
    file.save(&cluster_path)?;
    Ok(file)
}

/// Loads replica `id`'s secret key from `key_path` and checks that its public half is the
/// key `cluster` lists for `id`, so that a replica never starts with another's key.
pub fn load_replica_key(cluster: &ClusterFile, id: ReplicaId, key_path: &Path) -> Result<KeyPair, ConfigFileError> {
    let cluster_path = cluster.display_path().to_path_buf();
    let entry = cluster.replica(id).ok_or_else(|| ConfigFileError::NoSuchReplica {
        cluster_path: cluster_path.clone(),
        id,
        ids: cluster.ids(),
    })?;
    let key = KeyPair::load(key_path)?;
    let public = key.public();
    if public != entry.public_key {
        return Err(ConfigFileError::WrongKey {
            key_path: key_path.to_path_buf(),
            id,
            cluster_path,
            belongs_to: cluster.replicas.iter().find(|other| other.public_key == public).map(|other| other.id),
        });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_count_lines_and_characters_from_one() {
        let text = "ab\ncé d\n";
        assert_eq!(Location::of(text, 0), Location { line: 1, column: 1 });
        assert_eq!(Location::of(text, 3), Location { line: 2, column: 1 });
        // 'é' is two bytes but one column.
        assert_eq!(Location::of(text, 6), Location { line: 2, column: 3 });
        assert_eq!(Location::of(text, 99), Location { line: 3, column: 1 });
    }

    #[test]
    fn unknown_field_names_the_key() {
        assert_eq!(unknown_field("unknown field `replicas`, expected `replica` or `params`"), Some("replicas".into()));
        assert_eq!(unknown_field("invalid type"), None);
    }
}
