//! The one store trait that the sidecar and the rotation controller share.

use std::time::SystemTime;

use async_trait::async_trait;
use rotor_envelope::Plaintext;

use crate::{Result, Selector, VersionId, WriteAs};

/// A value read from a store, with its version. No `Debug`: it holds the
/// value.
pub struct Fetched {
    pub version: VersionId,
    /// When the store made this version, where the store says.
    pub created_at: Option<SystemTime>,
    pub value: Plaintext,
}

/// A secret store: the local store, Vault/OpenBao KV v2, AWS Secrets
/// Manager or Kubernetes Secrets. Every store has the same stage model:
/// CURRENT, PENDING and PREVIOUS (see the crate docs for what each means on
/// each store).
#[async_trait]
pub trait Store: Send + Sync {
    /// What the store is, for logs and errors: `local:/path`,
    /// `vault:https://…/secret`, …. Never a credential.
    fn describe(&self) -> String;

    /// Reads a version's value.
    async fn read(&self, name: &str, selector: &Selector) -> Result<Fetched>;

    /// The cheap change check: the id of the CURRENT version, without the
    /// value where the store allows.
    async fn current_version(&self, name: &str) -> Result<VersionId>;

    /// Writes a new version, labelled CURRENT or PENDING.
    async fn write(&self, name: &str, value: &[u8], write_as: WriteAs) -> Result<VersionId>;

    /// Makes `version` CURRENT; the old CURRENT becomes PREVIOUS.
    /// Promoting the CURRENT version again changes nothing.
    async fn promote(&self, name: &str, version: &VersionId) -> Result<()>;

    /// Deletes a version that is not CURRENT.
    async fn retire(&self, name: &str, version: &VersionId) -> Result<()>;

    /// A stream that yields when the secret may have changed, for stores
    /// that can watch (Kubernetes). `None`: poll.
    fn changes(&self, _name: &str) -> Option<futures_util::stream::BoxStream<'static, ()>> {
        None
    }
}
