//! The hypervisor's Ed25519 key, signed tree heads of the commitment log, and a
//! batch signer that keeps signing off the hot path.
//!
//! Terminating a session appends a commitment to the commitment log and calls
//! [`BatchSigner::notify`], which only flips an atomic flag. A background thread
//! waits until `max_delay` after the first unsigned notify, reads the log's
//! current head from a [`HeadSource`], signs it once for the whole batch (as
//! Certificate Transparency signs tree heads, RFC 6962 §3.5) and hands the
//! [`SignedTreeHead`] to every [`AnchorSink`].
//!
//! # Formats
//! - Signed message ([`TreeHead::message`], 65 bytes):
//!   `b"ahv-tree-head-v1\0" ‖ size u64 BE ‖ root 32 ‖ time_ms u64 BE`. The tag
//!   domain-separates the signature, so it can never be replayed as a signature
//!   over anything else the key signs; a new layout gets a new tag.
//! - [`SignedTreeHead::to_bytes`] (113 bytes):
//!   `0x01 (encoding version) ‖ size u64 BE ‖ root 32 ‖ time_ms u64 BE ‖ signature 64`.
//! - Key directory ([`HypervisorKey::load_or_create`]): `signing-key` holds the
//!   32-byte secret seed as 64 lower-case hex digits and a newline (mode 0600);
//!   `public-key` holds the public key the same way, for export.
//!
//! # Anchoring to an external transparency log
//! A sink that anchors heads externally implements [`AnchorSink::publish`]:
//! 1. Send the 65-byte [`TreeHead::message`], the 64-byte signature and the
//!    public key. In Sigstore Rekor that is a `rekord` entry with the message as
//!    the artifact and the key in PKIX form (`hashedrekord` will not do: pure
//!    Ed25519 verifies over the whole message, not a digest of it).
//! 2. Keep what the log returns next to the head — Rekor's log index, entry UUID
//!    and Signed Entry Timestamp (its inclusion promise), or a witness's
//!    cosignature — e.g. in the local head log, so the anchoring can be checked
//!    offline later.
//! 3. Bound every network call with a timeout: `publish` runs on the signer
//!    thread, and [`BatchSigner::flush`] waits for it.
//! 4. On failure return an [`AnchorError`]. The signer records it
//!    ([`BatchSigner::last_error`], [`BatchSigner::failure_count`]) and
//!    publishes the next head to that sink on its next round; a later head
//!    covers everything the failed one did. Commits never wait for a sink.
//!
//! # Example
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use ahv_audit::Hash;
//! use ahv_audit::signing::*;
//!
//! struct Log(Mutex<(u64, Hash)>);
//! impl HeadSource for Log {
//!     fn current(&self) -> (u64, Hash) { *self.0.lock().unwrap() }
//! }
//! let log = Arc::new(Log(Mutex::new((0, Hash::ZERO))));
//! let sink = Arc::new(MemorySink::new("local"));
//! let key = HypervisorKey::from_seed([7; 32]);
//! let public = key.public_key();
//! let signer = BatchSigner::spawn(key, log.clone(), vec![sink.clone()],
//!     Arc::new(SystemWallClock), Duration::from_millis(50)).unwrap();
//! *log.0.lock().unwrap() = (1, Hash::of(b"commitment"));
//! signer.notify(); // the hot path: cheap, never waits for a signature
//! let head = signer.shutdown().unwrap().unwrap();
//! assert_eq!(head.head.size, 1);
//! head.verify(&public).unwrap();
//! assert_eq!(sink.heads(), vec![head]);
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::Signature;

use crate::hash::Hash;

mod batch;
mod key;

pub use batch::{BatchSigner, HeadSource, SignerError};
pub use key::{HypervisorKey, KeyError, PublicKey, PublicKeyParseError};

/// Domain-separation tag that starts every signed tree-head message.
pub const HEAD_DOMAIN: &[u8; 17] = b"ahv-tree-head-v1\0";
/// Length of [`TreeHead::message`].
pub const HEAD_MESSAGE_LEN: usize = 17 + 8 + 32 + 8;
/// Version byte that starts [`SignedTreeHead::to_bytes`].
pub const SIGNED_HEAD_VERSION: u8 = 1;
/// Length of [`SignedTreeHead::to_bytes`].
pub const SIGNED_HEAD_LEN: usize = 1 + 8 + 32 + 8 + 64;

/// Wall-clock time for tree-head timestamps. Separate from [`ahv_core::Clock`],
/// which is monotonic and has no relation to the Unix epoch.
pub trait WallClock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> u64;

    /// Nanoseconds since the Unix epoch (delta timestamps); by default the
    /// milliseconds scaled up.
    fn now_unix_ns(&self) -> u64 {
        self.now_unix_ms().saturating_mul(1_000_000)
    }
}

