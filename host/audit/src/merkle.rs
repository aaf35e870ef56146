//! An append-only Merkle log over leaf hashes: the Merkle Hash Tree of
//! [RFC 6962 §2.1](https://www.rfc-editor.org/rfc/rfc6962#section-2.1), its audit paths
//! (§2.1.1) and consistency proofs (§2.1.2), checked by the verification algorithms of
//! [RFC 9162 §2.1.3.2](https://www.rfc-editor.org/rfc/rfc9162#section-2.1.3.2) and
//! [§2.1.4.2](https://www.rfc-editor.org/rfc/rfc9162#section-2.1.4.2) (CT v2, same hashing).
//!
//! The log keeps the 32-byte leaf hashes (never leaf data: delta bodies get pruned) and the
//! roots of the complete perfect subtrees above them, which an append computes anyway
//! (one node hash on average). The roots of the perfect subtrees along the right edge form
//! the *frontier*; any root is a fold over at most 64 of them, and a proof needs
//! O(log² n) hashes.
//!
//! ```
//! use ahv_audit::merkle::{MerkleLog, TreeSize, verify_consistency, verify_inclusion};
//! let mut log = MerkleLog::new();
//! let (first, leaf) = log.append(b"delta 0");
//! let old_root = log.root();
//! log.append(b"delta 1");
//! log.append(b"delta 2");
//! let proof = log.inclusion_proof(first, log.len())?;
//! verify_inclusion(&leaf, &proof, &log.root())?;
//! let proof = log.consistency_proof(TreeSize(1), log.len())?;
//! verify_consistency(&proof, &old_root, &log.root())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use crate::Hash;

/// Domain-separation prefix of a leaf hash (RFC 6962 §2.1).
pub const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an interior node hash (RFC 6962 §2.1).
pub const NODE_PREFIX: u8 = 0x01;

/// The leaf hash `MTH({d0}) = SHA-256(0x00 ‖ data)` (RFC 6962 §2.1).
pub fn leaf_hash(data: &[u8]) -> Hash {
    // Most deltas are a few blocks long: pad them on the stack and run only
    // the compression function; longer ones stream through the hasher.
    const MAX_INLINE: usize = 256;
    let len = 1 + data.len();
    let padded = (len + 9).div_ceil(64) * 64;
    if padded > MAX_INLINE {
        return Hash::of_parts(&[&[LEAF_PREFIX], data]);
    }
    let mut blocks = [0u8; MAX_INLINE];
    blocks[0] = LEAF_PREFIX;
    blocks[1..len].copy_from_slice(data);
    blocks[len] = 0x80;
    blocks[padded - 8..padded].copy_from_slice(&(len as u64 * 8).to_be_bytes());
    Hash::of_padded_blocks(&blocks[..padded])
}

/// The interior node hash `SHA-256(0x01 ‖ left ‖ right)` (RFC 6962 §2.1).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    // 65 bytes of message always make the same two padded blocks: compress
    // them directly instead of streaming through a hasher's buffer.
    let mut blocks = [0u8; 128];
    blocks[0] = NODE_PREFIX;
    blocks[1..33].copy_from_slice(&left.0);
    blocks[33..65].copy_from_slice(&right.0);
    blocks[65] = 0x80;
    blocks[120..].copy_from_slice(&(65u64 * 8).to_be_bytes());
    Hash::of_padded_blocks(&blocks)
}

/// The root of the empty tree, `MTH({}) = SHA-256()` (RFC 6962 §2.1).
pub fn empty_root() -> Hash {
    Hash::of(&[])
}

/// The 0-based position of a leaf in the log (`m` in RFC 6962 §2.1.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeafIndex(pub u64);

/// A number of leaves: the size of a tree (`n` in RFC 6962 §2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TreeSize(pub u64);

impl fmt::Display for LeafIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for TreeSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A question the log cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is out of range for a tree of size {size}")]
    IndexOutOfRange {
        /// The index asked for.
        index: LeafIndex,
        /// The tree size it was asked in.
        size: TreeSize,
    },
    /// The tree size exceeds the log.
    #[error("tree size {size} exceeds the log's {len} leaves")]
    SizeOutOfRange {
        /// The size asked for.
        size: TreeSize,
        /// The number of leaves in the log.
        len: TreeSize,
    },
    /// A consistency proof from the empty tree (RFC 9162 §2.1.4 defines them for 0 < old).
    #[error("no consistency proof from the empty tree: old size must be at least 1")]
    EmptyOldTree,
    /// A consistency proof from a larger tree to a smaller one.
    #[error("old tree size {old} is larger than new tree size {new}")]
    OldLargerThanNew {
        /// The old size.
        old: TreeSize,
        /// The new size.
        new: TreeSize,
    },
}

/// A proof that does not verify or cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The proof's sizes or index are impossible (same cases as the log's [`MerkleError`]).
    #[error("impossible proof: {0}")]
    Shape(MerkleError),
    /// The path does not have the length the proof's index and sizes call for.
    #[error("proof path has {got} hashes, its index and sizes need {expected}")]
    PathLength {
        /// The number of hashes the index and sizes call for.
        expected: usize,
        /// The number of hashes in the path.
        got: usize,
    },
    /// The path leads to a different root than the one given.
    #[error("proof leads to {which} {computed}, expected {expected}")]
    RootMismatch {
        /// `"root"` (inclusion), `"old root"` or `"new root"` (consistency).
        which: &'static str,
        /// The root the path leads to.
        computed: Hash,
        /// The root it was checked against.
        expected: Hash,
    },
    /// The proof bytes are malformed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Bytes that are not a proof encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the 16-byte header.
    #[error("{kind} proof is {len} bytes, shorter than its 16-byte header")]
    Truncated {
        /// `"inclusion"` or `"consistency"`.
        kind: &'static str,
        /// The number of bytes given.
        len: usize,
    },
    /// The bytes after the header are not a whole number of hashes.
    #[error("{kind} proof path is {len} bytes, not a whole number of 32-byte hashes")]
    RaggedPath {
        /// `"inclusion"` or `"consistency"`.
        kind: &'static str,
        /// The number of bytes after the header.
        len: usize,
    },
}

