//! What more than one subcommand needs: a client connected to a running cluster.

use anyhow::Context as _;
use bulwark_actors::client::{Client, ClientOptions};
use bulwark_actors::launch;
use bulwark_crypto::KeyPair;
use bulwark_framework::Service;
use std::path::Path;
use std::time::Duration;

/// A client of the cluster in `cluster_file` (through [`launch::connect`], as a user's own
/// program would connect), signing with the key in `key_file` if one is given.
pub(crate) async fn connect<S: Service>(
    cluster_file: &Path,
    key_file: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<Client<S>> {
    let key = key_file.map(load_or_create_client_key).transpose()?;
    let options = ClientOptions { timeout, ..ClientOptions::default() };
    Ok(launch::connect(cluster_file, key, options).await?)
}

/// The client key in `path`, made and saved there first if the file does not exist.
fn load_or_create_client_key(path: &Path) -> anyhow::Result<KeyPair> {
    if path.exists() {
        return Ok(KeyPair::load(path)?);
    }
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    key.save(path).with_context(|| format!("creating the client key {}", path.display()))?;
    Ok(key)
}
