//! The SecretRotationPolicy resource: schedule, generator, targets, status.

use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{Condition, ServingCounts};
use crate::durations::{
    self, MIN_ACK_TIMEOUT, MIN_INTERVAL, cel_is_duration, cel_seconds, rule_at_least,
    rule_is_duration,
};

/// The shape of `schedule.cron` as far as CEL can check it: a shorthand,
/// or five fields of the characters each may hold (names only in the
/// month and day-of-week fields, `?` only in the day fields). The
/// controller's parser checks the rest (ranges, steps, names).
pub const CRON_SHAPE: &str = r"^\s*(@(?i:yearly|annually|monthly|weekly|daily|hourly)|[0-9*,/-]+\s+[0-9*,/-]+\s+[0-9*?,/-]+\s+[0-9A-Za-z*,/-]+\s+[0-9A-Za-z*?,/-]+)\s*$";

/// The longest `schedule.cron`, in bytes.
pub const MAX_CRON_LEN: usize = 128;

fn cron_shape() -> Rule {
    Rule::new(format!("self.matches(r'{CRON_SHAPE}')")).message(
        "cron must be five fields (minute hour day-of-month month day-of-week) of digits, *, ',', '-', '/' (names in month and day-of-week, ? in the day fields), or @yearly, @annually, @monthly, @weekly, @daily, @hourly",
    )
}

/// `a` (a duration field of `self`) compared with `b` by `op`, once both
/// are set and parse.
fn durations_compare(a: &str, op: &str, b: &str) -> String {
    let valid = |f: &str| format!("has(self.{f}) && {}", cel_is_duration(&format!("self.{f}")));
    format!(
        "!({} && {}) || {} {op} {}",
        valid(a),
        valid(b),
        cel_seconds(&format!("self.{a}")),
        cel_seconds(&format!("self.{b}"))
    )
}

fn jitter_below_interval() -> Rule {
    Rule::new(durations_compare("jitter", "<", "interval"))
        .message("jitter must be shorter than interval")
        .field_path(".jitter")
}

/// Neither wait of a rotation (up to `ackTimeout` for the
/// acknowledgements, then `gracePeriod` before the previous version is
/// retired) is longer than the interval between rotations.
fn waits_within_interval() -> Rule {
    let i = "self.schedule.interval";
    let within = |f: &str| {
        let v = format!("self.strategy.staged.{f}");
        format!(
            "!(has({v}) && {}) || {} <= {}",
            cel_is_duration(&v),
            cel_seconds(&v),
            cel_seconds(i)
        )
    };
    Rule::new(format!(
        "!(has({i}) && {}) || (({}) && ({}))",
        cel_is_duration(i),
        within("ackTimeout"),
        within("gracePeriod")
    ))
    .message("strategy.staged.ackTimeout and gracePeriod must each be at most schedule.interval")
    .field_path(".strategy.staged")
}

/// A rotation policy: what to generate, where to stage it, when, and how
/// long to wait for every consumer's acknowledgement before promoting.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "rotor.dev",
    version = "v1alpha1",
    kind = "SecretRotationPolicy",
    doc = "Scheduled rotation of one secret, promoted only after every consumer acknowledged it.",
    namespaced,
    shortname = "rsrp",
    category = "rotor",
    status = "SecretRotationPolicyStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Current","type":"string","jsonPath":".status.currentVersion"}"#,
    printcolumn = r#"{"name":"Serving","type":"string","description":"Consumers serving the current version / all consumers","jsonPath":".status.servingSummary"}"#,
    printcolumn = r#"{"name":"Degraded","type":"string","jsonPath":".status.conditions[?(@.type==\"Degraded\")].status"}"#,
    printcolumn = r#"{"name":"Last Rotation","type":"date","jsonPath":".status.lastRotation"}"#,
    printcolumn = r#"{"name":"Next Rotation","type":"string","jsonPath":".status.nextRotation"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = waits_within_interval())]
