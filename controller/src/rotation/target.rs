//! Rotation targets: the system that checks the secret (a database), changed
//! by the rotation before any consumer sees the new value. A [`Target`] has
//! the steps of AWS's rotation functions: [`Target::set`] the pending
//! credential, [`Target::test`] a login with it, and [`Target::finish`]
//! after promotion. The state machine drives them in its `Setting` and
//! `Testing` phases and tests them with a fake; [`postgres`] is the real
//! PostgreSQL target.
//!
//! With a target the secret's value is a JSON object, [`DbSecret`], as
//! AWS's database secrets are, so `rotor.dev/template.*` can build a
//! connection string from it.

pub mod https;
pub mod postgres;
pub mod tls;

use std::fmt;

use async_trait::async_trait;
use rotor_contract::api::{
    PolicyReason, PostgresStrategy, PostgresTarget, PostgresTlsMode, Target as TargetCrd,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// A role and its password. No `Debug` derive: it prints the role only.
pub struct Credential {
    pub username: String,
    pub password: SecretString,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"[REDACTED]")
            .finish()
    }
}

/// Why a target step failed. Never holds a password: the PostgreSQL
/// target reports the server's SQLSTATE class, not its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetFailure {
    /// No connection to the server (refused, timed out, closed).
    Unreachable,
    /// The admin credential was refused.
    AdminLoginFailed,
    /// The role to change does not exist.
    NoSuchRole,
    /// The admin role may not change the role.
    NotAllowed,
    /// A login with the new credential was refused.
    TestLoginFailed,
    /// The admin secret is missing or not `{"username","password"}`.
    BadAdminSecret,
    /// TLS failed: the server's certificate did not verify against the
    /// target's CA (or does not name its host), or the handshake broke off.
    TlsFailed,
    /// HTTPS: no token to call with (standalone without
    /// `--https-target-token-file`, or the TokenRequest failed).
    NoIdentity,
    /// HTTPS: the receiver answered this status, not 2xx.
    Rejected(u16),
    /// HTTPS: no answer within the target's timeout.
    TimedOut,
    /// Anything else the server answered.
    Other,
}

impl TargetFailure {
    /// The `Degraded` condition's reason.
    pub fn condition(self) -> PolicyReason {
        match self {
            TargetFailure::Unreachable => PolicyReason::TargetUnreachable,
            TargetFailure::AdminLoginFailed => PolicyReason::AdminLoginFailed,
            TargetFailure::NoSuchRole => PolicyReason::NoSuchRole,
            TargetFailure::NotAllowed => PolicyReason::NotAllowed,
            TargetFailure::TestLoginFailed => PolicyReason::TestLoginFailed,
            TargetFailure::BadAdminSecret => PolicyReason::BadAdminSecret,
            TargetFailure::TlsFailed => PolicyReason::TargetTlsFailed,
            TargetFailure::NoIdentity => PolicyReason::TargetNoIdentity,
            TargetFailure::Rejected(_) => PolicyReason::TargetRejected,
            TargetFailure::TimedOut => PolicyReason::TargetTimedOut,
            TargetFailure::Other => PolicyReason::TargetError,
        }
    }

    /// The Event/condition reason and metric label, as a string.
    pub fn reason(self) -> &'static str {
        self.condition().as_str()
    }
}

impl fmt::Display for TargetFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetFailure::Rejected(status) => write!(f, "{} (HTTP {status})", self.reason()),
            _ => f.write_str(self.reason()),
        }
    }
}

/// The system whose credential a rotation changes.
#[async_trait]
pub trait Target: Send + Sync {
    /// Sets `new.password` on role `new.username`, logged in as `admin`.
    async fn set(&self, admin: &Credential, new: &Credential) -> Result<(), TargetFailure>;
    /// Logs in as `new` and runs a query.
    async fn test(&self, new: &Credential) -> Result<(), TargetFailure>;
    /// After the grace period (alternatingUsers): gives the role no longer
    /// in use, `retired`, a password nobody holds. Sessions already open
    /// stay open; new logins with the old password fail.
    async fn finish(&self, admin: &Credential, retired: &Credential) -> Result<(), TargetFailure> {
        self.set(admin, retired).await
    }
}

