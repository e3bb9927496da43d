//! Several KEKs under one name: the primary wraps, any unwraps by key id (for
//! KEK rotation).

use std::sync::Arc;

use crate::{DataKey, Error, Kek, Result};

/// Several KEKs under one name: the first (primary) wraps new data keys, any
/// of them unwraps by key id. Use it to read data sealed under an older KEK
/// during a rotation.
#[derive(Clone)]
pub struct Keyring {
    keks: Vec<Arc<dyn Kek>>,
}

impl Keyring {
    pub fn new(primary: Arc<dyn Kek>) -> Self {
        Self {
            keks: vec![primary],
        }
    }

    /// Adds a KEK that can unwrap but does not wrap.
    pub fn with_secondary(mut self, kek: Arc<dyn Kek>) -> Self {
        self.keks.push(kek);
        self
    }
}

impl Kek for Keyring {
    fn key_id(&self) -> &str {
        self.keks[0].key_id()
    }

    fn wrap(&self, dek: &DataKey) -> Result<Vec<u8>> {
        self.keks[0].wrap(dek)
    }

    fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey> {
        for kek in &self.keks {
            if kek.loaded_key_ids().iter().any(|id| id == key_id) {
                return kek.unwrap(key_id, wrapped);
            }
        }
        Err(Error::KeyUnavailable {
            key_id: key_id.to_owned(),
            loaded: self.loaded_key_ids().join(", "),
        })
    }

    fn loaded_key_ids(&self) -> Vec<String> {
        self.keks.iter().flat_map(|k| k.loaded_key_ids()).collect()
    }
}