pub struct SecretRotationPolicySpec {
    pub store_ref: StoreRef,
    /// The secret to rotate, by its name in the store.
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0 && self.size() <= 255 && !self.startsWith('/') && !self.endsWith('/') && !self.contains('//') && !self.contains('..')").message("secretName must be 1-255 characters without empty or '..' segments"))]
    pub secret_name: String,
    pub schedule: Schedule,
    pub generator: Generator,
    #[serde(default)]
    pub strategy: Strategy,
    /// The system that checks the secret, changed before consumers see the
    /// new value. With a postgresql target the secret's value is a JSON
    /// object (`username`, `password`, `host`, `port`, `dbname`); an https
    /// target gets the generator's value as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Standalone mode only: the pods (`namespace/name`, as their sidecars
    /// introduce themselves on the channel) a rotation waits for, connected
    /// or not; every connected sidecar serving the secret is a consumer
    /// too. In a cluster the consumers are the injected pods whose
    /// annotations name the secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<String>,
    /// Stop scheduling rotations; an in-flight rotation still finishes.
    #[serde(default)]
    pub paused: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoreRef {
    pub name: String,
    /// `RotorStore` (default) or `ClusterRotorStore`.
    #[serde(default = "default_store_kind")]
    pub kind: String,
}

fn default_store_kind() -> String {
    "RotorStore".to_owned()
}

/// When to rotate: every `interval`, or on a `cron` schedule (UTC), inside
/// an optional daily `window`, delayed by up to `jitter`; and never later
/// than `maxAge` after the last rotation.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.interval) != has(self.cron)").message("set exactly one of interval and cron"))]
#[x_kube(validation = jitter_below_interval())]
pub struct Schedule {
    /// A duration such as `720h` or `30d` (whole numbers with units s, m,
    /// h, d or w), at least 15m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = durations::MAX_LEN))]
    #[x_kube(validation = rule_is_duration("interval"), validation = rule_at_least("interval", MIN_INTERVAL))]
    pub interval: Option<String>,
    /// Standard cron, as a Kubernetes CronJob takes it, in UTC: five
    /// fields (minute hour day-of-month month day-of-week) with names
    /// (`MON`, `JAN`), 0 or 7 for Sunday, ranges, lists and steps; or
    /// `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_CRON_LEN))]
    #[x_kube(validation = cron_shape())]
    pub cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Up to this much later than due, drawn once per rotation; shorter
    /// than `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = durations::MAX_LEN))]
    #[x_kube(validation = rule_is_duration("jitter"))]
    pub jitter: Option<String>,
    /// Rotate at the latest this long after the last rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = durations::MAX_LEN))]
    #[x_kube(validation = rule_is_duration("maxAge"))]
    pub max_age: Option<String>,
}

/// A daily window, UTC, `HH:MM` to `HH:MM` (may wrap past midnight).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')").message("start must be HH:MM"))]
    pub start: String,
    #[x_kube(validation = kube::core::Rule::new("self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')").message("end must be HH:MM"))]
    pub end: String,
}

