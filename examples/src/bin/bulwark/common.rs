//! What more than one subcommand needs: a client connected to a running cluster.

use bulwark_actors::client::{Client, ClientOptions};
use bulwark_actors::config::ClusterFile;
use bulwark_actors::verifier::VerifierPool;
use bulwark_crypto::KeyPair;
use bulwark_framework::{MembershipHandle, Service};
use std::time::Duration;

pub(crate) async fn connect<S: Service>(file: &ClusterFile, timeout: Duration) -> anyhow::Result<Client<S>> {
    let membership = file.membership()?;
    let verifier = VerifierPool::start(1, MembershipHandle::new(membership.clone()));
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let options = ClientOptions { timeout, ..ClientOptions::default() };
    Ok(Client::connect(membership, file.addresses(), key, verifier, options).await?)
}