/// How a PostgreSQL target changes passwords.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Two roles; each rotation changes the one not in use.
    AlternatingUsers([String; 2]),
    /// One role, changed in place.
    SingleUser(String),
}

impl Strategy {
    /// The role the next version uses, given the role of the current one.
    pub fn next_role(&self, current: Option<&str>) -> &str {
        match self {
            Strategy::AlternatingUsers([a, b]) => {
                if current == Some(a.as_str()) {
                    b
                } else {
                    a
                }
            }
            Strategy::SingleUser(role) => role,
        }
    }
}

/// A checked `spec.target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub admin_secret_name: String,
    pub strategy: Strategy,
    pub tls_mode: PostgresTlsMode,
    /// PEM CA certificates, checked; `None`: the public web's roots.
    pub ca_bundle: Option<String>,
}

impl TargetSpec {
    /// The target to connect to.
    pub fn connect(&self) -> Result<postgres::Postgres> {
        let tls = tls::client_config(
            "spec.target.postgresql.tls.caBundle",
            self.ca_bundle.as_deref(),
        )
        .map_err(Error::TargetValue)?;
        Ok(postgres::Postgres {
            host: self.host.clone(),
            port: self.port,
            dbname: self.dbname.clone(),
            ssl_mode: match self.tls_mode {
                PostgresTlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                PostgresTlsMode::Require => tokio_postgres::config::SslMode::Require,
            },
            tls,
        })
    }
}

/// A checked `spec.target`: the system a rotation changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyTarget {
    Postgres(TargetSpec),
    Https(https::HttpsSpec),
}

impl PolicyTarget {
    /// The checked target, or every problem, each naming its field.
    pub fn check(t: &TargetCrd, out: &mut Vec<String>) -> Option<Self> {
        match t {
            TargetCrd {
                postgresql: Some(pg),
                https: None,
            } => TargetSpec::check(pg, out).map(PolicyTarget::Postgres),
            TargetCrd {
                postgresql: None,
                https: Some(h),
            } => https::HttpsSpec::check(h, out).map(PolicyTarget::Https),
            _ => {
                out.push("spec.target: set exactly one of postgresql and https".to_owned());
                None
            }
        }
    }
}

/// PostgreSQL's limit on identifiers.
const MAX_ROLE: usize = 63;

fn check_role(field: &str, role: &str, out: &mut Vec<String>) {
    if role.is_empty() || role.len() > MAX_ROLE || role.contains('\0') {
        out.push(format!(
            "{field} {role:?}: expected a role name of 1-{MAX_ROLE} bytes without NUL"
        ));
    }
}

impl TargetSpec {
    /// The checked target, or every problem, each naming its field.
    pub fn check(t: &PostgresTarget, out: &mut Vec<String>) -> Option<Self> {
        let f = "spec.target.postgresql";
        if t.host.is_empty() || t.host.len() > 253 {
            out.push(format!("{f}.host {:?}: expected 1-253 characters", t.host));
        }
        let port = u16::try_from(t.port).ok().filter(|p| *p > 0);
        if port.is_none() {
            out.push(format!("{f}.port {}: expected 1 to 65535", t.port));
        }
        if t.dbname.is_empty() || t.dbname.len() > MAX_ROLE {
            out.push(format!(
                "{f}.dbname {:?}: expected 1-63 characters",
                t.dbname
            ));
        }
        if t.admin_secret_name.is_empty() {
            out.push(format!(
                "{f}.adminSecretName: expected a secret name in the same store"
            ));
        }
        let strategy = match &t.strategy {
            PostgresStrategy {
                alternating_users: Some(a),
                single_user: None,
            } => {
                let field = format!("{f}.strategy.alternatingUsers.roles");
                match a.roles.as_slice() {
                    [x, y] if x != y => {
                        check_role(&field, x, out);
                        check_role(&field, y, out);
                        Some(Strategy::AlternatingUsers([x.clone(), y.clone()]))
                    }
                    _ => {
                        out.push(format!("{field}: expected two different role names"));
                        None
                    }
                }
            }
            PostgresStrategy {
                alternating_users: None,
                single_user: Some(s),
            } => {
                check_role(&format!("{f}.strategy.singleUser.role"), &s.role, out);
                Some(Strategy::SingleUser(s.role.clone()))
            }
            _ => {
                out.push(format!(
                    "{f}.strategy: set exactly one of alternatingUsers and singleUser"
                ));
                None
            }
        };
        let tls = t.tls.clone().unwrap_or_default();
        let bundle_ok = match &tls.ca_bundle {
            Some(pem) => tls::parse_bundle(&format!("{f}.tls.caBundle"), pem)
                .map_err(|e| out.push(e))
                .is_ok(),
            None => true,
        };
        Some(Self {
            host: t.host.clone(),
            port: port?,
            dbname: t.dbname.clone(),
            admin_secret_name: t.admin_secret_name.clone(),
            strategy: strategy?,
            tls_mode: tls.mode,
            ca_bundle: tls.ca_bundle.filter(|_| bundle_ok),
        })
        .filter(|_| bundle_ok)
    }
}

