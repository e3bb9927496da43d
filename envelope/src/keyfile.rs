//! A KEK held in a local file of exactly 32 random bytes.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::aead::LessSafeKey;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::aead::{self, KEY_LEN, NONCE_SIZE, TAG_LEN};
use crate::{DataKey, Error, Kek, Result};

const WRAP_AAD: &[u8] = b"rotor/dek/v1";
const WRAPPED_LEN: usize = NONCE_SIZE + KEY_LEN + TAG_LEN;

/// A key-encryption key read from a key file.
///
/// Its key id is `file:` followed by the first 16 hex digits of a SHA-256
/// over the key, so the same file always yields the same id and another key
/// yields another id. The wrapped form of a data key is
/// `nonce (12) || AES-256-GCM(kek, dek) (32) || tag (16)`, with the key id in
/// the AAD.
pub struct KeyFileKek {
    key_id: String,
    key: LessSafeKey,
    rng: SystemRandom,
}

impl KeyFileKek {
    /// Builds a KEK from raw key bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let id = digest::digest(
            &digest::SHA256,
            &[b"rotor/kek-id/v1".as_slice(), bytes].concat(),
        );
        let key_id = format!(
            "file:{}",
            id.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Self {
            key_id,
            key: aead::key(bytes),
            rng: SystemRandom::new(),
        }
    }

    /// Reads a key file: exactly 32 bytes.
    pub fn load(path: &Path) -> Result<Self> {
        let file_error = |problem: String, source| Error::KeyFile {
            path: path.to_owned(),
            problem,
            source,
        };
        let mut file = std::fs::File::open(path).map_err(|e| {
            let problem = if e.kind() == std::io::ErrorKind::NotFound {
                "does not exist; create one with `rotor keygen --out FILE`".to_owned()
            } else {
                "cannot be read".to_owned()
            };
            file_error(problem, Some(e))
        })?;
        let mut buf = Zeroizing::new(Vec::with_capacity(KEY_LEN + 1));
        (&mut file)
            .take(KEY_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| file_error("cannot be read".to_owned(), Some(e)))?;
        if buf.len() != KEY_LEN {
            return Err(file_error(
                format!(
                    "is {}{} bytes long; expected exactly {KEY_LEN} random bytes as written by `rotor keygen`",
                    buf.len(),
                    if buf.len() > KEY_LEN { " or more" } else { "" }
                ),
                None,
            ));
        }
        if let Ok(meta) = file.metadata()
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{:04o}", meta.permissions().mode() & 0o7777),
                "key file is readable by group or others; expected mode 0600"
            );
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&buf);
        Ok(Self::from_bytes(&key))
    }

    /// Writes a new random key to `path` with mode 0600. Refuses to replace
    /// an existing file unless `overwrite` is set.
    pub fn generate(path: &Path, overwrite: bool) -> Result<Self> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(&mut key[..])
            .map_err(|_| Error::Random)?;
        let mut options = OpenOptions::new();
        options.write(true).mode(0o600);
        if overwrite {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let key_path = PathBuf::from(path);
        let mut file = options.open(path).map_err(|e| {
            let problem = if e.kind() == std::io::ErrorKind::AlreadyExists {
                "already exists; refusing to overwrite a key (pass --force to replace it, which makes data sealed under it unreadable)".to_owned()
            } else {
                "cannot be created".to_owned()
            };
            Error::KeyFile {
                path: key_path.clone(),
                problem,
                source: Some(e),
            }
        })?;
        // `mode` applies only on creation; make sure a replaced file is 0600 too.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|()| file.write_all(&key[..]))
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::KeyFile {
                path: key_path,
                problem: "cannot be written".to_owned(),
                source: Some(e),
            })?;
        Ok(Self::from_bytes(&key))
    }
}

impl Kek for KeyFileKek {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn wrap(&self, dek: &DataKey) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_SIZE];
        self.rng.fill(&mut nonce).map_err(|_| Error::Random)?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(&nonce);
        let mut body = Vec::with_capacity(KEY_LEN + TAG_LEN);
        body.extend_from_slice(dek.expose());
        aead::seal_in_place(&self.key, nonce, &self.aad(), &mut body)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey> {
        if key_id != self.key_id {
            return Err(Error::KeyUnavailable {
                key_id: key_id.to_owned(),
                loaded: self.key_id.clone(),
            });
        }
        if wrapped.len() != WRAPPED_LEN {
            return Err(Error::UnwrapFailed {
                key_id: key_id.to_owned(),
            });
        }
        let nonce: [u8; NONCE_SIZE] = wrapped[..NONCE_SIZE].try_into().expect("length checked");
        let mut body = Zeroizing::new(wrapped[NONCE_SIZE..].to_vec());
        let n = aead::open_in_place(&self.key, nonce, &self.aad(), &mut body).ok_or_else(|| {
            Error::UnwrapFailed {
                key_id: key_id.to_owned(),
            }
        })?;
        debug_assert_eq!(n, KEY_LEN);
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&body[..KEY_LEN]);
        Ok(DataKey::from_bytes(key))
    }
}

impl KeyFileKek {
    fn aad(&self) -> Vec<u8> {
        [WRAP_AAD, self.key_id.as_bytes()].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_writes_32_bytes_mode_0600_and_reloads_with_same_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let kek = KeyFileKek::generate(&path, false).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 32);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let again = KeyFileKek::load(&path).unwrap();
        assert_eq!(kek.key_id(), again.key_id());
        assert!(kek.key_id().starts_with("file:"));
    }

    #[test]
    fn generate_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        KeyFileKek::generate(&path, false).unwrap();
        let err = KeyFileKek::generate(&path, false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
        KeyFileKek::generate(&path, true).unwrap();
    }

    #[test]
    fn load_rejects_wrong_length_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        std::fs::write(&path, b"short").unwrap();
        let err = KeyFileKek::load(&path).err().unwrap().to_string();
        assert!(
            err.contains("is 5 bytes long; expected exactly 32"),
            "{err}"
        );
        std::fs::write(&path, [0u8; 40]).unwrap();
        let err = KeyFileKek::load(&path).err().unwrap().to_string();
        assert!(err.contains("33 or more bytes"), "{err}");
        let err = KeyFileKek::load(&dir.path().join("nope"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn wrap_unwrap_round_trip_and_refusals() {
        let a = KeyFileKek::from_bytes(&[1u8; 32]);
        let b = KeyFileKek::from_bytes(&[2u8; 32]);
        let dek = DataKey::from_bytes([7u8; 32]);
        let wrapped = a.wrap(&dek).unwrap();
        assert_eq!(a.unwrap(a.key_id(), &wrapped).unwrap().expose(), &[7u8; 32]);
        let err = b.unwrap(a.key_id(), &wrapped).err().unwrap();
        assert!(matches!(err, Error::KeyUnavailable { .. }), "{err}");
        // Same id claimed, wrong key material: fails authentication.
        let err = b.unwrap(b.key_id(), &wrapped).err().unwrap();
        assert!(matches!(err, Error::UnwrapFailed { .. }), "{err}");
    }
}
