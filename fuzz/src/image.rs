//! The executor's checkpoint image encoding (framework/src/roles/executor.rs, `Image` and
//! `ClientRecord`, both private), mirrored so that the harness can make well-formed images
//! with fuzzer-chosen contents. [`image_mirror_matches`] checks it is still the same.

use crate::cluster::{client_key, config, handle, params, replica_seed};
use crate::service::FuzzKv;
use crate::steps::{ImageSpec, ServiceImage};
use bulwark_crypto::KeyPair;
use bulwark_framework::state::ChunkedImage;
use bulwark_framework::{ClientId, Replica, ReplicaId, SeqNum, Service, Timestamp};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::OnceLock;

#[derive(Serialize)]
pub struct Entry(pub Timestamp, #[serde(with = "serde_bytes")] pub Vec<u8>);

#[derive(Serialize)]
pub struct ClientRecord {
    pub top: Timestamp,
    pub results: Vec<Entry>,
    pub last_active: SeqNum,
}

#[derive(Serialize)]
pub struct Image {
    #[serde(with = "serde_bytes")]
    pub service: Vec<u8>,
    pub clients: Vec<(ClientId, ClientRecord)>,
    /// The agreed time of the last executed batch (E5); 0 in the images made here.
    pub time_us: u64,
}

/// The bytes of a checkpoint image.
pub fn image_bytes(spec: &ImageSpec) -> Vec<u8> {
    match spec {
        ImageSpec::Raw(bytes) => bytes.clone(),
        ImageSpec::Structured { service, clients } => {
            let service = match service {
                ServiceImage::Map(entries) => {
                    let map: BTreeMap<u8, Vec<u8>> = entries.iter().cloned().collect();
                    FuzzKv { map }.snapshot()
                }
                ServiceImage::Raw(bytes) => bytes.clone(),
            };
            let clients = clients
                .iter()
                .map(|c| {
                    let id = if c.client < 8 {
                        bulwark_framework::messages::client_id(&client_key(c.client).public().into())
                    } else {
                        ClientId(c.id)
                    };
                    let record = ClientRecord {
                        top: Timestamp(c.top.0),
                        results: c.results.iter().map(|(t, r)| Entry(Timestamp(t.0), r.clone())).collect(),
                        last_active: SeqNum(c.last_active.0),
                    };
                    (id, record)
                })
                .collect();
            rmp_serde::to_vec(&Image { service, clients, time_us: 0 }).expect("an image always encodes")
        }
    }
}

/// Whether the mirrored image encoding still gives a fresh replica's state digest (if it
/// does not, structured images decode as garbage: the targets still run, but reach less).
pub fn image_mirror_matches() -> bool {
    static MATCHES: OnceLock<bool> = OnceLock::new();
    *MATCHES.get_or_init(|| {
        let replica =
            Replica::new(ReplicaId(0), KeyPair::from_seed(replica_seed(0)), handle(&config()), FuzzKv::default());
        let spec = ImageSpec::Structured { service: ServiceImage::Map(Vec::new()), clients: Vec::new() };
        let digest = ChunkedImage::new(image_bytes(&spec), params().state_chunk_bytes).digest();
        let matches = digest == replica.state_digest();
        if !matches {
            eprintln!("bulwark-fuzz: the mirrored checkpoint image encoding no longer matches the executor's");
        }
        matches
    })
}