/// The secret's value with a target: AWS's database secret shape. No
/// `Debug`: it holds the password.
#[derive(Serialize, Deserialize)]
pub struct DbSecret {
    pub username: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

impl Drop for DbSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

impl DbSecret {
    /// The JSON bytes to store.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>> {
        serde_json::to_vec(self)
            .map(Zeroizing::new)
            .map_err(|e| Error::TargetValue(e.to_string()))
    }

    /// Parses a stored value; the error never quotes it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::TargetValue(format!(
                "expected a JSON object with username, password, host, port, dbname ({} at line {} column {})",
                match e.classify() {
                    serde_json::error::Category::Data => "wrong field",
                    _ => "not JSON",
                },
                e.line(),
                e.column()
            ))
        })
    }

    /// The role and password.
    pub fn credential(&self) -> Credential {
        Credential {
            username: self.username.clone(),
            password: SecretString::from(self.password.clone()),
        }
    }
}

/// The admin secret: `{"username", "password"}`. No `Debug`.
#[derive(Deserialize)]
struct AdminSecret {
    username: String,
    password: String,
}

impl Drop for AdminSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

/// Parses the admin secret's value.
pub fn admin_credential(bytes: &[u8]) -> Result<Credential, TargetFailure> {
    let a: AdminSecret =
        serde_json::from_slice(bytes).map_err(|_| TargetFailure::BadAdminSecret)?;
    Ok(Credential {
        username: a.username.clone(),
        password: SecretString::from(a.password.clone()),
    })
}

/// `password` as a PostgreSQL string literal: wrapped in single quotes,
/// each single quote doubled (standard-conforming strings, PostgreSQL's
/// default since 9.1). A password with a backslash or NUL is refused: the
/// generators a target accepts never produce them.
pub fn quote_literal(password: &SecretString) -> Option<Zeroizing<String>> {
    let p = password.expose_secret();
    if p.contains('\\') || p.contains('\0') {
        return None;
    }
    let mut out = Zeroizing::new(String::with_capacity(p.len() + 2));
    out.push('\'');
    for c in p.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    Some(out)
}

/// `name` as a PostgreSQL identifier: in double quotes, each double quote
/// doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_identifiers_are_quoted_by_the_standard_rules() {
        let q = |s: &str| quote_literal(&SecretString::from(s.to_owned())).map(|z| z.to_string());
        assert_eq!(q("ab'c").as_deref(), Some("'ab''c'"));
        assert_eq!(
            q("'; DROP ROLE x; --").as_deref(),
            Some("'''; DROP ROLE x; --'")
        );
        assert_eq!(q("a\\b"), None, "backslashes are refused");
        assert_eq!(quote_ident("app\"x"), "\"app\"\"x\"");
    }

    #[test]
    fn alternating_users_picks_the_role_not_in_use() {
        let s = Strategy::AlternatingUsers(["a".into(), "b".into()]);
        assert_eq!(s.next_role(None), "a");
        assert_eq!(s.next_role(Some("a")), "b");
        assert_eq!(s.next_role(Some("b")), "a");
        assert_eq!(Strategy::SingleUser("u".into()).next_role(Some("u")), "u");
    }

    #[test]
    fn a_credential_debug_hides_the_password() {
        let c = Credential {
            username: "app".into(),
            password: SecretString::from("canary-7f3e".to_owned()),
        };
        assert!(!format!("{c:?}").contains("canary-7f3e"));
    }
}