/// The system's wall clock (0 if it reads before 1970).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn now_unix_ms(&self) -> u64 {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }

    fn now_unix_ns(&self) -> u64 {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A wall clock that reads what it was set to. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct FakeWallClock(Arc<AtomicU64>);

impl FakeWallClock {
    /// A fake wall clock reading `unix_ms`.
    pub fn new(unix_ms: u64) -> FakeWallClock {
        FakeWallClock(Arc::new(AtomicU64::new(unix_ms)))
    }

    /// Sets the time.
    pub fn set(&self, unix_ms: u64) {
        self.0.store(unix_ms, Ordering::SeqCst);
    }
}

impl WallClock for FakeWallClock {
    fn now_unix_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A head of the commitment log: its size, Merkle root and when it was signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeHead {
    /// Number of commitments in the log.
    pub size: u64,
    /// RFC 6962 Merkle tree hash of those commitments.
    pub root: Hash,
    /// Milliseconds since the Unix epoch, from a [`WallClock`].
    pub time_ms: u64,
}

impl TreeHead {
    /// The exact bytes that are signed: see the module docs.
    pub fn message(&self) -> [u8; HEAD_MESSAGE_LEN] {
        let mut m = [0u8; HEAD_MESSAGE_LEN];
        m[..17].copy_from_slice(HEAD_DOMAIN);
        m[17..25].copy_from_slice(&self.size.to_be_bytes());
        m[25..57].copy_from_slice(self.root.as_bytes());
        m[57..].copy_from_slice(&self.time_ms.to_be_bytes());
        m
    }
}

/// A tree head with the hypervisor's Ed25519 signature over [`TreeHead::message`].
#[derive(Clone, PartialEq, Eq)]
pub struct SignedTreeHead {
    /// The head.
    pub head: TreeHead,
    /// The signature.
    pub signature: [u8; 64],
}

impl fmt::Debug for SignedTreeHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedTreeHead")
            .field("head", &self.head)
            .field("signature", &hex::encode(self.signature))
            .finish()
    }
}

/// A signed tree head does not verify.
#[derive(Debug, thiserror::Error)]
#[error("signature over tree head {head:?} does not verify under {key}")]
pub struct SignatureError {
    /// The head whose signature failed.
    pub head: TreeHead,
    /// The key it was checked against, in hex (a `PublicKey` would make the
    /// error hundreds of bytes).
    pub key: String,
    /// Why Ed25519 rejected it.
    #[source]
    pub source: ed25519_dalek::SignatureError,
}

/// Bytes that are not a [`SignedTreeHead::to_bytes`] encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadDecodeError {
    /// Wrong length (truncated or trailing bytes).
    #[error("signed tree head must be {expected} bytes, found {found}")]
    Length {
        /// [`SIGNED_HEAD_LEN`].
        expected: usize,
        /// The input's length.
        found: usize,
    },
    /// The first byte is not a known encoding version.
    #[error("unknown signed tree head encoding version {found} (expected {SIGNED_HEAD_VERSION})")]
    Version {
        /// The version byte found.
        found: u8,
    },
}

impl SignedTreeHead {
    /// Checks the signature with strict Ed25519 verification (rejects
    /// non-canonical and small-order encodings, so signatures are not malleable).
    ///
    /// # Errors
    /// [`SignatureError`] naming the head and key if it does not verify.
    pub fn verify(&self, key: &PublicKey) -> Result<(), SignatureError> {
        let sig = Signature::from_bytes(&self.signature);
        key.0
            .verify_strict(&self.head.message(), &sig)
            .map_err(|source| SignatureError {
                head: self.head,
                key: key.to_hex(),
                source,
            })
    }

    /// The 113-byte encoding described in the module docs.
    pub fn to_bytes(&self) -> [u8; SIGNED_HEAD_LEN] {
        let mut b = [0u8; SIGNED_HEAD_LEN];
        b[0] = SIGNED_HEAD_VERSION;
        b[1..49].copy_from_slice(&self.head.message()[17..]);
        b[49..].copy_from_slice(&self.signature);
        b
    }

