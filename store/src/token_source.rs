//! Where a store gets the JWT it logs in with: Vault's Kubernetes auth and
//! AWS's `AssumeRoleWithWebIdentity` both trade a service-account token
//! for the store's own credentials.
//!
//! A [`TokenSource`] is asked for a token at every login, never once at
//! start, so a short-lived token (a projected file the kubelet rewrites, or
//! one the rotation controller requests from the TokenRequest API for the
//! policy's namespace) is always fresh when it is used. [`TokenFile`] is
//! the file-backed source the sidecar uses.
//!
//! Tokens are [`SecretString`]s: an implementation's `Debug` says where its
//! tokens come from, never what they are, and its errors never hold one.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use secrecy::SecretString;

/// Why a source has no token. Its text names what is missing and what to
/// do; never a token.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Gives a JWT to log in with, fresh enough to use now.
#[async_trait]
pub trait TokenSource: Send + Sync + std::fmt::Debug {
    async fn token(&self) -> Result<SecretString, SourceError>;
}

/// A token read from a file at every login (a projected service-account
/// token, which the kubelet replaces before it expires).
#[derive(Debug, Clone)]
pub struct TokenFile(PathBuf);

impl TokenFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

#[async_trait]
impl TokenSource for TokenFile {
    async fn token(&self) -> Result<SecretString, SourceError> {
        Ok(read_secret_file(&self.0).await?)
    }
}

/// A secret read from a file: trimmed, never empty. The error names the
/// file and the problem.
pub(crate) async fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    let text = zeroize::Zeroizing::new(
        tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("{} is empty; expected a token", path.display()));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[tokio::test]
    async fn a_token_file_is_read_at_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let source = TokenFile::new(&path);
        let missing = source.token().await.unwrap_err().to_string();
        assert!(missing.contains("cannot read"), "{missing}");
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(source.token().await.unwrap().expose_secret(), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(source.token().await.unwrap().expose_secret(), "second");
        std::fs::write(&path, " \n").unwrap();
        let empty = source.token().await.unwrap_err().to_string();
        assert!(empty.contains("is empty; expected a token"), "{empty}");
        assert!(!format!("{source:?}").contains("second"));
    }
}
