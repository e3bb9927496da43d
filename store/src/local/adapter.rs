//! The local store behind the async [`Store`](crate::Store) trait.

use zeroize::Zeroizing;

use super::LocalStore;
use crate::{Result, Selector, VersionId, WriteAs};

/// The local store behind the shared trait. The version check runs inline
/// while the file is unchanged (one `stat`); everything else, and a check
/// that finds a changed file, runs on tokio's blocking pool: verifying a
/// file reads all of it and calls the KEK (maybe over the network), and
/// writes `fsync`.
#[async_trait::async_trait]
impl crate::Store for LocalStore {
    fn describe(&self) -> String {
        format!("local:{}", self.0.path.display())
    }

    async fn read(&self, name: &str, selector: &Selector) -> Result<crate::Fetched> {
        let (store, name, selector) = (self.clone(), name.to_owned(), selector.clone());
        blocking(move || store.get(&name, selector))
            .await
            .map(|v| crate::Fetched {
                version: v.meta.version.into(),
                created_at: Some(v.meta.created_at),
                value: v.value,
            })
    }

    async fn current_version(&self, name: &str) -> Result<VersionId> {
        if let Some(loaded) = self.fresh() {
            return self
                .find(&loaded.state, name, Selector::Current)
                .map(|v| v.number.into());
        }
        let (store, name) = (self.clone(), name.to_owned());
        blocking(move || store.current_number(&name))
            .await
            .map(VersionId::from)
    }

    async fn write(&self, name: &str, value: &[u8], write_as: WriteAs) -> Result<VersionId> {
        let (store, name) = (self.clone(), name.to_owned());
        let value = Zeroizing::new(value.to_vec());
        blocking(move || store.put(&name, &value, write_as))
            .await
            .map(|m| m.version.into())
    }

    async fn promote(&self, name: &str, version: &VersionId) -> Result<()> {
        let (store, name, version) = (self.clone(), name.to_owned(), version.clone());
        blocking(move || {
            let n = store.version_number(&name, &version)?;
            store.promote_number(&name, n).map(|_| ())
        })
        .await
    }

    async fn retire(&self, name: &str, version: &VersionId) -> Result<()> {
        let (store, name, version) = (self.clone(), name.to_owned(), version.clone());
        blocking(move || {
            let n = store.version_number(&name, &version)?;
            store.retire_number(&name, n)
        })
        .await
    }
}

impl LocalStore {
    fn version_number(&self, name: &str, id: &VersionId) -> Result<u64> {
        let loaded = self.snapshot()?;
        let secret = self.secret(&loaded.state, name)?;
        self.number(name, secret, id)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("local store task panicked")
}