    /// Decodes [`SignedTreeHead::to_bytes`]. Does not check the signature.
    ///
    /// # Errors
    /// [`HeadDecodeError`] on a wrong length or an unknown version byte.
    pub fn from_bytes(b: &[u8]) -> Result<SignedTreeHead, HeadDecodeError> {
        let b: &[u8; SIGNED_HEAD_LEN] = b.try_into().map_err(|_| HeadDecodeError::Length {
            expected: SIGNED_HEAD_LEN,
            found: b.len(),
        })?;
        if b[0] != SIGNED_HEAD_VERSION {
            return Err(HeadDecodeError::Version { found: b[0] });
        }
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let mut root = [0u8; 32];
        root.copy_from_slice(&b[9..41]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&b[49..]);
        Ok(SignedTreeHead {
            head: TreeHead {
                size: u64_at(1),
                root: Hash(root),
                time_ms: u64_at(41),
            },
            signature,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A sink refused or failed to take a signed head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("anchor sink {sink:?} failed: {reason}")]
pub struct AnchorError {
    /// The sink's [`AnchorSink::name`].
    pub sink: String,
    /// What went wrong.
    pub reason: String,
}

/// Where signed tree heads go: the local head log, an external transparency log.
/// See the module docs for writing one that anchors externally.
pub trait AnchorSink: Send + Sync {
    /// A short name for errors and metrics.
    fn name(&self) -> &str;

    /// Takes one signed head. Runs on the signer thread, never on the hot path.
    ///
    /// # Errors
    /// [`AnchorError`] if the head was not durably accepted; it is recorded and
    /// the sink gets the next head on the signer's next round.
    fn publish(&self, head: &SignedTreeHead) -> Result<(), AnchorError>;
}

/// A sink that keeps heads in memory, for tests and embedding.
#[derive(Debug, Default)]
pub struct MemorySink {
    name: String,
    heads: Mutex<Vec<SignedTreeHead>>,
}

impl MemorySink {
    /// An empty sink called `name`.
    pub fn new(name: &str) -> MemorySink {
        MemorySink {
            name: name.to_owned(),
            heads: Mutex::default(),
        }
    }

    /// Every head published so far, oldest first.
    pub fn heads(&self) -> Vec<SignedTreeHead> {
        lock(&self.heads).clone()
    }
}

impl AnchorSink for MemorySink {
    fn name(&self) -> &str {
        &self.name
    }

    fn publish(&self, head: &SignedTreeHead) -> Result<(), AnchorError> {
        lock(&self.heads).push(head.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::Signer as _;

    use super::*;

    fn head(size: u64) -> TreeHead {
        TreeHead {
            size,
            root: Hash::of(&size.to_be_bytes()),
            time_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn signed_head_verifies_and_any_flipped_bit_breaks_it() {
        let key = HypervisorKey::from_seed([1; 32]);
        let pk = key.public_key();
        let sth = key.sign_head(&head(42));
        sth.verify(&pk).unwrap();
        let bytes = sth.to_bytes();
        // Every byte after the version, each at a different bit position:
        // every bit would take 900 verifications, slow in debug builds.
        for byte in 1..bytes.len() {
            let bit = (byte * 3) % 8;
            let mut b = bytes;
            b[byte] ^= 1 << bit;
            let flipped = SignedTreeHead::from_bytes(&b).unwrap();
            assert!(
                flipped.verify(&pk).is_err(),
                "flipping bit {bit} of byte {byte} still verifies"
            );
        }
        let err = sth
            .verify(&HypervisorKey::from_seed([2; 32]).public_key())
            .unwrap_err();
        assert_eq!(err.head.size, 42);
        assert!(err.to_string().contains("size: 42"), "{err}");
    }

    #[test]
    fn signature_over_the_bare_root_is_not_a_head_signature() {
        let key = HypervisorKey::from_seed([1; 32]);
        let h = head(7);
        let signature = key.signing.sign(h.root.as_bytes()).to_bytes();
        assert!(
            SignedTreeHead { head: h, signature }
                .verify(&key.public_key())
                .is_err()
        );
        assert!(h.message().starts_with(HEAD_DOMAIN));
    }

    #[test]
    fn bytes_round_trip_and_bad_input_is_named() {
        let sth = HypervisorKey::from_seed([1; 32]).sign_head(&head(3));
        let b = sth.to_bytes();
        assert_eq!(b.len(), SIGNED_HEAD_LEN);
        assert_eq!(SignedTreeHead::from_bytes(&b), Ok(sth));
        for len in [0, 1, SIGNED_HEAD_LEN - 1, SIGNED_HEAD_LEN + 1] {
            let v: Vec<u8> = b.iter().copied().chain([0]).take(len).collect();
            assert_eq!(
                SignedTreeHead::from_bytes(&v),
                Err(HeadDecodeError::Length {
                    expected: SIGNED_HEAD_LEN,
                    found: len
                })
            );
        }
        let mut v = b;
        v[0] = 2;
        assert_eq!(
            SignedTreeHead::from_bytes(&v),
            Err(HeadDecodeError::Version { found: 2 })
        );
        assert!(PublicKey::from_hex("00").is_err());
        assert!(
            PublicKey::from_hex(&"00".repeat(32)).is_err(),
            "identity point is weak"
        );
    }
}
