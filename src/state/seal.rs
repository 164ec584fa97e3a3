//! Client-side encryption of the state document: AES-256-GCM with a key from the
//! environment (`encryption_key_env`), so the bucket or disk holding the state never sees
//! the plaintext.
//!
//! A sealed document is JSON, so it is recognisable without the key:
//! `{"skyform_encrypted": "AES-256-GCM", "nonce": "…", "ciphertext": "…"}` (base64). Every
//! write draws a fresh random nonce.

use super::{State, StateError};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::sync::Arc;

const ALGORITHM: &str = "AES-256-GCM";
/// Binds the ciphertext to its purpose: a sealed lock or plan does not open as a state.
const AAD: &[u8] = b"skyform-state-v1";

/// A key for sealing and opening state documents.
pub struct Sealer {
    key: LessSafeKey,
    /// The variable it came from, for messages.
    env: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(${})", self.env)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope {
    skyform_encrypted: String,
    nonce: String,
    ciphertext: String,
}

impl Sealer {
    /// The key in `$var`: 32 bytes, base64-encoded (`openssl rand -base64 32`).
    pub fn from_env(var: &str) -> Result<Sealer, StateError> {
        let value = std::env::var(var).map_err(|_| StateError::Key {
            message: format!("encryption_key_env names ${var}, which is not set"),
        })?;
        Sealer::from_base64(var, value.trim())
    }

    pub fn from_base64(var: &str, text: &str) -> Result<Sealer, StateError> {
        let bad = |why: &str| StateError::Key {
            message: format!("${var} is not a state key: {why}"),
        };
        let bytes = B64.decode(text).map_err(|_| bad("not base64"))?;
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| bad(&format!("{} bytes, not 32", bytes.len())))?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
            env: var.to_string(),
        })
    }

    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, StateError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| StateError::Key {
            message: "no randomness for a nonce".into(),
        })?;
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut data,
            )
            .map_err(|_| StateError::Key {
                message: "sealing the state failed".into(),
            })?;
        let envelope = Envelope {
            skyform_encrypted: ALGORITHM.into(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(&data),
        };
        Ok(serde_json::to_vec_pretty(&envelope).unwrap_or_default())
    }

    fn open(&self, envelope: &Envelope, place: &str) -> Result<Vec<u8>, StateError> {
        let wrong = || StateError::Key {
            message: format!(
                "cannot decrypt the state at {place} with the key in ${}: wrong key, or the document was altered",
                self.env
            ),
        };
        let nonce: [u8; NONCE_LEN] = B64
            .decode(&envelope.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(wrong)?;
        let mut data = B64.decode(&envelope.ciphertext).map_err(|_| wrong())?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut data,
            )
            .map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }
}

fn envelope(bytes: &[u8]) -> Option<Envelope> {
    // Cheap test first: a state document never starts with this key.
    if !begins_sealed(bytes) {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

/// Whether a document's first bytes name the sealed envelope's key.
fn begins_sealed(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(64)]
        .windows(17)
        .any(|w| w == b"skyform_encrypted")
}

/// Whether the file at `path` holds a sealed document.
pub fn is_sealed_file(path: &std::path::Path) -> bool {
    std::fs::read(path).is_ok_and(|b| envelope(&b).is_some())
}

/// How a store turns states into bytes and back.
#[derive(Debug, Clone, Default)]
pub struct Codec {
    /// Opens sealed documents.
    pub decrypt: Option<Arc<Sealer>>,
    /// Seals what is written (plaintext when none).
    pub encrypt: Option<Arc<Sealer>>,
    /// Reads plaintext documents even though a key is configured (while migrating).
    pub accept_plaintext: bool,
}

impl Codec {
    /// Plaintext in and out, or sealed in and out with `sealer`.
    pub fn new(sealer: Option<Arc<Sealer>>) -> Codec {
        Codec {
            accept_plaintext: sealer.is_none(),
            decrypt: sealer.clone(),
            encrypt: sealer,
        }
    }

    pub fn encrypts(&self) -> bool {
        self.encrypt.is_some()
    }

    pub fn encode(&self, state: &State) -> Result<Vec<u8>, StateError> {
        match &self.encrypt {
            Some(s) => s.seal(&state.to_json()),
            None => Ok(state.to_json()),
        }
    }

    /// Reads a document; `place` names it in errors.
    /// Whether a document that begins with `head` is plain JSON that this codec reads as it
    /// is (not sealed, and no key demands it sealed).
    pub fn reads_as_plaintext(&self, head: &[u8]) -> bool {
        !begins_sealed(head) && (self.decrypt.is_none() || self.accept_plaintext)
    }

    pub fn decode(&self, bytes: &[u8], place: &str) -> Result<State, StateError> {
        match (envelope(bytes), &self.decrypt) {
            (Some(e), Some(s)) => State::from_json(&s.open(&e, place)?),
            (Some(_), None) => Err(StateError::Key {
                message: format!(
                    "the state at {place} is encrypted, and the configuration gives no key"
                ),
            }),
            (None, Some(s)) if !self.accept_plaintext => Err(StateError::Key {
                message: format!(
                    "the state at {place} is not encrypted, but the configuration says it is (encryption_key_env = \"{}\")",
                    s.env
                ),
            }),
            (None, _) => State::from_json(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Arc<Sealer> {
        Arc::new(Sealer::from_base64("K", &B64.encode([byte; 32])).unwrap())
    }

    #[test]
    fn round_trips_and_hides_the_plaintext() {
        let codec = Codec::new(Some(key(1)));
        let mut s = State::new();
        s.serial = 42;
        let bytes = codec.encode(&s).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(&s.lineage));
        assert_eq!(codec.decode(&bytes, "x").unwrap(), s);
        // A fresh nonce each time.
        assert_ne!(codec.encode(&s).unwrap(), bytes);
    }

    #[test]
    fn wrong_missing_or_absent_keys_are_clear_errors() {
        let s = State::new();
        let sealed = Codec::new(Some(key(1))).encode(&s).unwrap();
        let err = Codec::new(Some(key(2)))
            .decode(&sealed, "s3://b/k")
            .unwrap_err();
        assert!(err.to_string().contains("wrong key"), "{err}");
        let err = Codec::new(None).decode(&sealed, "s3://b/k").unwrap_err();
        assert!(err.to_string().contains("is encrypted"), "{err}");
        let plain = s.to_json();
        let err = Codec::new(Some(key(1)))
            .decode(&plain, "s3://b/k")
            .unwrap_err();
        assert!(err.to_string().contains("not encrypted"), "{err}");
        let migrating = Codec {
            accept_plaintext: true,
            ..Codec::new(Some(key(1)))
        };
        assert_eq!(migrating.decode(&plain, "x").unwrap(), s);
        let err = Sealer::from_base64("K", "c2hvcnQ=").unwrap_err();
        assert!(err.to_string().contains("5 bytes, not 32"), "{err}");
        let err = Sealer::from_env("SKYFORM_TEST_SURELY_UNSET_KEY").unwrap_err();
        assert!(err.to_string().contains("which is not set"), "{err}");
    }
}
