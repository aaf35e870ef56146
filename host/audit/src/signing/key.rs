//! The hypervisor's Ed25519 key on disk and its exported public key.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use super::{SignedTreeHead, TreeHead};

const SECRET_FILE: &str = "signing-key";
const PUBLIC_FILE: &str = "public-key";

/// Loading or creating the hypervisor key failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file-system operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A key file does not hold 64 hex digits (and an optional newline).
    #[error("malformed key file {path}: {reason}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The secret key file can be read by group or others.
    #[error(
        "secret key file {path} has mode {mode:o}; it must not be readable by group or others (chmod 600)"
    )]
    InsecurePermissions {
        /// The secret key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `public-key` does not belong to `signing-key`.
    #[error("public key file {path} holds {found}, but the secret key's public key is {expected}")]
    PublicKeyMismatch {
        /// The public key file.
        path: PathBuf,
        /// The public key derived from the secret.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// `public-key` exists but `signing-key` does not: refuse to silently rotate keys.
    #[error(
        "public key file {path} exists but its secret key does not; restore the secret or remove the public key to rotate"
    )]
    PublicKeyWithoutSecret {
        /// The public key file.
        path: PathBuf,
    },
    /// The OS random number generator failed.
    #[error("cannot draw a key seed from OS randomness: {0}")]
    Randomness(#[source] getrandom::Error),
}

/// A string that is not a valid Ed25519 public key in hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an Ed25519 public key ({reason}): {input:?}")]
pub struct PublicKeyParseError {
    /// The input (at most 80 characters of it).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The hypervisor's Ed25519 public key, which verifies its signed tree heads.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub VerifyingKey);

impl PublicKey {
    /// Lower-case hex, 64 digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// Parses 64 hex digits (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`PublicKeyParseError`] if `s` is not 64 hex digits, not a curve point,
    /// or a weak (small-order) key that [`SignedTreeHead::verify`] would reject anyway.
    pub fn from_hex(s: &str) -> Result<PublicKey, PublicKeyParseError> {
        let err = |reason| PublicKeyParseError {
            input: s.chars().take(80).collect(),
            reason,
        };
        let mut b = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut b).map_err(|_| err("not 64 hex digits"))?;
        let key = VerifyingKey::from_bytes(&b).map_err(|_| err("not a curve point"))?;
        if key.is_weak() {
            return Err(err("weak key of small order"));
        }
        Ok(PublicKey(key))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// The hypervisor's Ed25519 signing key. Its `Debug` shows only the public key.
pub struct HypervisorKey {
    pub(super) signing: SigningKey,
}

impl fmt::Debug for HypervisorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HypervisorKey(public: {})", self.public_key())
    }
}

