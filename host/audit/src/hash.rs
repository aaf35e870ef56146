//! SHA-256 digests as a type of their own.

use std::fmt;

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest as _, Sha256};

/// The initial hash value H(0) of SHA-256 (FIPS 180-4 §5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// A SHA-256 digest: a Merkle node, a leaf hash, a delta's chain hash or a
/// content hash.
///
/// Equality is constant-time ([`Hash::ct_eq`]), so comparing a computed root
/// against a committed one leaks nothing about where they differ.
#[derive(Clone, Copy, Default, Eq)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The all-zero hash (used nowhere as a real digest; a placeholder in encodings).
    pub const ZERO: Hash = Hash([0; 32]);

    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(Sha256::digest(bytes).into())
    }

    /// SHA-256 of the concatenation of `parts`.
    pub fn of_parts(parts: &[&[u8]]) -> Hash {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        Hash(h.finalize().into())
    }

    /// SHA-256 over message blocks that already carry the padding of FIPS
    /// 180-4 §5.1.1 (`0x80`, zeros, the bit length): only the compression
    /// function runs. `blocks.len()` must be a multiple of 64.
    pub(crate) fn of_padded_blocks(blocks: &[u8]) -> Hash {
        debug_assert!(blocks.len().is_multiple_of(64));
        let mut state = SHA256_IV;
        for block in blocks.chunks_exact(64) {
            sha2::compress256(
                &mut state,
                std::slice::from_ref(GenericArray::from_slice(block)),
            );
        }
        let mut out = [0u8; 32];
        for (o, word) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&word.to_be_bytes());
        }
        Hash(out)
    }

    /// The digest's bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Compares in time independent of the contents.
    pub fn ct_eq(&self, other: &Hash) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            diff |= a ^ b;
        }
        diff == 0
    }

    /// Lower-case hex, 64 digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    ///
    /// # Errors
    /// [`HashParseError`] naming the input when it is not 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Hash, HashParseError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| HashParseError {
            input: s.chars().take(80).collect(),
        })?;
        Ok(Hash(out))
    }
}

impl PartialEq for Hash {
    fn eq(&self, other: &Hash) -> bool {
        self.ct_eq(other)
    }
}

impl std::hash::Hash for Hash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

impl From<[u8; 32]> for Hash {
    fn from(b: [u8; 32]) -> Hash {
        Hash(b)
    }
}

/// A string that is not 64 hex digits was given as a hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a SHA-256 hash (64 hex digits): {input:?}")]
pub struct HashParseError {
    /// The input (at most 80 characters of it).
    pub input: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc_is_the_fips_vector() {
        assert_eq!(
            Hash::of(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Hash::of_parts(&[b"a", b"bc"]), Hash::of(b"abc"));
    }

    #[test]
    fn hex_round_trips_and_bad_hex_is_named() {
        let h = Hash::of(b"x");
        assert_eq!(Hash::from_hex(&h.to_hex()), Ok(h));
        let err = Hash::from_hex("abc").unwrap_err();
        assert_eq!(err.input, "abc");
        assert!(Hash::from_hex(&"g".repeat(64)).is_err());
    }

    #[test]
    fn equality_sees_every_byte() {
        let a = Hash::of(b"x");
        for i in 0..32 {
            let mut b = a;
            b.0[i] ^= 1;
            assert_ne!(a, b);
        }
    }
}
