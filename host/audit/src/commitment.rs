//! Commitments: what sealing a session's audit log leaves behind, and the
//! records of the two small logs beside the delta logs.
//!
//! A commitment binds a session to the size and Merkle root of its delta log
//! at termination. Because the size is committed, truncating the log or
//! appending to it afterwards is detected; because the root is committed, so
//! is rewriting the whole chain consistently. Commitments are themselves the
//! leaves of the commitment log (an RFC 6962 Merkle log) whose heads are signed
//! ([`crate::signing`]), so replacing a commitment is detected too.

use crate::hash::Hash;

/// The first byte of a version-1 commitment.
pub const COMMITMENT_VERSION: u8 = 1;

/// The first byte of a pruned delta record (see FORMAT.md "Pruned records"):
/// a delta whose body the retention policy removed, keeping its leaf hash.
/// Delta bodies start with their version (1), so the two cannot be confused.
pub const PRUNED_TAG: u8 = 0xF0;

/// A session's sealed audit log: `tree_size` deltas with Merkle root `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commitment {
    /// The session.
    pub session: String,
    /// How many deltas.
    pub tree_size: u64,
    /// Their RFC 6962 Merkle root.
    pub root: Hash,
    /// Wall time of sealing, in nanoseconds since the Unix epoch.
    pub time_unix_ns: u64,
}

/// Bytes that are not a valid record of the kind expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordFormatError {
    /// Wrong first byte.
    #[error("{what}: unknown version or tag byte {byte:#04x}")]
    Version {
        /// What was being decoded.
        what: &'static str,
        /// The byte found.
        byte: u8,
    },
    /// Wrong length.
    #[error("{what}: {len} bytes, expected {expected}")]
    Length {
        /// What was being decoded.
        what: &'static str,
        /// Bytes found.
        len: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// The session id is not UTF-8.
    #[error("{what}: the session id is not UTF-8")]
    Utf8 {
        /// What was being decoded.
        what: &'static str,
    },
    /// The session id is not a valid id (no hypervisor writes one).
    #[error("{what}: {reason}")]
    SessionId {
        /// What was being decoded.
        what: &'static str,
        /// Why the id is refused.
        reason: String,
    },
}

impl Commitment {
    /// Canonical bytes: `0x01 ‖ u32 len ‖ session ‖ u64 tree_size ‖ root ‖
    /// u64 time` (big-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 4 + self.session.len() + 8 + 32 + 8);
        out.push(COMMITMENT_VERSION);
        let len = u32::try_from(self.session.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(self.session.as_bytes());
        out.extend_from_slice(&self.tree_size.to_be_bytes());
        out.extend_from_slice(self.root.as_bytes());
        out.extend_from_slice(&self.time_unix_ns.to_be_bytes());
        out
    }

    /// Decodes [`Commitment::encode`]'s bytes.
    ///
    /// # Errors
    /// [`RecordFormatError`] for a wrong version, length or session text.
    pub fn decode(bytes: &[u8]) -> Result<Commitment, RecordFormatError> {
        const WHAT: &str = "commitment";
        match bytes.first() {
            Some(&COMMITMENT_VERSION) => {}
            Some(&byte) => return Err(RecordFormatError::Version { what: WHAT, byte }),
            None => {
                return Err(RecordFormatError::Length {
                    what: WHAT,
                    len: 0,
                    expected: 53,
                });
            }
        }
        let len_bytes: [u8; 4] =
            bytes
                .get(1..5)
                .and_then(|b| b.try_into().ok())
                .ok_or(RecordFormatError::Length {
                    what: WHAT,
                    len: bytes.len(),
                    expected: 53,
                })?;
        let n = usize::try_from(u32::from_be_bytes(len_bytes)).unwrap_or(usize::MAX);
        let expected = 5usize.saturating_add(n).saturating_add(48);
        if bytes.len() != expected {
            return Err(RecordFormatError::Length {
                what: WHAT,
                len: bytes.len(),
                expected,
            });
        }
        let session = std::str::from_utf8(&bytes[5..5 + n])
            .map_err(|_| RecordFormatError::Utf8 { what: WHAT })?
            .to_string();
        let rest = &bytes[5 + n..];
        let mut size = [0u8; 8];
        size.copy_from_slice(&rest[..8]);
        let mut root = [0u8; 32];
        root.copy_from_slice(&rest[8..40]);
        let mut time = [0u8; 8];
        time.copy_from_slice(&rest[40..48]);
        Ok(Commitment {
            session,
            tree_size: u64::from_be_bytes(size),
            root: Hash(root),
            time_unix_ns: u64::from_be_bytes(time),
        })
    }
}

/// A pruned delta record: `0xF0 ‖ u64 seq ‖ leaf hash`.
pub fn encode_pruned(seq: u64, leaf: &Hash) -> [u8; 41] {
    let mut out = [0u8; 41];
    out[0] = PRUNED_TAG;
    out[1..9].copy_from_slice(&seq.to_be_bytes());
    out[9..].copy_from_slice(leaf.as_bytes());
    out
}

/// Decodes a pruned delta record into `(seq, leaf hash)`.
///
/// # Errors
/// [`RecordFormatError`] if `bytes` is not exactly a pruned record.
pub fn decode_pruned(bytes: &[u8]) -> Result<(u64, Hash), RecordFormatError> {
    const WHAT: &str = "pruned delta";
    if bytes.first() != Some(&PRUNED_TAG) {
        return Err(RecordFormatError::Version {
            what: WHAT,
            byte: bytes.first().copied().unwrap_or(0),
        });
    }
    let b: &[u8; 41] = bytes.try_into().map_err(|_| RecordFormatError::Length {
        what: WHAT,
        len: bytes.len(),
        expected: 41,
    })?;
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&b[1..9]);
    let mut leaf = [0u8; 32];
    leaf.copy_from_slice(&b[9..]);
    Ok((u64::from_be_bytes(seq), Hash(leaf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Commitment {
        Commitment {
            session: "s0-00ff".into(),
            tree_size: 12,
            root: Hash([7; 32]),
            time_unix_ns: 1_700_000_000_123_456_789,
        }
    }

    #[test]
    fn commitment_round_trips_and_has_the_documented_layout() {
        let c = sample();
        let b = c.encode();
        assert_eq!(b.len(), 1 + 4 + 7 + 8 + 32 + 8);
        assert_eq!(&b[..5], &[1, 0, 0, 0, 7]);
        assert_eq!(&b[5..12], b"s0-00ff");
        assert_eq!(Commitment::decode(&b), Ok(c));
    }

    #[test]
    fn every_truncation_or_extension_of_a_commitment_fails() {
        let b = sample().encode();
        for cut in 0..b.len() {
            assert!(Commitment::decode(&b[..cut]).is_err(), "cut {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(
            Commitment::decode(&longer),
            Err(RecordFormatError::Length { .. })
        ));
        let mut v2 = b;
        v2[0] = 2;
        assert!(matches!(
            Commitment::decode(&v2),
            Err(RecordFormatError::Version { byte: 2, .. })
        ));
    }

    #[test]
    fn a_huge_session_length_is_an_error_not_an_allocation() {
        let mut b = sample().encode();
        b[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Commitment::decode(&b).is_err());
    }

    #[test]
    fn pruned_records_round_trip_and_are_checked() {
        let r = encode_pruned(9, &Hash([3; 32]));
        assert_eq!(decode_pruned(&r), Ok((9, Hash([3; 32]))));
        assert!(decode_pruned(&r[..40]).is_err());
        assert!(decode_pruned(&[1; 41]).is_err());
    }
}
