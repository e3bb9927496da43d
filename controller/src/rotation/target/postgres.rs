//! The PostgreSQL target, over `tokio-postgres`, with TLS when the server
//! offers it (or always, with `tls.mode: Require`), verified by
//! [`super::tls`]. `set` logs
//! in as the admin and runs `ALTER ROLE "role" PASSWORD '…'`: PostgreSQL
//! cannot bind a parameter there, so the password goes as a literal quoted
//! by [`super::quote_literal`], and the statement is never logged by Rotor.
//! `test` logs in as the role and runs `SELECT 1`. Every connection and
//! statement is bounded by [`TIMEOUT`]; failures are classified by SQLSTATE,
//! never by the server's message (which could echo a statement).

use std::time::Duration;

use async_trait::async_trait;
use secrecy::ExposeSecret;
use tokio_postgres::Client;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;

use super::tls::{MakeRustls, is_handshake_failure};
use super::{Credential, Target, TargetFailure, quote_ident, quote_literal};

/// The bound on one connection plus its statement.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL server at `host:port`, database `dbname`.
#[derive(Clone)]
pub struct Postgres {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    /// `Prefer` or `Require`.
    pub ssl_mode: SslMode,
    /// Verifies the server's certificate.
    pub tls: std::sync::Arc<rustls::ClientConfig>,
}

/// What a failed login or statement means, `login` being what a refused
/// login is called in the step at hand.
fn classify(e: &tokio_postgres::Error, login: TargetFailure) -> TargetFailure {
    match e.code() {
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            login
        }
        Some(c) if *c == SqlState::UNDEFINED_OBJECT => TargetFailure::NoSuchRole,
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => TargetFailure::NotAllowed,
        Some(_) => TargetFailure::Other,
        None if is_handshake_failure(e) => TargetFailure::TlsFailed,
        None => TargetFailure::Unreachable,
    }
}

impl Postgres {
    async fn connect(
        &self,
        who: &Credential,
        login: TargetFailure,
    ) -> Result<Client, TargetFailure> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .dbname(&self.dbname)
            .user(&who.username)
            .password(who.password.expose_secret())
            .application_name("rotor-rotation")
            .ssl_mode(self.ssl_mode)
            .connect_timeout(TIMEOUT);
        let (client, connection) = config
            .connect(MakeRustls(self.tls.clone()))
            .await
            .map_err(|e| classify(&e, login))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error.code().map_or("io", |c| c.code()), "postgres connection ended");
            }
        });
        Ok(client)
    }

    async fn bounded<T>(
        f: impl std::future::Future<Output = Result<T, TargetFailure>>,
    ) -> Result<T, TargetFailure> {
        tokio::time::timeout(TIMEOUT, f)
            .await
            .unwrap_or(Err(TargetFailure::Unreachable))
    }
}

#[async_trait]
impl Target for Postgres {
    async fn set(&self, admin: &Credential, new: &Credential) -> Result<(), TargetFailure> {
        let literal = quote_literal(&new.password).ok_or(TargetFailure::Other)?;
        Self::bounded(async {
            let client = self.connect(admin, TargetFailure::AdminLoginFailed).await?;
            let sql = zeroize::Zeroizing::new(format!(
                "ALTER ROLE {} PASSWORD {}",
                quote_ident(&new.username),
                &*literal
            ));
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| classify(&e, TargetFailure::AdminLoginFailed))
        })
        .await
    }

    async fn test(&self, new: &Credential) -> Result<(), TargetFailure> {
        Self::bounded(async {
            let client = self.connect(new, TargetFailure::TestLoginFailed).await?;
            client
                .batch_execute("SELECT 1")
                .await
                .map_err(|e| classify(&e, TargetFailure::TestLoginFailed))
        })
        .await
    }
}