/// The audit path `PATH(m, D[n])` of RFC 6962 §2.1.1: the sibling hashes from leaf
/// `index` up to the root of the tree of the first `size` leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The proven leaf (`m`).
    pub index: LeafIndex,
    /// The size of the tree whose root the path leads to (`n`).
    pub size: TreeSize,
    /// Sibling hashes, lowest first.
    pub path: Vec<Hash>,
}

/// The consistency proof `PROOF(m, D[n])` of RFC 6962 §2.1.2: that the tree of the first
/// `old` leaves is a prefix of the tree of the first `new` leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The old tree size (`m`).
    pub old: TreeSize,
    /// The new tree size (`n`).
    pub new: TreeSize,
    /// Subtree hashes, lowest first.
    pub path: Vec<Hash>,
}

impl InclusionProof {
    /// Encodes as `index` (u64 big-endian) ‖ `size` (u64 BE) ‖ the path hashes, 32 bytes each.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self.index.0, self.size.0, &self.path)
    }

    /// Decodes [`InclusionProof::to_bytes`] without verifying anything.
    ///
    /// # Errors
    /// [`DecodeError`] when the header is cut short or the path is not whole hashes.
    pub fn from_bytes(bytes: &[u8]) -> Result<InclusionProof, DecodeError> {
        let (i, n, path) = decode(bytes, "inclusion")?;
        let (index, size) = (LeafIndex(i), TreeSize(n));
        Ok(InclusionProof { index, size, path })
    }
}

impl ConsistencyProof {
    /// Encodes as `old` (u64 big-endian) ‖ `new` (u64 BE) ‖ the path hashes, 32 bytes each.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self.old.0, self.new.0, &self.path)
    }

    /// Decodes [`ConsistencyProof::to_bytes`] without verifying anything.
    ///
    /// # Errors
    /// [`DecodeError`] when the header is cut short or the path is not whole hashes.
    pub fn from_bytes(bytes: &[u8]) -> Result<ConsistencyProof, DecodeError> {
        let (m, n, path) = decode(bytes, "consistency")?;
        let (old, new) = (TreeSize(m), TreeSize(n));
        Ok(ConsistencyProof { old, new, path })
    }
}

fn encode(a: u64, b: u64, path: &[Hash]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 32 * path.len());
    out.extend_from_slice(&a.to_be_bytes());
    out.extend_from_slice(&b.to_be_bytes());
    path.iter().for_each(|h| out.extend_from_slice(&h.0));
    out
}

fn decode(bytes: &[u8], kind: &'static str) -> Result<(u64, u64, Vec<Hash>), DecodeError> {
    let len = bytes.len();
    let truncated = || DecodeError::Truncated { kind, len };
    let (a, rest) = bytes.split_first_chunk::<8>().ok_or_else(truncated)?;
    let (b, rest) = rest.split_first_chunk::<8>().ok_or_else(truncated)?;
    let (hashes, tail) = rest.as_chunks::<32>();
    if !tail.is_empty() {
        let len = rest.len();
        return Err(DecodeError::RaggedPath { kind, len });
    }
    let path = hashes.iter().map(|h| Hash(*h)).collect();
    Ok((u64::from_be_bytes(*a), u64::from_be_bytes(*b), path))
}

/// The largest power of two below `n` (the split `k` of RFC 6962 §2.1); needs `n >= 2`.
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The right edge of an RFC 6962 tree (a "compact range" over `[0, n)`): the
/// roots of its perfect subtrees, one per set bit of `n`, largest first. It
/// appends a leaf and yields the tree head (MTH, RFC 6962 §2.1) in O(log n)
/// without keeping the leaves, so a live session's log costs one small
/// allocation and about one node hash per delta. It gives no proofs: those are
/// made from the files ([`MerkleLog`]).
#[derive(Clone, Default)]
pub struct CompactTree {
    size: u64,
    last_leaf: Option<Hash>,
    /// Perfect-subtree roots, left (largest) to right (smallest).
    peaks: Vec<Hash>,
}

impl fmt::Debug for CompactTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (len, root) = (self.len(), self.root());
        write!(f, "CompactTree {{ len: {len}, root: {root} }}")
    }
}

impl CompactTree {
    /// An empty tree.
    pub const fn new() -> CompactTree {
        CompactTree {
            size: 0,
            last_leaf: None,
            peaks: Vec::new(),
        }
    }

    /// The tree of `leaves` (leaf hashes, in order).
    pub fn from_leaf_hashes(leaves: impl IntoIterator<Item = Hash>) -> CompactTree {
        let mut t = CompactTree::new();
        for leaf in leaves {
            t.append_leaf_hash(leaf);
        }
        t
    }

