//! Data keys and the key-encryption-key trait that wraps and unwraps them.

use zeroize::Zeroizing;

use crate::Result;
use crate::aead::KEY_LEN;

/// A 256-bit data key. Zeroized on drop; no `Debug`, no `Clone`.
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

impl DataKey {
    /// Wraps raw key bytes (taken by value and zeroized with the key).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A fresh key from the system's random number generator.
    pub fn generate(rng: &dyn ring::rand::SecureRandom) -> Result<Self> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill(&mut key[..]).map_err(|_| crate::Error::Random)?;
        Ok(Self(key))
    }

    /// The key bytes, for a [`Kek`] implementation to wrap.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// A key-encryption key: wraps and unwraps data keys.
///
/// Implementations: [`KeyFileKek`](crate::KeyFileKek) (a local 32-byte key
/// file), [`Keyring`](crate::Keyring) (several KEKs, the first one wraps), and
/// OpenBao/Vault Transit in the stores crate.
///
/// The trait is synchronous: the local store calls it from blocking code. A
/// network-backed KEK bridges to its async client internally.
pub trait Kek: Send + Sync {
    /// The id recorded next to every data key this KEK wraps.
    fn key_id(&self) -> &str;

    /// Wraps `dek` under this KEK. The result is opaque and stored verbatim.
    fn wrap(&self, dek: &DataKey) -> Result<Vec<u8>>;

    /// Unwraps a data key that was wrapped under `key_id`. Returns
    /// [`Error::KeyUnavailable`](crate::Error::KeyUnavailable) when this KEK
    /// does not hold `key_id`.
    fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey>;

    /// Every key id this KEK can unwrap, for error messages.
    fn loaded_key_ids(&self) -> Vec<String> {
        vec![self.key_id().to_owned()]
    }
}

impl<T: Kek + ?Sized> Kek for std::sync::Arc<T> {
    fn key_id(&self) -> &str {
        (**self).key_id()
    }
    fn wrap(&self, dek: &DataKey) -> Result<Vec<u8>> {
        (**self).wrap(dek)
    }
    fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey> {
        (**self).unwrap(key_id, wrapped)
    }
    fn loaded_key_ids(&self) -> Vec<String> {
        (**self).loaded_key_ids()
    }
}