/// Exactly one generator.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(has(self.password) ? 1 : 0) + (has(self.randomBytes) ? 1 : 0) + (has(self.keyPair) ? 1 : 0) == 1").message("set exactly one of password, randomBytes, keyPair"))]
pub struct Generator {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordGenerator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_bytes: Option<RandomBytesGenerator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pair: Option<KeyPairGenerator>,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.minLower + self.minUpper + self.minDigits + self.minSymbols <= self.length").message("the per-class minimums add up to more than length"))]
pub struct PasswordGenerator {
    #[x_kube(validation = kube::core::Rule::new("self >= 8 && self <= 1024").message("length must be 8 to 1024"))]
    pub length: u32,
    /// The symbols to draw from; letters and digits are always available.
    #[serde(default = "default_symbols")]
    pub symbols: String,
    #[serde(default)]
    pub min_lower: u32,
    #[serde(default)]
    pub min_upper: u32,
    #[serde(default)]
    pub min_digits: u32,
    #[serde(default)]
    pub min_symbols: u32,
}

fn default_symbols() -> String {
    "!#%+-.:=@^_~".to_owned()
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RandomBytesGenerator {
    #[x_kube(validation = kube::core::Rule::new("self >= 16 && self <= 4096").message("length must be 16 to 4096 bytes"))]
    pub length: u32,
    #[serde(default)]
    pub encoding: Encoding,
}

#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Base64,
    Hex,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyPairGenerator {
    pub algorithm: KeyAlgorithm,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum KeyAlgorithm {
    Ed25519,
    #[serde(rename = "ECDSA-P256")]
    EcdsaP256,
}

/// Exactly one target.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.postgresql) != has(self.https)").message("set exactly one of postgresql and https"))]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgresql: Option<PostgresTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<HttpsTarget>,
}

/// A receiver for systems Rotor does not know: the controller POSTs AWS's
/// rotation steps (`setSecret`, `testSecret`, `finishSecret`) to `url` as
/// JSON, with a bearer token of the namespace's rotator ServiceAccount
/// whose audience is `url`. The secret's value is the generator's, as is.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpsTarget {
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('https://') && self.size() <= 2048").message("url must be an https:// URL of at most 2048 characters"))]
    pub url: String,
    /// PEM certificates of the CAs that sign the receiver's certificate;
    /// without it, the public web's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// How long one call may take, e.g. `10s` (the default); 1s to 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A PostgreSQL server whose role passwords the rotation sets. The
/// connection uses TLS when the server offers it (`tls.mode: require`
/// refuses one that does not), and the server's certificate is verified
/// against `tls.caBundle` (default: the public web's roots).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresTarget {
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0 && self.size() <= 253").message("host must be 1-253 characters"))]
    pub host: String,
    #[serde(default = "default_pg_port")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 65535").message("port must be 1 to 65535"))]
    pub port: u32,
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0 && self.size() <= 63").message("dbname must be 1-63 characters"))]
    pub dbname: String,
    /// A secret in the same store whose value is a JSON object with
    /// `username` and `password` of a role allowed to ALTER ROLE.
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0 && self.size() <= 255").message("adminSecretName must be 1-255 characters"))]
    pub admin_secret_name: String,
    pub strategy: PostgresStrategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PostgresTls>,
}

/// TLS to a PostgreSQL target.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PostgresTls {
    /// `Prefer` (the default) uses TLS when the server offers it and plain
    /// TCP when it does not; `Require` refuses a server without TLS.
    #[serde(default)]
    pub mode: PostgresTlsMode,
    /// PEM certificates of the CAs that sign the server's certificate
    /// (whose names must include `host`); without it, the public web's
    /// roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// When a PostgreSQL target's connection uses TLS.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum PostgresTlsMode {
    #[default]
    Prefer,
    Require,
}

fn default_pg_port() -> u32 {
    5432
}

/// Exactly one PostgreSQL strategy.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.alternatingUsers) != has(self.singleUser)").message("set exactly one of alternatingUsers and singleUser"))]
pub struct PostgresStrategy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternating_users: Option<AlternatingUsers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_user: Option<SingleUser>,
}

/// Two roles with the same grants; each rotation sets a new password on
/// the one not in use, so the previous one keeps working until the next.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.roles.size() == 2 && self.roles[0] != self.roles[1]").message("roles must name two different roles"))]
pub struct AlternatingUsers {
    pub roles: Vec<String>,
}

/// One role whose password changes in place: consumers holding the old
/// password fail to log in until they have the new one.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SingleUser {
    pub role: String,
}

/// How a new version goes live.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    #[serde(default)]
    pub staged: Staged,
}

/// Stage the new version as pending, deliver it to every consumer, and
/// promote it once all have acknowledged it.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Staged {
    /// How long to wait for every consumer's acknowledgement (at least
    /// 1s).
    #[serde(default = "default_ack_timeout")]
    #[schemars(length(max = durations::MAX_LEN))]
    #[x_kube(validation = rule_is_duration("ackTimeout"), validation = rule_at_least("ackTimeout", MIN_ACK_TIMEOUT))]
    pub ack_timeout: String,
    /// How long the previous version stays before it is retired. Neither
    /// this nor `ackTimeout` may be longer than `schedule.interval`.
    #[serde(default = "default_grace")]
    #[schemars(length(max = durations::MAX_LEN))]
    #[x_kube(validation = rule_is_duration("gracePeriod"))]
    pub grace_period: String,
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

