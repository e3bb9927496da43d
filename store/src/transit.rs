//! OpenBao/Vault Transit as a key-encryption key.
//!
//! Data keys are wrapped with Transit's `encrypt` and unwrapped with
//! `decrypt`; the key never leaves Vault. The wrapped form is Transit's
//! ciphertext (`vault:v<N>:…`), which names the Transit key version, so
//! after `transit/keys/<name>/rotate` old records still open, and
//! [`LocalStore::rewrap`](crate::LocalStore::rewrap) with the same KEK
//! moves every record to the newest key version.
//!
//! [`Kek`] is synchronous because the local store calls it from blocking
//! code, so this KEK drives its own small runtime. Call it from blocking
//! threads (the local store's calls run on tokio's blocking pool), never
//! from inside an async task.

use std::sync::Arc;

use base64::Engine as _;
use rotor_envelope::{DataKey, Kek};
use zeroize::Zeroizing;

use crate::{VaultConfig, VaultStore};

pub struct TransitKek {
    key_id: String,
    mount: String,
    key: String,
    store: Arc<VaultStore>,
    runtime: tokio::runtime::Runtime,
}

impl TransitKek {
    /// A KEK on Transit key `key` at `mount`, reached with `config`'s
    /// address, TLS and auth (its KV mount is not used).
    pub fn new(config: VaultConfig, mount: &str, key: &str) -> crate::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| crate::Error::Config {
                store: format!("transit:{mount}/{key}"),
                detail: format!("cannot start a runtime: {e}"),
            })?;
        let store = {
            let _guard = runtime.enter();
            Arc::new(VaultStore::new(config)?)
        };
        Ok(Self {
            key_id: format!("transit:{mount}/{key}"),
            mount: mount.to_owned(),
            key: key.to_owned(),
            store,
            runtime,
        })
    }

    fn fail(&self, problem: String) -> rotor_envelope::Error {
        rotor_envelope::Error::Kek {
            key_id: self.key_id.clone(),
            problem,
        }
    }
}

impl Kek for TransitKek {
    fn key_id(&self) -> &str {
        &self.key_id
    }

    fn wrap(&self, dek: &DataKey) -> rotor_envelope::Result<Vec<u8>> {
        let plaintext =
            Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(dek.expose()));
        let (mount, key) = (self.mount.as_str(), self.key.as_str());
        let store = self.store.clone();
        let result = self.runtime.block_on(async move {
            store
                .transit(async |c| {
                    vaultrs::transit::data::encrypt(c, mount, key, &plaintext, None).await
                })
                .await
        });
        match result {
            Ok(resp) => Ok(resp.ciphertext.into_bytes()),
            Err(e) => Err(self.fail(format!("encrypt failed: {e}"))),
        }
    }

    fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> rotor_envelope::Result<DataKey> {
        if key_id != self.key_id {
            return Err(rotor_envelope::Error::KeyUnavailable {
                key_id: key_id.to_owned(),
                loaded: self.key_id.clone(),
            });
        }
        let ciphertext = std::str::from_utf8(wrapped)
            .ok()
            .filter(|c| c.starts_with("vault:v"))
            .ok_or_else(|| rotor_envelope::Error::UnwrapFailed {
                key_id: key_id.to_owned(),
            })?
            .to_owned();
        let (mount, key) = (self.mount.as_str(), self.key.as_str());
        let store = self.store.clone();
        let resp = self
            .runtime
            .block_on(async move {
                store
                    .transit(async |c| {
                        vaultrs::transit::data::decrypt(c, mount, key, &ciphertext, None).await
                    })
                    .await
            })
            .map_err(|e| match e {
                crate::Error::Malformed { .. } => rotor_envelope::Error::UnwrapFailed {
                    key_id: key_id.to_owned(),
                },
                other => self.fail(format!("decrypt failed: {other}")),
            })?;
        let plain = Zeroizing::new(resp.plaintext);
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(plain.as_bytes())
                .map_err(|_| {
                    self.fail("Transit returned a plaintext that is not base64".to_owned())
                })?,
        );
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            self.fail(format!(
                "unwrapped key is {} bytes, expected 32",
                bytes.len()
            ))
        })?;
        Ok(DataKey::from_bytes(key))
    }
}

impl std::fmt::Debug for TransitKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitKek")
            .field("key_id", &self.key_id)
            .finish()
    }
}