    /// Appends a leaf hash and returns its index. Each perfect subtree the leaf
    /// completes is merged into one peak: one node hash on average.
    pub fn append_leaf_hash(&mut self, leaf: Hash) -> LeafIndex {
        let index = LeafIndex(self.size);
        if self.peaks.capacity() == 0 {
            self.peaks.reserve_exact(8);
        }
        let mut node = leaf;
        // Each trailing one bit of the old size is a peak of the same size as
        // the subtree being carried: merge them, as in a binary increment.
        let mut n = self.size;
        while n & 1 == 1 {
            match self.peaks.pop() {
                Some(left) => node = node_hash(&left, &node),
                None => break,
            }
            n >>= 1;
        }
        self.peaks.push(node);
        self.size += 1;
        self.last_leaf = Some(leaf);
        index
    }

    /// The number of leaves.
    pub const fn len(&self) -> TreeSize {
        TreeSize(self.size)
    }

    /// Whether the tree has no leaves.
    pub const fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The hash of the last leaf appended (the parent of the next delta).
    pub const fn last_leaf(&self) -> Option<Hash> {
        self.last_leaf
    }

    /// MTH of the whole tree (RFC 6962 §2.1): the peaks folded right to left,
    /// `node(p0, node(p1, … p_last))`, since the left child of every split is
    /// the largest perfect subtree.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(mut acc) = peaks.next().copied() else {
            return empty_root();
        };
        for left in peaks {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// An append-only RFC 6962 Merkle log of leaf hashes. It holds about two hashes (64
/// bytes) per leaf: the leaf hash and its share of the perfect-subtree roots above it.
#[derive(Clone, Default)]
pub struct MerkleLog {
    /// `levels[0]` holds the leaf hashes; `levels[k][i]` the root of the perfect subtree
    /// over leaves `[i·2^k, (i+1)·2^k)`, for every such subtree that is complete.
    levels: Vec<Vec<Hash>>,
}

impl fmt::Debug for MerkleLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (len, root) = (self.len(), self.root());
        write!(f, "MerkleLog {{ len: {len}, root: {root} }}")
    }
}

impl MerkleLog {
    /// An empty log.
    pub const fn new() -> MerkleLog {
        MerkleLog { levels: Vec::new() }
    }

    /// A log of `leaves` (leaf hashes, in order), e.g. reloaded on recovery; O(n) hashing.
    pub fn from_leaf_hashes(leaves: Vec<Hash>) -> MerkleLog {
        let mut levels = vec![leaves];
        while let Some(below) = levels.last().filter(|l| l.len() > 1) {
            let pairs = below.chunks_exact(2);
            levels.push(pairs.map(|p| node_hash(&p[0], &p[1])).collect());
        }
        levels.retain(|level| !level.is_empty()); // as `new()` has it
        MerkleLog { levels }
    }

    /// Appends an already computed leaf hash and returns its index. Each perfect subtree
    /// the leaf completes costs one node hash: one on average.
    pub fn append_leaf_hash(&mut self, leaf: Hash) -> LeafIndex {
        let index = LeafIndex(self.len().0);
        let (mut node, mut k) = (leaf, 0);
        loop {
            if k == self.levels.len() {
                self.levels.push(Vec::new());
            }
            let level = &mut self.levels[k];
            level.push(node);
            match level.as_slice() {
                [.., left, right] if level.len().is_multiple_of(2) => node = node_hash(left, right),
                _ => return index,
            }
            k += 1;
        }
    }

    /// Appends `data` hashed as a leaf ([`leaf_hash`]); returns its index and leaf hash.
    pub fn append(&mut self, data: &[u8]) -> (LeafIndex, Hash) {
        let leaf = leaf_hash(data);
        (self.append_leaf_hash(leaf), leaf)
    }

    /// The number of leaves.
    pub fn len(&self) -> TreeSize {
        TreeSize(self.leaf_hashes().len() as u64)
    }

    /// Whether the log has no leaves.
    pub fn is_empty(&self) -> bool {
        self.leaf_hashes().is_empty()
    }