impl Default for Staged {
    fn default() -> Self {
        Self {
            ack_timeout: default_ack_timeout(),
            grace_period: default_grace(),
            on_timeout: OnTimeout::default(),
        }
    }
}

fn default_ack_timeout() -> String {
    "5m".to_owned()
}

fn default_grace() -> String {
    "1h".to_owned()
}

/// What to do when not every consumer acknowledged in time.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum OnTimeout {
    /// Promote anyway, with a `Degraded` condition naming the laggards.
    Promote,
    /// Abort: retire the pending version and tell consumers to go back.
    #[default]
    Rollback,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRotationPolicyStatus {
    /// Where the rotation is; none yet is `Idle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "phase_schema")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<String>,
    /// When the phase began (RFC 3339), for timeouts that survive restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<String>,
    #[serde(default)]
    pub consumers: Vec<ConsumerStatus>,
    /// How many consumers serve the current, pending, previous or an
    /// older version, from their last acknowledgements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<ServingCounts>,
    /// `serving` as `current/total` (the `SERVING` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_summary: Option<String>,
    /// Failed attempts at the current target phase (Setting or Testing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_attempts: Option<u32>,
    /// When the target accepted the pending value (RFC 3339): the start of
    /// a singleUser window in which consumers hold a dead password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_set_at: Option<String>,
    #[serde(default)]
    pub conditions: Vec<PolicyCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last `rotor.dev/rotate-now` annotation value acted on. Kept in
    /// the status so the controller needs no write access to the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_now_handled: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    /// `namespace/pod`, or the sidecar's URL in standalone mode.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<String>,
    /// How the consumer answered the last request of the rotation.
    #[serde(default)]
    pub state: ConsumerState,
    /// The version the consumer serves, as its sidecar last acknowledged
    /// any request (in a rotation or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_version: Option<String>,
    /// The digest of the files the sidecar wrote for that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_digest: Option<String>,
    /// When that acknowledgement came (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<String>,
}

/// How a consumer answered rotation's last request.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum ConsumerState {
    /// It serves the pending version.
    Acknowledged,
    /// It answered, but does not serve the pending version (yet).
    #[default]
    Waiting,
    /// It answered with an error (the pin was refused or not applied).
    Failed,
    /// No acknowledgement came in time, or the stream ended first.
    Timeout,
    /// A running injected pod whose sidecar holds no stream to the
    /// controller: it counts as not acknowledged.
    NotConnected,
}

/// Where a rotation is (`status.phase`).
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, schemars::JsonSchema,
)]
pub enum Phase {
    /// No rotation in flight.
    #[default]
    Idle,
    /// Writing a new PENDING version.
    Generating,
    /// Changing the target to the pending value.
    Setting,
    /// Logging in to the target with the pending value.
    Testing,
    /// Asking every consumer to serve the pending version.
    Propagating,
    /// Making the pending version CURRENT.
    Promoting,
    /// Retiring the previous version after the grace period.
    Retiring,
    /// Moving consumers back to CURRENT and retiring the pending version.
    RollingBack,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Idle,
        Phase::Generating,
        Phase::Setting,
        Phase::Testing,
        Phase::Propagating,
        Phase::Promoting,
        Phase::Retiring,
        Phase::RollingBack,
    ];

    /// The `status.phase` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "Idle",
            Phase::Generating => "Generating",
            Phase::Setting => "Setting",
            Phase::Testing => "Testing",
            Phase::Propagating => "Propagating",
            Phase::Promoting => "Promoting",
            Phase::Retiring => "Retiring",
            Phase::RollingBack => "RollingBack",
        }
    }

    /// The phase of `status`; `Idle` when it has none.
    pub fn of(status: &SecretRotationPolicyStatus) -> Self {
        status.phase.unwrap_or_default()
    }
}

