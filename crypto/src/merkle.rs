//! A binary Merkle tree over blake3 digests, so one signature over the root can vouch for
//! each of many items, each checkable alone with a short path.
//!
//! Leaves are the items' digests. A parent is `H(tag ‖ left ‖ right)`; a node without a
//! sibling (the last one on an odd level) moves up unchanged. A path lists the siblings
//! from the leaf up; the leaf's index and the number of leaves say where each sibling sits
//! and which levels have none.

use crate::{Digest, DigestBuilder};

const NODE_DOMAIN: &[u8] = b"bulwark/merkle-node/v1";

fn parent(left: &Digest, right: &Digest) -> Digest {
    DigestBuilder::new(NODE_DOMAIN).update(&left.0).update(&right.0).finish()
}

fn next_level(level: &[Digest]) -> Vec<Digest> {
    level.chunks(2).map(|pair| if pair.len() == 2 { parent(&pair[0], &pair[1]) } else { pair[0] }).collect()
}

/// The root over `leaves`; the default digest for no leaves.
pub fn merkle_root(leaves: &[Digest]) -> Digest {
    if leaves.is_empty() {
        return Digest::default();
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

/// The root and every leaf's path, computed together (one pass per level).
pub fn merkle_paths(leaves: &[Digest]) -> (Digest, Vec<Vec<Digest>>) {
    if leaves.is_empty() {
        return (Digest::default(), Vec::new());
    }
    let mut paths = vec![Vec::new(); leaves.len()];
    let mut level = leaves.to_vec();
    let mut positions: Vec<usize> = (0..leaves.len()).collect();
    while level.len() > 1 {
        for (leaf, position) in positions.iter_mut().enumerate() {
            let sibling = *position ^ 1;
            if sibling < level.len() {
                paths[leaf].push(level[sibling]);
            }
            *position /= 2;
        }
        level = next_level(&level);
    }
    (level[0], paths)
}

/// A tree kept level by level, so each leaf's path costs `log n` lookups and no hashing
/// (a replica serving state transfer answers many chunk requests from one tree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    levels: Vec<Vec<Digest>>,
}

impl MerkleTree {
    pub fn new(leaves: Vec<Digest>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|level| level.len() > 1) {
            let next = next_level(levels.last().expect("checked"));
            levels.push(next);
        }
        MerkleTree { levels }
    }

    /// The root; the default digest for no leaves (as [`merkle_root`]).
    pub fn root(&self) -> Digest {
        self.levels.last().and_then(|level| level.first()).copied().unwrap_or_default()
    }

    pub fn leaf_count(&self) -> usize {
        self.levels[0].len()
    }

    /// The path of leaf `index` (as [`merkle_paths`] gives it), or `None` past the end.
    pub fn path(&self, index: usize) -> Option<Vec<Digest>> {
        if index >= self.leaf_count() {
            return None;
        }
        let mut path = Vec::new();
        let mut position = index;
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(position ^ 1) {
                path.push(*sibling);
            }
            position /= 2;
        }
        Some(path)
    }
}

/// The root that `path` leads to from `leaf`, leaf number `index` of `count`; `None` if the
/// path has the wrong length for that position.
pub fn merkle_root_from_path(leaf: &Digest, index: usize, count: usize, path: &[Digest]) -> Option<Digest> {
    if index >= count {
        return None;
    }
    let mut node = *leaf;
    let mut position = index;
    let mut width = count;
    let mut siblings = path.iter();
    while width > 1 {
        let sibling = position ^ 1;
        if sibling < width {
            let hash = siblings.next()?;
            node = if position.is_multiple_of(2) { parent(&node, hash) } else { parent(hash, &node) };
        }
        position /= 2;
        width = width.div_ceil(2);
    }
    siblings.next().is_none().then_some(node)
}

/// Whether `leaf` is leaf number `index` of `count` under `root`, by `path`.
pub fn merkle_verify(leaf: &Digest, index: usize, count: usize, path: &[Digest], root: &Digest) -> bool {
    merkle_root_from_path(leaf, index, count, path).is_some_and(|computed| computed == *root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Digest> {
        (0..n).map(|i| Digest::of(&(i as u64).to_le_bytes())).collect()
    }

    #[test]
    fn every_leaf_verifies_for_every_tree_size() {
        for n in 1..=33 {
            let leaves = leaves(n);
            let (root, paths) = merkle_paths(&leaves);
            assert_eq!(root, merkle_root(&leaves), "n={n}");
            for (index, leaf) in leaves.iter().enumerate() {
                assert!(merkle_verify(leaf, index, n, &paths[index], &root), "n={n} index={index}");
            }
        }
    }

    #[test]
    fn a_wrong_leaf_index_count_or_path_does_not_verify() {
        let leaves = leaves(7);
        let (root, paths) = merkle_paths(&leaves);
        assert!(!merkle_verify(&leaves[2], 3, 7, &paths[2], &root), "wrong index");
        // Leaf 6 of 7 has no sibling on the first level; as one of 8 it would.
        assert!(!merkle_verify(&leaves[6], 6, 8, &paths[6], &root), "wrong count");
        assert!(!merkle_verify(&Digest::of(b"x"), 2, 7, &paths[2], &root), "wrong leaf");
        let mut longer = paths[2].clone();
        longer.push(Digest::default());
        assert!(!merkle_verify(&leaves[2], 2, 7, &longer, &root), "extra path element");
        assert!(!merkle_verify(&leaves[2], 7, 7, &paths[2], &root), "index out of range");
        let mut tampered = paths[2].clone();
        tampered[0] = Digest::of(b"y");
        assert!(!merkle_verify(&leaves[2], 2, 7, &tampered, &root));
    }

    #[test]
    fn the_kept_tree_gives_the_same_root_and_paths() {
        for n in 1..=33 {
            let leaves = leaves(n);
            let (root, paths) = merkle_paths(&leaves);
            let tree = MerkleTree::new(leaves);
            assert_eq!(tree.root(), root, "n={n}");
            for (index, path) in paths.iter().enumerate() {
                assert_eq!(tree.path(index).as_ref(), Some(path), "n={n} index={index}");
            }
            assert_eq!(tree.path(n), None);
        }
        assert_eq!(MerkleTree::new(Vec::new()).root(), Digest::default());
    }

    #[test]
    fn a_single_leaf_is_its_own_root() {
        let leaf = Digest::of(b"only");
        assert_eq!(merkle_root(&[leaf]), leaf);
        assert!(merkle_verify(&leaf, 0, 1, &[], &leaf));
    }
}