    /// All leaf hashes, in order.
    pub fn leaf_hashes(&self) -> &[Hash] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }

    /// The hash of leaf `index`, if the log has one.
    pub fn leaf(&self, index: LeafIndex) -> Option<Hash> {
        let i = usize::try_from(index.0).ok()?;
        self.leaf_hashes().get(i).copied()
    }

    /// MTH of the whole log (RFC 6962 §2.1): a fold over the frontier.
    pub fn root(&self) -> Hash {
        self.range_root(0, self.leaf_hashes().len())
    }

    /// MTH of the first `size` leaves (RFC 6962 §2.1), in O(log size).
    ///
    /// # Errors
    /// [`MerkleError::SizeOutOfRange`] when `size` exceeds the log.
    pub fn root_at(&self, size: TreeSize) -> Result<Hash, MerkleError> {
        Ok(self.range_root(0, self.check_size(size)?))
    }

    /// The audit path `PATH(m, D[n])` (RFC 6962 §2.1.1) of leaf `index` in the tree of
    /// the first `size` leaves (any size up to the log's, not only the current one).
    ///
    /// # Errors
    /// [`MerkleError::SizeOutOfRange`] when `size` exceeds the log,
    /// [`MerkleError::IndexOutOfRange`] when `index >= size`.
    pub fn inclusion_proof(
        &self,
        index: LeafIndex,
        size: TreeSize,
    ) -> Result<InclusionProof, MerkleError> {
        let n = self.check_size(size)?;
        if index.0 >= size.0 {
            return Err(MerkleError::IndexOutOfRange { index, size });
        }
        let m = index.0 as usize;
        // PATH(m, D[lo:hi]) recurses into the half holding m and appends the MTH of the
        // other half, so walking down from the root meets the path in reverse.
        let (mut lo, mut hi, mut path) = (0, n, Vec::new());
        while hi - lo > 1 {
            let mid = lo + split(hi - lo);
            if m < mid {
                path.push(self.range_root(mid, hi));
                hi = mid;
            } else {
                path.push(self.range_root(lo, mid));
                lo = mid;
            }
        }
        path.reverse();
        Ok(InclusionProof { index, size, path })
    }

    /// The consistency proof `PROOF(m, D[n])` (RFC 6962 §2.1.2: SUBPROOF with the `b`
    /// flag) from the tree of the first `old` leaves to that of the first `new`; empty
    /// when `old == new`.
    ///
    /// # Errors
    /// [`MerkleError::SizeOutOfRange`] when `new` exceeds the log,
    /// [`MerkleError::OldLargerThanNew`] when `old > new`, [`MerkleError::EmptyOldTree`]
    /// when `old == 0` (RFC 9162 §2.1.4 defines proofs for `0 < old` only).
    pub fn consistency_proof(
        &self,
        old: TreeSize,
        new: TreeSize,
    ) -> Result<ConsistencyProof, MerkleError> {
        let n = self.check_size(new)?;
        check_sizes(old, new)?;
        let m = old.0 as usize;
        // SUBPROOF(m, D[lo:hi], b) with lo < m <= hi; `b` says D[lo:hi] is still the tree
        // the proof was asked for, whose root (the old root) the verifier already has.
        let (mut lo, mut hi, mut b, mut path) = (0, n, true, Vec::new());
        while m != hi {
            let mid = lo + split(hi - lo);
            if m <= mid {
                path.push(self.range_root(mid, hi));
                hi = mid;
            } else {
                path.push(self.range_root(lo, mid));
                (lo, b) = (mid, false);
            }
        }
        if !b {
            path.push(self.range_root(lo, hi));
        }
        path.reverse();
        Ok(ConsistencyProof { old, new, path })
    }

    fn check_size(&self, size: TreeSize) -> Result<usize, MerkleError> {
        let len = self.len();
        if size > len {
            return Err(MerkleError::SizeOutOfRange { size, len });
        }
        // `size <= len`, the length of a Vec, so it fits a usize.
        Ok(size.0 as usize)
    }

    /// MTH(D[lo:hi]) for a range the RFC 6962 recursion visits (`lo` a multiple of a power
    /// of two at least `hi - lo`): the perfect subtrees of the binary decomposition of
    /// `hi - lo`, largest first, folded from the right.
    fn range_root(&self, lo: usize, hi: usize) -> Hash {
        let (mut end, mut acc) = (hi, None::<Hash>);
        for (k, level) in self.levels.iter().enumerate() {
            if (hi - lo) >> k & 1 == 1 {
                end -= 1 << k;
                let node = level[end >> k];
                acc = Some(acc.map_or(node, |right| node_hash(&node, &right)));
            }
        }
        acc.unwrap_or_else(empty_root)
    }
}

/// `0 < old <= new`, as RFC 9162 §2.1.4 requires of consistency proofs.
fn check_sizes(old: TreeSize, new: TreeSize) -> Result<(), MerkleError> {
    if old > new {
        Err(MerkleError::OldLargerThanNew { old, new })
    } else if old.0 == 0 {
        Err(MerkleError::EmptyOldTree)
    } else {
        Ok(())
    }
}

/// The length of `PATH(index, D[size])`: the levels below the node where the paths to
/// `index` and `size - 1` meet, plus the left siblings above it. Needs `index < size`.
fn inclusion_path_len(index: u64, size: u64) -> usize {
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    (inner + index.checked_shr(inner).unwrap_or(0).count_ones()) as usize
}

/// While `fn` is even and not 0, shifts `fn` and `sn` right (RFC 9162 §2.1.3.2 step 4.b.ii).
fn shift_while_even(fn_: &mut u64, sn: &mut u64) {
    while *fn_ & 1 == 0 && *fn_ != 0 {
        *fn_ >>= 1;
        *sn >>= 1;
    }
}

/// Checks that `proof` proves `leaf` is leaf `proof.index` of the tree of `proof.size`
/// leaves with root `root`, by the algorithm of RFC 9162 §2.1.3.2. The caller must know
/// that `root` is the root of a tree of `proof.size` leaves (e.g. from a signed head).
///
/// # Errors
/// [`ProofError::Shape`] when `index >= size`, [`ProofError::PathLength`] when the path is
/// not as long as they call for, [`ProofError::RootMismatch`] (compared in constant time).
pub fn verify_inclusion(
    leaf: &Hash,
    proof: &InclusionProof,
    root: &Hash,
) -> Result<(), ProofError> {
    let (index, size, path) = (proof.index, proof.size, &proof.path);
    if index.0 >= size.0 {
        let shape = MerkleError::IndexOutOfRange { index, size };
        return Err(ProofError::Shape(shape));
    }
    let expected = inclusion_path_len(index.0, size.0);
    let got = path.len();
    let wrong_length = ProofError::PathLength { expected, got };
    if got != expected {
        return Err(wrong_length);
    }
    let (mut fn_, mut sn, mut r) = (index.0, size.0 - 1, *leaf);
    for p in path {
        if sn == 0 {
            return Err(wrong_length);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            shift_while_even(&mut fn_, &mut sn);
        } else {
            r = node_hash(&r, p);
        }
        (fn_, sn) = (fn_ >> 1, sn >> 1);
    }
    if sn != 0 {
        return Err(wrong_length);
    }
    root_matches("root", r, root)
}