/// `status.phase` as a structural schema: a nullable string, one of
/// [`Phase::ALL`] (the schema schemars derives for an optional enum is an
/// `anyOf` the API server refuses).
fn phase_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Where the rotation is; none yet is `Idle`.",
        "type": "string",
        "nullable": true,
        "enum": Phase::ALL.map(Phase::as_str),
    })
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SecretRotationPolicy's condition (`Ready`, `Rotating`, `Degraded`).
pub type PolicyCondition = Condition<PolicyReason>;

/// The reason of a SecretRotationPolicy's condition, stored as the
/// variant's name.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum PolicyReason {
    // `Ready`.
    /// The spec has problems the CRD's CEL rules did not catch.
    InvalidSpec,
    /// No RotorStore of that name in the namespace, and no
    /// ClusterRotorStore.
    StoreNotFound,
    /// A store rotation cannot use.
    StoreUnsupported,
    /// A ClusterRotorStore that does not allow the namespace or path; or
    /// (`Degraded`) a target that refused the admin role.
    NotAllowed,
    /// The store refused the login or the secret's path.
    StoreDenied,
    /// The namespace has no rotator ServiceAccount.
    RotatorMissing,
    /// The spec and the store allow rotation again.
    Resumed,
    /// `spec.paused`.
    Paused,
    /// Waiting for the next rotation.
    Scheduled,
    // `Rotating`: the phase.
    Idle,
    Generating,
    Setting,
    Testing,
    Propagating,
    Promoting,
    Retiring,
    RollingBack,
    // `Degraded`.
    /// Every consumer acknowledged.
    Acknowledged,
    /// Promoted without every acknowledgement.
    AckTimeout,
    /// Rolled back: no acknowledgement from every consumer, or a target
    /// that kept failing.
    RolledBack,
    TargetUnreachable,
    AdminLoginFailed,
    NoSuchRole,
    TestLoginFailed,
    BadAdminSecret,
    TargetTlsFailed,
    TargetNoIdentity,
    TargetRejected,
    TargetTimedOut,
    TargetError,
}

impl PolicyReason {
    pub const ALL: [PolicyReason; 30] = [
        PolicyReason::InvalidSpec,
        PolicyReason::StoreNotFound,
        PolicyReason::StoreUnsupported,
        PolicyReason::NotAllowed,
        PolicyReason::StoreDenied,
        PolicyReason::RotatorMissing,
        PolicyReason::Resumed,
        PolicyReason::Paused,
        PolicyReason::Scheduled,
        PolicyReason::Idle,
        PolicyReason::Generating,
        PolicyReason::Setting,
        PolicyReason::Testing,
        PolicyReason::Propagating,
        PolicyReason::Promoting,
        PolicyReason::Retiring,
        PolicyReason::RollingBack,
        PolicyReason::Acknowledged,
        PolicyReason::AckTimeout,
        PolicyReason::RolledBack,
        PolicyReason::TargetUnreachable,
        PolicyReason::AdminLoginFailed,
        PolicyReason::NoSuchRole,
        PolicyReason::TestLoginFailed,
        PolicyReason::BadAdminSecret,
        PolicyReason::TargetTlsFailed,
        PolicyReason::TargetNoIdentity,
        PolicyReason::TargetRejected,
        PolicyReason::TargetTimedOut,
        PolicyReason::TargetError,
    ];

