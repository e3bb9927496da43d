//! What every store speaks: stage labels, selectors, version ids, values and
//! metadata.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use rotor_envelope::Plaintext;

/// A stage label, with AWS Secrets Manager's meaning (see the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Current,
    Pending,
    Previous,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Current, Stage::Pending, Stage::Previous];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Current => "CURRENT",
            Stage::Pending => "PENDING",
            Stage::Previous => "PREVIOUS",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Stage::Current => 1,
            Stage::Pending => 2,
            Stage::Previous => 4,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().trim_start_matches("AWS") {
            "CURRENT" => Ok(Stage::Current),
            "PENDING" => Ok(Stage::Pending),
            "PREVIOUS" => Ok(Stage::Previous),
            _ => Err(format!(
                "unknown stage {s:?}; expected CURRENT, PENDING or PREVIOUS"
            )),
        }
    }
}

/// The set of stage labels one version carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stages(u8);

impl Stages {
    pub const NONE: Stages = Stages(0);

    pub fn from_bits(bits: u8) -> Option<Self> {
        (bits & !7 == 0).then_some(Stages(bits))
    }
    pub fn bits(self) -> u8 {
        self.0
    }
    pub fn contains(self, s: Stage) -> bool {
        self.0 & s.bit() != 0
    }
    pub fn insert(&mut self, s: Stage) {
        self.0 |= s.bit();
    }
    pub fn remove(&mut self, s: Stage) {
        self.0 &= !s.bit();
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Stage> {
        Stage::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl fmt::Display for Stages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let labels: Vec<_> = self.iter().map(Stage::as_str).collect();
        f.write_str(&labels.join(","))
    }
}

/// A version's id. Opaque: a decimal number on the local store and Vault
/// KV, a UUID on AWS Secrets Manager, a resource version on Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(pub String);

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<u64> for VersionId {
    fn from(n: u64) -> Self {
        Self(n.to_string())
    }
}

impl From<&str> for VersionId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// Which version to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Current,
    Version(VersionId),
    Stage(Stage),
}

/// How to label a newly written version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteAs {
    /// Label it CURRENT at once; the old CURRENT becomes PREVIOUS.
    Current,
    /// Label it PENDING; a later promotion makes it CURRENT.
    Pending,
}

/// Metadata of one version. Holds no value, so it may be printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionMeta {
    pub name: String,
    pub version: u64,
    pub created_at: SystemTime,
    pub stages: Stages,
    /// Length of the plaintext value in bytes.
    pub size: usize,
}

/// Metadata of one secret, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSummary {
    pub name: String,
    pub current: Option<u64>,
    pub pending: Option<u64>,
    pub previous: Option<u64>,
    pub versions: usize,
    pub updated_at: Option<SystemTime>,
}

/// A version's metadata and its value. No `Debug`: the value is secret.
pub struct SecretValue {
    pub meta: VersionMeta,
    pub value: Plaintext,
}