/// Checks that `proof` shows the tree of `proof.old` leaves with root `old_root` is a
/// prefix of the tree of `proof.new` leaves with root `new_root`, by the algorithm of
/// RFC 9162 §2.1.4.2; for `old == new` the path must be empty and the roots equal.
///
/// # Errors
/// [`ProofError::Shape`] when `old == 0` or `old > new`, [`ProofError::PathLength`] when
/// the path is not as long as the sizes call for, [`ProofError::RootMismatch`] (roots are
/// compared in constant time).
pub fn verify_consistency(
    proof: &ConsistencyProof,
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), ProofError> {
    let (old, new, path) = (proof.old.0, proof.new.0, &proof.path);
    check_sizes(proof.old, proof.new).map_err(ProofError::Shape)?;
    // As transparency-dev/merkle counts it: the inclusion path of leaf old-1 in the new
    // tree, less the levels inside the old tree's last perfect subtree, plus that
    // subtree's root unless it is the whole old tree (then the verifier has it).
    let expected = if old == new {
        0
    } else {
        let inner = inclusion_path_len(old - 1, new);
        inner.saturating_sub(old.trailing_zeros() as usize) + usize::from(!old.is_power_of_two())
    };
    let got = path.len();
    let wrong_length = ProofError::PathLength { expected, got };
    if got != expected {
        return Err(wrong_length);
    }
    if old == new {
        return root_matches("new root", *old_root, new_root);
    }
    // Step 2: a power-of-two old tree is itself the first subtree of the path.
    let (first, rest) = match (old.is_power_of_two(), path.split_first()) {
        (true, _) => (*old_root, &path[..]),
        (false, Some((first, rest))) => (*first, rest),
        (false, None) => return Err(wrong_length),
    };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        (fn_, sn) = (fn_ >> 1, sn >> 1);
    }
    let (mut fr, mut sr) = (first, first);
    for c in rest {
        if sn == 0 {
            return Err(wrong_length);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            shift_while_even(&mut fn_, &mut sn);
        } else {
            sr = node_hash(&sr, c);
        }
        (fn_, sn) = (fn_ >> 1, sn >> 1);
    }
    root_matches("old root", fr, old_root)?;
    root_matches("new root", sr, new_root)?;
    if sn != 0 {
        return Err(wrong_length);
    }
    Ok(())
}