impl HypervisorKey {
    /// A key from a 32-byte secret seed (for tests and deterministic setups).
    pub fn from_seed(seed: [u8; 32]) -> HypervisorKey {
        HypervisorKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// Loads the key from `dir/signing-key`, or creates it (and `dir`) from OS
    /// randomness if absent, then checks or writes `dir/public-key`.
    ///
    /// Creation writes a temporary file (mode 0600, `create_new`), fsyncs it and
    /// hard-links it into place, which fails rather than overwrites if another
    /// process created the key first; the loser then loads the winner's key.
    ///
    /// # Errors
    /// [`KeyError`] naming the path: I/O failures, a malformed key file, a
    /// secret readable by group/others (unix), a `public-key` that does not match
    /// the secret or exists without one, or failing OS randomness.
    pub fn load_or_create(dir: &Path) -> Result<HypervisorKey, KeyError> {
        let secret = dir.join(SECRET_FILE);
        let public = dir.join(PUBLIC_FILE);
        let key = if secret.exists() {
            Self::load_secret(&secret)?
        } else if public.exists() {
            return Err(KeyError::PublicKeyWithoutSecret { path: public });
        } else {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
            let mut seed = Zeroizing::new([0u8; 32]);
            getrandom::fill(&mut seed[..]).map_err(KeyError::Randomness)?;
            let hex = Zeroizing::new(format!("{}\n", hex::encode(*seed)));
            if publish_file(dir, SECRET_FILE, hex.as_bytes(), false)? {
                HypervisorKey::from_seed(*seed)
            } else {
                Self::load_secret(&secret)?
            }
        };
        let expected = key.public_key().to_hex();
        match fs::read_to_string(&public) {
            Ok(found) if found.trim() == expected => {}
            Ok(found) => {
                let found = found.trim().chars().take(80).collect();
                return Err(KeyError::PublicKeyMismatch {
                    path: public,
                    expected,
                    found,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                publish_file(dir, PUBLIC_FILE, format!("{expected}\n").as_bytes(), true)?;
            }
            Err(e) => return Err(io_err("read", &public)(e)),
        }
        Ok(key)
    }

    fn load_secret(path: &Path) -> Result<HypervisorKey, KeyError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(path)
                .map_err(io_err("stat", path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(KeyError::InsecurePermissions {
                    path: path.to_owned(),
                    mode: mode & 0o7777,
                });
            }
        }
        let malformed = |reason: &str| KeyError::Malformed {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let bytes = Zeroizing::new(fs::read(path).map_err(io_err("read", path))?);
        let digits = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        if digits.len() != 64 {
            return Err(malformed(&format!(
                "expected 64 hex digits, found {} bytes",
                digits.len()
            )));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(digits, &mut seed[..]).map_err(|_| malformed("not hex digits"))?;
        Ok(HypervisorKey::from_seed(*seed))
    }

    /// The public key that verifies this key's signatures.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// Signs `head` (over [`TreeHead::message`]).
    pub fn sign_head(&self, head: &TreeHead) -> SignedTreeHead {
        SignedTreeHead {
            head: *head,
            signature: self.signing.sign(&head.message()).to_bytes(),
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> KeyError + 'a {
    move |source| KeyError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Writes `dir/name` crash-safely: temp file (mode 0600, `create_new`), fsync,
/// then hard link (`replace == false`: fails if the target exists, returns
/// `false`) or rename, then fsync of `dir`. Returns whether this call wrote it.
fn publish_file(dir: &Path, name: &str, contents: &[u8], replace: bool) -> Result<bool, KeyError> {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(KeyError::Randomness)?;
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        hex::encode(nonce)
    ));
    let target = dir.join(name);
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = (|| {
        let mut f = opts.open(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(contents).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        if replace {
            fs::rename(&tmp, &target).map_err(io_err("rename into place", &target))?;
            return Ok(true);
        }
        match fs::hard_link(&tmp, &target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("link into place", &target)(e)),
        }
    })();
    // The temp name is ours alone; after a rename it is already gone.
    let _ = fs::remove_file(&tmp);
    let written = written?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_key_reloads_with_the_same_public_key_and_exports_it() {
        let dir = tempfile::tempdir().unwrap();
        let kdir = dir.path().join("keys");
        let a = HypervisorKey::load_or_create(&kdir).unwrap();
        let b = HypervisorKey::load_or_create(&kdir).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let exported = fs::read_to_string(kdir.join(PUBLIC_FILE)).unwrap();
        assert_eq!(PublicKey::from_hex(&exported).unwrap(), a.public_key());
        assert!(!format!("{a:?}").contains(&hex::encode(a.signing.to_bytes())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(kdir.join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            fs::read_dir(&kdir).unwrap().count(),
            2,
            "no temp files left behind"
        );
    }

    #[test]
    fn corrupted_or_short_key_file_is_a_typed_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        HypervisorKey::load_or_create(dir.path()).unwrap();
        let secret = dir.path().join(SECRET_FILE);
        for bad in [&b"abcd\n"[..], &[b'z'; 64][..], b""] {
            fs::write(&secret, bad).unwrap();
            match HypervisorKey::load_or_create(dir.path()) {
                Err(e @ KeyError::Malformed { .. }) => {
                    assert!(e.to_string().contains(&secret.display().to_string()), "{e}");
                }
                other => panic!("expected Malformed, got {other:?}"),
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn secret_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        HypervisorKey::load_or_create(dir.path()).unwrap();
        let secret = dir.path().join(SECRET_FILE);
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
        let err = HypervisorKey::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, KeyError::InsecurePermissions { mode: 0o644, .. }),
            "{err}"
        );
    }

    #[test]
    fn public_key_file_must_match_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        HypervisorKey::load_or_create(dir.path()).unwrap();
        let other = HypervisorKey::from_seed([9; 32]).public_key().to_hex();
        fs::write(dir.path().join(PUBLIC_FILE), &other).unwrap();
        let err = HypervisorKey::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(&err, KeyError::PublicKeyMismatch { found, .. } if *found == other));
        fs::remove_file(dir.path().join(SECRET_FILE)).unwrap();
        let err = HypervisorKey::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, KeyError::PublicKeyWithoutSecret { .. }));
    }

    #[test]
    fn racing_creators_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<PublicKey> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        HypervisorKey::load_or_create(dir.path())
                            .unwrap()
                            .public_key()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]));
    }
}
