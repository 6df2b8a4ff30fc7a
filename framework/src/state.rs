//! Checkpoint images in chunks (PBFT.md M7, ST2–ST5).
//!
//! A checkpoint's state digest `D` is a Merkle root over fixed-size chunks of the image
//! (service snapshot and client table), bound to the image's length:
//! `D = H(tag ‖ total bytes ‖ chunk count ‖ root)`, each leaf `H(tag ‖ index ‖ chunk)`. So a
//! replica catching up can fetch chunks from several peers in parallel and check each one
//! alone against `D` from a stable checkpoint proof: a Byzantine peer's bad chunk is caught
//! at once and asked for elsewhere, and the chunk count cannot be lied about (it is in `D`).

use bulwark_crypto::merkle::{merkle_root_from_path, MerkleTree};
use bulwark_crypto::{Digest, DigestBuilder};
use std::collections::BTreeMap;

const LEAF_DOMAIN: &[u8] = b"bulwark/state-chunk/v1";
const ROOT_DOMAIN: &[u8] = b"bulwark/state-root/v1";

/// Longest Merkle path accepted: enough for 2^48 chunks.
pub const PATH_MAX: usize = 48;

/// Chunks an image of `total_bytes` has with `chunk_bytes` per chunk (an empty image is one
/// empty chunk).
pub fn chunk_count(total_bytes: u64, chunk_bytes: usize) -> u64 {
    total_bytes.div_ceil(chunk_bytes.max(1) as u64).max(1)
}

fn leaf(index: u64, data: &[u8]) -> Digest {
    DigestBuilder::new(LEAF_DOMAIN).update_u64(index).update(data).finish()
}

fn bind(total_bytes: u64, count: u64, root: &Digest) -> Digest {
    DigestBuilder::new(ROOT_DOMAIN).update_u64(total_bytes).update_u64(count).update(&root.0).finish()
}

/// A checkpoint image with its Merkle tree, ready to serve chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedImage {
    bytes: Vec<u8>,
    chunk_bytes: usize,
    tree: MerkleTree,
    digest: Digest,
}

impl ChunkedImage {
    pub fn new(bytes: Vec<u8>, chunk_bytes: usize) -> Self {
        let chunk_bytes = chunk_bytes.max(1);
        let leaves: Vec<Digest> = if bytes.is_empty() {
            vec![leaf(0, &[])]
        } else {
            bytes.chunks(chunk_bytes).enumerate().map(|(index, data)| leaf(index as u64, data)).collect()
        };
        let tree = MerkleTree::new(leaves);
        let digest = bind(bytes.len() as u64, tree.leaf_count() as u64, &tree.root());
        ChunkedImage { bytes, chunk_bytes, tree, digest }
    }

    /// The state digest `D` (M7).
    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn total_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn chunk_count(&self) -> u64 {
        self.tree.leaf_count() as u64
    }

    /// Chunk `index` with its Merkle path.
    pub fn chunk(&self, index: u64) -> Option<(&[u8], Vec<Digest>)> {
        let path = self.tree.path(usize::try_from(index).ok()?)?;
        let start = (index as usize).saturating_mul(self.chunk_bytes).min(self.bytes.len());
        let end = start.saturating_add(self.chunk_bytes).min(self.bytes.len());
        Some((&self.bytes[start..end], path))
    }
}

/// ST4: whether `data` is chunk `index` of an image of `total_bytes` whose state digest is
/// `digest`, by `path`.
pub fn verify_chunk(
    digest: &Digest,
    chunk_bytes: usize,
    total_bytes: u64,
    index: u64,
    data: &[u8],
    path: &[Digest],
) -> bool {
    let count = chunk_count(total_bytes, chunk_bytes);
    if index >= count || path.len() > PATH_MAX {
        return false;
    }
    let expected_len = if index + 1 < count { chunk_bytes as u64 } else { total_bytes - index * chunk_bytes as u64 };
    if data.len() as u64 != expected_len {
        return false;
    }
    let (Ok(index), Ok(count)) = (usize::try_from(index), usize::try_from(count)) else {
        return false;
    };
    // The root is not sent: it is recomputed from the chunk and its path, then bound to the
    // length and count and compared with `D`.
    merkle_root_from_path(&leaf(index as u64, data), index, count, path)
        .is_some_and(|root| bind(total_bytes, count as u64, &root) == *digest)
}

/// Chunks of one image gathered from peers, each verified before it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembly {
    total_bytes: u64,
    count: u64,
    chunks: BTreeMap<u64, Vec<u8>>,
}

impl Assembly {
    pub fn new(total_bytes: u64, chunk_bytes: usize) -> Self {
        Assembly { total_bytes, count: chunk_count(total_bytes, chunk_bytes), chunks: BTreeMap::new() }
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn insert(&mut self, index: u64, data: Vec<u8>) {
        if index < self.count {
            self.chunks.insert(index, data);
        }
    }

    /// Bytes of the chunks held.
    pub fn held_bytes(&self) -> u64 {
        self.chunks.values().map(|c| c.len() as u64).sum()
    }

    pub fn has(&self, index: u64) -> bool {
        self.chunks.contains_key(&index)
    }

    /// Indices not yet held, in order.
    pub fn missing(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.count).filter(|index| !self.chunks.contains_key(index))
    }

    pub fn is_complete(&self) -> bool {
        self.chunks.len() as u64 == self.count
    }

    /// The image, once every chunk is held.
    pub fn into_image(self) -> Option<Vec<u8>> {
        if !self.is_complete() {
            return None;
        }
        let mut image = Vec::with_capacity(self.total_bytes as usize);
        for data in self.chunks.into_values() {
            image.extend_from_slice(&data);
        }
        Some(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn m7_every_chunk_verifies_against_the_digest_and_reassembles() {
        for len in [0, 1, 99, 100, 101, 1_000, 4_096] {
            let chunked = ChunkedImage::new(image(len), 100);
            let mut assembly = Assembly::new(chunked.total_bytes(), 100);
            for index in 0..chunked.chunk_count() {
                let (data, path) = chunked.chunk(index).unwrap();
                assert!(
                    verify_chunk(&chunked.digest(), 100, chunked.total_bytes(), index, data, &path),
                    "{len} {index}"
                );
                assembly.insert(index, data.to_vec());
            }
            assert_eq!(assembly.into_image(), Some(image(len)));
        }
    }

    #[test]
    fn st4_a_bad_chunk_length_index_or_total_does_not_verify() {
        let chunked = ChunkedImage::new(image(1_000), 100);
        let digest = chunked.digest();
        let (data, path) = chunked.chunk(3).unwrap();
        let mut flipped = data.to_vec();
        flipped[0] ^= 1;
        assert!(!verify_chunk(&digest, 100, 1_000, 3, &flipped, &path), "flipped byte");
        assert!(!verify_chunk(&digest, 100, 1_000, 4, data, &path), "wrong index");
        assert!(!verify_chunk(&digest, 100, 1_050, 3, data, &path), "wrong total");
        assert!(!verify_chunk(&digest, 100, 1_000, 3, &data[..99], &path), "short chunk");
        assert!(!verify_chunk(&digest, 100, 1_000, 10, data, &path), "index past the end");
        let other = ChunkedImage::new(image(999), 100);
        assert_ne!(other.digest(), digest, "the length is bound into the digest");
    }

    #[test]
    fn the_digest_depends_on_the_chunk_size() {
        assert_ne!(ChunkedImage::new(image(1_000), 100).digest(), ChunkedImage::new(image(1_000), 200).digest());
    }
}