    /// The stored string (and the Event reason where one matches).
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyReason::InvalidSpec => "InvalidSpec",
            PolicyReason::StoreNotFound => "StoreNotFound",
            PolicyReason::StoreUnsupported => "StoreUnsupported",
            PolicyReason::NotAllowed => "NotAllowed",
            PolicyReason::StoreDenied => "StoreDenied",
            PolicyReason::RotatorMissing => "RotatorMissing",
            PolicyReason::Resumed => "Resumed",
            PolicyReason::Paused => "Paused",
            PolicyReason::Scheduled => "Scheduled",
            PolicyReason::Idle => "Idle",
            PolicyReason::Generating => "Generating",
            PolicyReason::Setting => "Setting",
            PolicyReason::Testing => "Testing",
            PolicyReason::Propagating => "Propagating",
            PolicyReason::Promoting => "Promoting",
            PolicyReason::Retiring => "Retiring",
            PolicyReason::RollingBack => "RollingBack",
            PolicyReason::Acknowledged => "Acknowledged",
            PolicyReason::AckTimeout => "AckTimeout",
            PolicyReason::RolledBack => "RolledBack",
            PolicyReason::TargetUnreachable => "TargetUnreachable",
            PolicyReason::AdminLoginFailed => "AdminLoginFailed",
            PolicyReason::NoSuchRole => "NoSuchRole",
            PolicyReason::TestLoginFailed => "TestLoginFailed",
            PolicyReason::BadAdminSecret => "BadAdminSecret",
            PolicyReason::TargetTlsFailed => "TargetTlsFailed",
            PolicyReason::TargetNoIdentity => "TargetNoIdentity",
            PolicyReason::TargetRejected => "TargetRejected",
            PolicyReason::TargetTimedOut => "TargetTimedOut",
            PolicyReason::TargetError => "TargetError",
        }
    }
}

impl From<Phase> for PolicyReason {
    /// The `Rotating` condition's reason is the phase.
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Idle => PolicyReason::Idle,
            Phase::Generating => PolicyReason::Generating,
            Phase::Setting => PolicyReason::Setting,
            Phase::Testing => PolicyReason::Testing,
            Phase::Propagating => PolicyReason::Propagating,
            Phase::Promoting => PolicyReason::Promoting,
            Phase::Retiring => PolicyReason::Retiring,
            Phase::RollingBack => PolicyReason::RollingBack,
        }
    }
}

impl std::fmt::Display for PolicyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for PolicyReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for PolicyReason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

#[cfg(test)]
mod reason_tests {
    use super::*;

    /// Conditions stored while reasons were free strings read back as the
    /// same reasons, and are written back as the same strings.
    #[test]
    fn every_reason_reads_and_writes_its_old_string() {
        let strings = [
            "InvalidSpec",
            "StoreNotFound",
            "StoreUnsupported",
            "NotAllowed",
            "StoreDenied",
            "RotatorMissing",
            "Resumed",
            "Paused",
            "Scheduled",
            "Idle",
            "Generating",
            "Setting",
            "Testing",
            "Propagating",
            "Promoting",
            "Retiring",
            "RollingBack",
            "Acknowledged",
            "AckTimeout",
            "RolledBack",
            "TargetUnreachable",
            "AdminLoginFailed",
            "NoSuchRole",
            "TestLoginFailed",
            "BadAdminSecret",
            "TargetTlsFailed",
            "TargetNoIdentity",
            "TargetRejected",
            "TargetTimedOut",
            "TargetError",
        ];
        for s in strings {
            let stored = serde_json::json!({
                "conditions": [{
                    "type": "Degraded", "status": "True", "reason": s,
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }],
            });
            let status: SecretRotationPolicyStatus = serde_json::from_value(stored).unwrap();
            let reason = status.conditions[0].reason;
            assert_eq!(reason.as_str(), s);
            assert_eq!(reason, s);
            assert_eq!(serde_json::to_value(reason).unwrap(), s);
        }
        let distinct: std::collections::BTreeSet<&str> =
            PolicyReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(distinct, strings.into_iter().collect());
        for p in Phase::ALL {
            assert_eq!(PolicyReason::from(p).as_str(), p.as_str());
        }
        let unknown = serde_json::from_value::<SecretRotationPolicyStatus>(serde_json::json!({
            "conditions": [{ "type": "Ready", "status": "True", "reason": "Whatever",
                             "lastTransitionTime": "2026-01-01T00:00:00Z" }],
        }));
        assert!(unknown.is_err());
    }
}
