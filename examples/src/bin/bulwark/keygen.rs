//! `bulwark keygen`: writes a cluster file and one secret key per replica, the files every
//! other subcommand that runs against a cluster starts from.

use bulwark_actors::config::{key_path, keygen, Keygen};
use bulwark_framework::{ClusterId, ProtocolParams, ReplicaId};
use clap::Args;
use std::path::PathBuf;

/// The arguments of `bulwark keygen`.
#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Number of replicas (or give their ids with --ids).
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    /// The replicas' ids, any distinct numbers (default 0..replicas). An id names a
    /// replica for as long as it is a member; it is not a position.
    #[arg(long, value_delimiter = ',', value_name = "ID,ID,...")]
    ids: Vec<u32>,
    /// The cluster's id, bound into every signature: two clusters must not share one.
    #[arg(long, default_value_t = 1)]
    cluster_id: u32,
    /// Output directory (created; existing files are never overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Port of the replica with the lowest id; the i-th in ascending id order listens
    /// on base-port + i.
    #[arg(long, default_value_t = 7000)]
    base_port: u16,
    /// Host of each replica (one for all, or one per replica).
    #[arg(long, num_args = 1.., default_value = "127.0.0.1")]
    hosts: Vec<String>,
}

/// Runs `bulwark keygen`.
pub(crate) fn run(args: KeygenArgs) -> anyhow::Result<()> {
    let KeygenArgs { replicas, ids, cluster_id, out, base_port, hosts } = args;
    let replicas = if ids.is_empty() { replicas } else { ids.len() };
    let spec = Keygen {
        cluster_id: ClusterId(cluster_id),
        replicas,
        ids: ids.into_iter().map(ReplicaId).collect(),
        hosts,
        base_port,
        params: ProtocolParams::default(),
    };
    let file = keygen(&spec, &out, &mut rand::rngs::OsRng)?;
    println!("wrote {} and {} key files", out.join("cluster.toml").display(), file.replicas.len());
    for entry in &file.replicas {
        println!("  replica {} at {}  key {}", entry.id.0, entry.address, key_path(&out, entry.id).display());
    }
    Ok(())
}