fn root_matches(which: &'static str, computed: Hash, expected: &Hash) -> Result<(), ProofError> {
    if computed.ct_eq(expected) {
        Ok(())
    } else {
        Err(ProofError::RootMismatch {
            which,
            computed,
            expected: *expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(hex: &str) -> Hash {
        Hash::from_hex(hex).expect("test vector is a hash")
    }

    fn hs(hexes: &[&str]) -> Vec<Hash> {
        hexes.iter().map(|x| h(x)).collect()
    }

    // Known answers of the Go CT/trillian Merkle package, github.com/transparency-dev/merkle:
    // leaves, leaf hashes (NodeHashes level 0) and roots from testonly/constants.go; proofs
    // from testonly/reference_test.go (TestRefInclusionProof, TestRefConsistencyProof), plus
    // the (6, 7) consistency proof of proof/verify_test.go.
    #[rustfmt::skip]
    const LEAVES: [&str; 8] = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
        "606162636465666768696a6b6c6d6e6f"];
    const H0: &str = "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d";
    const H1: &str = "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7";
    const H4: &str = "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b";
    const H6: &str = "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f";
    const H01: &str = "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125";
    const H23: &str = "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e";
    const H45: &str = "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a";
    const H67: &str = "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0";
    const H0_3: &str = "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7";
    const H4_7: &str = "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4";
    #[rustfmt::skip]
    const LEAF_HASHES: [&str; 8] = [H0, H1,
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7", H4,
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658", H6,
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"];
    #[rustfmt::skip]
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", H0, H01,
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77", H0_3,
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"];
    /// (index, size, PATH(index, D[size]))
    #[rustfmt::skip]
    const INCLUSION: &[(u64, u64, &[&str])] = &[(0, 1, &[]), (0, 2, &[H1]), (1, 2, &[H0]),
        (2, 3, &[H01]), (1, 5, &[H0, H23, H4]), (0, 8, &[H1, H23, H4_7]), (5, 8, &[H4, H67, H0_3])];
    /// (old, new, PROOF(old, D[new]))
    #[rustfmt::skip]
    const CONSISTENCY: &[(u64, u64, &[&str])] = &[(1, 1, &[]), (1, 8, &[H1, H23, H4_7]),
        (2, 5, &[H23, H4]), (6, 8, &[H45, H67, H0_3]), (6, 7, &[H45, H6, H0_3])];

    fn incl(i: u64, n: u64, path: Vec<Hash>) -> InclusionProof {
        let (index, size) = (LeafIndex(i), TreeSize(n));
        InclusionProof { index, size, path }
    }

    fn cons(m: u64, n: u64, path: Vec<Hash>) -> ConsistencyProof {
        let (old, new) = (TreeSize(m), TreeSize(n));
        ConsistencyProof { old, new, path }
    }

    fn root(size: u64) -> Hash {
        h(ROOTS[size as usize])
    }

    fn kat_log() -> MerkleLog {
        let mut log = MerkleLog::new();
        for (i, leaf) in LEAVES.iter().enumerate() {
            let (index, hash) = log.append(&hex::decode(leaf).expect("hex"));
            assert_eq!((index, hash), (LeafIndex(i as u64), h(LEAF_HASHES[i])));
            assert_eq!(log.root(), root(i as u64 + 1), "root of size {}", i + 1);
        }
        log
    }

    #[test]
    fn leaf_hashes_and_roots_match_the_ct_vectors() {
        assert_eq!(MerkleLog::new().root(), root(0));
        assert_eq!(empty_root(), root(0));
        let log = kat_log();
        for size in 0..=8 {
            assert_eq!(log.root_at(TreeSize(size)), Ok(root(size)), "{size}");
        }
        assert_eq!(node_hash(&h(H0), &h(H1)), h(H01));
    }

    #[test]
    fn proofs_match_the_ct_vectors_and_verify() {
        let log = kat_log();
        for &(i, n, path) in INCLUSION {
            let (good, leaf) = (incl(i, n, hs(path)), h(LEAF_HASHES[i as usize]));
            let proof = log.inclusion_proof(good.index, good.size);
            assert_eq!(proof.as_ref(), Ok(&good), "PATH({i}, D[{n}])");
            assert_eq!(verify_inclusion(&leaf, &good, &root(n)), Ok(()));
        }
        for &(m, n, path) in CONSISTENCY {
            let good = cons(m, n, hs(path));
            let proof = log.consistency_proof(good.old, good.new);
            assert_eq!(proof.as_ref(), Ok(&good), "PROOF({m}, D[{n}])");
            assert_eq!(verify_consistency(&good, &root(m), &root(n)), Ok(()));
        }
    }

    /// The corruptions transparency-dev/merkle's proof/verify_test.go tries on the vectors.
    #[test]
    fn corrupted_vector_proofs_are_rejected() {
        let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
        for &(i, n, path) in &INCLUSION[1..] {
            let (leaf, p) = (h(LEAF_HASHES[i as usize]), hs(path));
            let bad = [
                incl(i.wrapping_sub(1), n, p.clone()),
                incl(i + 1, n, p.clone()),
                incl(i ^ 2, n, p.clone()),
                incl(i, n * 2, p.clone()),
                incl(i, n / 2, p.clone()),
                incl(i, n, [&p[..], &[some]].concat()),
                incl(i, n, [&[root(n)], &p[..]].concat()),
                incl(i, n, p[1..].to_vec()),
            ];
            for b in bad {
                assert!(verify_inclusion(&leaf, &b, &root(n)).is_err(), "{b:?}");
            }
            assert!(verify_inclusion(&some, &incl(i, n, p.clone()), &root(n)).is_err());
            assert!(verify_inclusion(&leaf, &incl(i, n, p), &root(0)).is_err());
        }
        for &(m, n, path) in &CONSISTENCY[1..] {
            let p = hs(path);
            let bad = [
                cons(m - 1, n, p.clone()),
                cons(m + 1, n, p.clone()),
                cons(m ^ 2, n, p.clone()),
                cons(m, n * 2, p.clone()),
                cons(m, n / 2, p.clone()),
                cons(m, n, vec![]),
                cons(m, n, [&p[..], &[root(n)]].concat()),
                cons(m, n, [&[p[0]], &p[..]].concat()),
                cons(m, n, p[..p.len() - 1].to_vec()),
            ];
            for b in bad {
                assert!(verify_consistency(&b, &root(m), &root(n)).is_err(), "{b:?}");
            }
            let good = cons(m, n, p);
            assert!(verify_consistency(&good, &root(n), &root(m)).is_err());
            assert!(verify_consistency(&good, &some, &root(n)).is_err());
        }
    }

    #[test]
    fn malformed_queries_are_typed_errors() {
        let log = kat_log();
        let (len, size) = (TreeSize(8), TreeSize(u64::MAX));
        let too_big = MerkleError::SizeOutOfRange { size, len };
        assert_eq!(log.root_at(size), Err(too_big.clone()));
        assert_eq!(log.leaf(LeafIndex(u64::MAX)), None);
        let (index, size) = (LeafIndex(3), TreeSize(3));
        let e = log.inclusion_proof(index, size).unwrap_err();
        assert_eq!(e, MerkleError::IndexOutOfRange { index, size });
        let msg = "leaf index 3 is out of range for a tree of size 3";
        assert_eq!(e.to_string(), msg);
        let e = log.inclusion_proof(LeafIndex(0), TreeSize(u64::MAX));
        assert_eq!(e, Err(too_big.clone()));
        let e = log.consistency_proof(TreeSize(0), len);
        assert_eq!(e, Err(MerkleError::EmptyOldTree));
        let (old, new) = (TreeSize(5), TreeSize(3));
        let e = log.consistency_proof(old, new);
        assert_eq!(e, Err(MerkleError::OldLargerThanNew { old, new }));
        let e = log.consistency_proof(TreeSize(1), TreeSize(u64::MAX));
        assert_eq!(e, Err(too_big));
        let e = log.consistency_proof(TreeSize(1), TreeSize(9)).unwrap_err();
        assert_eq!(e.to_string(), "tree size 9 exceeds the log's 8 leaves");
        assert_eq!(log.consistency_proof(len, len), Ok(cons(8, 8, vec![])));
        let empty = MerkleLog::new();
        assert!(empty.inclusion_proof(LeafIndex(0), TreeSize(0)).is_err());
    }

    /// Which root a verification failed on, if that is why it failed.
    fn mismatch(result: Result<(), ProofError>) -> Option<&'static str> {
        match result {
            Err(ProofError::RootMismatch { which, .. }) => Some(which),
            _ => None,
        }
    }

    #[test]
    fn malformed_proofs_are_typed_errors() {
        let (x, y, max) = (leaf_hash(b"x"), leaf_hash(b"y"), u64::MAX);
        let shape = |e| Err(ProofError::Shape(e));
        let path_len = |expected, got| Err(ProofError::PathLength { expected, got });
        let (index, size) = (LeafIndex(0), TreeSize(0));
        let e = verify_inclusion(&x, &incl(0, 0, vec![]), &x);
        assert_eq!(e, shape(MerkleError::IndexOutOfRange { index, size }));
        let e = verify_inclusion(&x, &incl(max, max, vec![]), &x);
        assert!(matches!(e, Err(ProofError::Shape(_))));
        assert_eq!(
            verify_inclusion(&x, &incl(0, max, vec![x]), &x),
            path_len(64, 1)
        );
        let e = verify_inclusion(&x, &incl(max - 1, max, vec![x; 63]), &x);
        assert_eq!(mismatch(e), Some("root"));
        assert_eq!(verify_inclusion(&x, &incl(0, 1, vec![]), &x), Ok(()));
        let e = verify_inclusion(&x, &incl(0, 1, vec![]), &y);
        let (which, computed, expected) = ("root", x, y);
        assert_eq!(
            e,
            Err(ProofError::RootMismatch {
                which,
                computed,
                expected
            })
        );
        let e = verify_consistency(&cons(0, 5, vec![]), &x, &x);
        assert_eq!(e, shape(MerkleError::EmptyOldTree));
        let (old, new) = (TreeSize(max), TreeSize(1));
        let e = verify_consistency(&cons(max, 1, vec![]), &x, &x);
        assert_eq!(e, shape(MerkleError::OldLargerThanNew { old, new }));
        let e = verify_consistency(&cons(max - 1, max, vec![]), &x, &x);
        assert!(matches!(e, Err(ProofError::PathLength { got: 0, .. })));
        let e = verify_consistency(&cons(1, max, vec![x; 64]), &x, &x);
        assert_eq!(mismatch(e), Some("new root"));
        assert_eq!(verify_consistency(&cons(3, 3, vec![]), &x, &x), Ok(()));
        let e = verify_consistency(&cons(3, 3, vec![x]), &x, &x);
        assert_eq!(e, path_len(0, 1));
        let e = verify_consistency(&cons(3, 3, vec![]), &x, &y);
        assert_eq!(mismatch(e), Some("new root"));
    }

    #[test]
    fn proof_bytes_round_trip_and_bad_bytes_are_named() {
        let (p, c) = (
            incl(5, 8, hs(INCLUSION[6].2)),
            cons(6, 8, hs(CONSISTENCY[3].2)),
        );
        let bytes = p.to_bytes();
        let header = [0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 8];
        assert_eq!((&bytes[..16], bytes.len()), (&header[..], 16 + 3 * 32));
        assert_eq!(InclusionProof::from_bytes(&bytes), Ok(p));
        assert_eq!(ConsistencyProof::from_bytes(&c.to_bytes()), Ok(c));
        let kind = "inclusion";
        for len in [0, 8, 15] {
            let e = Err(DecodeError::Truncated { kind, len });
            assert_eq!(InclusionProof::from_bytes(&bytes[..len]), e);
        }
        let e = ConsistencyProof::from_bytes(&bytes[..16 + 31]).unwrap_err();
        let (kind, len) = ("consistency", 31);
        assert_eq!(e, DecodeError::RaggedPath { kind, len });
        let msg = "consistency proof path is 31 bytes, not a whole number of 32-byte hashes";
        assert_eq!(ProofError::from(e).to_string(), msg);
    }

    /// MTH straight from its recursive definition in RFC 6962 §2.1.
    fn reference_mth(leaves: &[Hash]) -> Hash {
        match leaves {
            [] => empty_root(),
            [leaf] => *leaf,
            _ => {
                let (l, r) = leaves.split_at(split(leaves.len()));
                node_hash(&reference_mth(l), &reference_mth(r))
            }
        }
    }

    /// A log of `n` distinct leaves, and its root after each append.
    fn grown(n: usize, seed: u64) -> (MerkleLog, Vec<Hash>) {
        let mut log = MerkleLog::new();
        let mut roots = vec![log.root()];
        for i in 0..n as u64 {
            log.append(&[seed.to_be_bytes(), i.to_be_bytes()].concat());
            roots.push(log.root());
        }
        (log, roots)
    }

    fn flip(x: &Hash, bit: usize) -> Hash {
        let mut y = *x;
        y.0[bit / 8 % 32] ^= 1 << (bit % 8);
        y
    }

    fn leaf_data() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 1..200)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn compact_tree_matches_the_full_log(leaves in leaf_data()) {
            let mut log = MerkleLog::new();
            let mut compact = CompactTree::new();
            prop_assert_eq!(compact.root(), empty_root());
            for data in &leaves {
                let (i, leaf) = log.append(data);
                prop_assert_eq!(compact.append_leaf_hash(leaf), i);
                prop_assert_eq!(compact.len(), log.len());
                prop_assert_eq!(compact.last_leaf(), Some(leaf));
                prop_assert_eq!(compact.root(), log.root());
            }
            let reloaded = CompactTree::from_leaf_hashes(log.leaf_hashes().iter().copied());
            prop_assert_eq!(reloaded.root(), log.root());
        }

        #[test]
        fn inline_leaf_and_node_hashes_match_streaming_sha256(
            data in prop::collection::vec(any::<u8>(), 0..400), a: [u8; 32], b: [u8; 32],
        ) {
            prop_assert_eq!(leaf_hash(&data), Hash::of_parts(&[&[LEAF_PREFIX], &data]));
            let (a, b) = (Hash(a), Hash(b));
            prop_assert_eq!(node_hash(&a, &b), Hash::of_parts(&[&[NODE_PREFIX], &a.0, &b.0]));
        }

        #[test]
        fn every_proof_verifies(n in 1usize..=300, pick: prop::sample::Index, seed: u64) {
            let (log, roots) = grown(n, seed);
            let small = 1 + pick.index(n);
            for size in [n, small, n.div_ceil(2)] {
                for i in 0..size {
                    let leaf = &log.leaf_hashes()[i];
                    let p = log.inclusion_proof(LeafIndex(i as u64), TreeSize(size as u64));
                    let p = p.expect("proof");
                    prop_assert_eq!(verify_inclusion(leaf, &p, &roots[size]), Ok(()));
                }
            }
            for (m, n) in (1..=n).map(|m| (m, n)).chain((1..=small).map(|m| (m, small))) {
                let p = log.consistency_proof(TreeSize(m as u64), TreeSize(n as u64));
                let p = p.expect("proof");
                prop_assert_eq!(verify_consistency(&p, &roots[m], &roots[n]), Ok(()));
            }
        }

        #[test]
        fn any_flipped_bit_or_other_size_fails(
            n in 2usize..=300, a: prop::sample::Index, b: prop::sample::Index,
            bit in 0usize..256, seed: u64,
        ) {
            let (log, roots) = grown(n, seed);
            let (lo, hi) = (a.index(n).min(b.index(n)), a.index(n).max(b.index(n)));
            let (i, size, leaf) = (lo as u64, hi + 1, log.leaf_hashes()[lo]);
            let proof = log.inclusion_proof(LeafIndex(i), TreeSize(size as u64)).expect("proof");
            let root = roots[size];
            prop_assert!(verify_inclusion(&flip(&leaf, bit), &proof, &root).is_err());
            prop_assert!(verify_inclusion(&leaf, &proof, &flip(&root, bit)).is_err());
            for k in 0..proof.path.len() {
                let mut bad = proof.clone();
                bad.path[k] = flip(&bad.path[k], bit);
                prop_assert!(verify_inclusion(&leaf, &bad, &root).is_err());
            }
            for s in [size - 1, size + 1].into_iter().filter(|&s| s > lo && s <= n) {
                let bad = incl(i, s as u64, proof.path.clone());
                prop_assert!(verify_inclusion(&leaf, &bad, &roots[s]).is_err());
            }
            for j in [i.wrapping_sub(1), i + 1].into_iter().filter(|&j| j < size as u64) {
                let bad = incl(j, size as u64, proof.path.clone());
                prop_assert!(verify_inclusion(&leaf, &bad, &root).is_err());
            }
            let (old, new) = (lo + 1, (hi + 1).max(lo + 2).min(n));
            prop_assume!(old < new);
            let proof = log.consistency_proof(TreeSize(old as u64), TreeSize(new as u64));
            let proof = proof.expect("proof");
            let (r1, r2) = (roots[old], roots[new]);
            prop_assert!(verify_consistency(&proof, &flip(&r1, bit), &r2).is_err());
            prop_assert!(verify_consistency(&proof, &r1, &flip(&r2, bit)).is_err());
            for k in 0..proof.path.len() {
                let mut bad = proof.clone();
                bad.path[k] = flip(&bad.path[k], bit);
                prop_assert!(verify_consistency(&bad, &r1, &r2).is_err());
            }
            for (m, s) in [(old - 1, new), (old + 1, new), (old, new - 1), (old, new + 1)] {
                if 1 <= m && m <= s && s <= n {
                    let bad = cons(m as u64, s as u64, proof.path.clone());
                    prop_assert!(verify_consistency(&bad, &roots[m], &roots[s]).is_err());
                }
            }
        }

        #[test]
        fn roots_agree_however_computed(n in 0usize..=300, pick: prop::sample::Index, seed: u64) {
            let (log, roots) = grown(n, seed);
            let mut again = MerkleLog::new();
            for (size, leaf) in log.leaf_hashes().iter().enumerate() {
                prop_assert_eq!(log.root_at(TreeSize(size as u64)), Ok(roots[size]));
                again.append_leaf_hash(*leaf);
                prop_assert_eq!(Ok(again.root()), again.root_at(again.len()));
            }
            let small = pick.index(n + 1);
            prop_assert_eq!(roots[small], reference_mth(&log.leaf_hashes()[..small]));
            prop_assert_eq!(roots[n], reference_mth(log.leaf_hashes()));
            let rebuilt = MerkleLog::from_leaf_hashes(log.leaf_hashes().to_vec());
            prop_assert_eq!((rebuilt.len(), rebuilt.root()), (TreeSize(n as u64), log.root()));
            prop_assert_eq!(rebuilt.levels, log.levels);
        }

        /// Differential test against ct-merkle 0.3, an independent RFC 6962 implementation.
        #[test]
        fn matches_ct_merkle(data in leaf_data()) {
            type Ct = ct_merkle::mem_backed_tree::MemoryBackedTree<sha2_011::Sha256, Vec<u8>>;
            let (mut ct, mut log) = (Ct::new(), MerkleLog::new());
            for d in &data {
                ct.push(d.clone());
                log.append(d);
                let theirs = ct.root();
                prop_assert_eq!(&theirs.as_bytes()[..], &log.root().0[..]);
            }
            let n = data.len();
            let flat = |p: &[Hash]| p.iter().flat_map(|h| h.0).collect::<Vec<u8>>();
            for i in 0..n {
                let ours = log.inclusion_proof(LeafIndex(i as u64), log.len()).expect("proof");
                let theirs = ct.prove_inclusion(i);
                prop_assert_eq!(theirs.as_bytes(), &flat(&ours.path)[..]);
            }
            for m in 1..n {
                let ours = log.consistency_proof(TreeSize(m as u64), log.len()).expect("proof");
                let theirs = ct.prove_consistency(n - m);
                prop_assert_eq!(theirs.as_bytes(), &flat(&ours.path)[..]);
            }
        }
    }
}
