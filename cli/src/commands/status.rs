//! `rotor status`: which consumer pod serves which version of each rotated
//! secret, read from the SecretRotationPolicies' status through the API
//! with the user's kubeconfig: per pod the version and digest its sidecar
//! last acknowledged, the version's class (CURRENT, PENDING, PREVIOUS,
//! OLDER or UNKNOWN) and how long ago.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::{Args, ValueEnum};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use rotor_contract::api::{ConsumerState, SecretRotationPolicy};
use serde::Serialize;

use crate::table;

/// How `rotor status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table, as kubectl prints one.
    Table,
    /// One JSON document: every row with its fields.
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The namespace of the policies (default: the kubeconfig context's).
    #[arg(
        long,
        short = 'n',
        value_name = "NAMESPACE",
        conflicts_with = "all_namespaces"
    )]
    namespace: Option<String>,
    /// Every namespace's policies.
    #[arg(long, short = 'A')]
    all_namespaces: bool,
    /// Only this SecretRotationPolicy.
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,
    /// table or json.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// One consumer pod of one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub namespace: String,
    pub policy: String,
    pub secret: String,
    /// `namespace/pod`.
    pub pod: String,
    pub version: Option<String>,
    pub digest: Option<String>,
    /// CURRENT, PENDING, PREVIOUS, OLDER or UNKNOWN.
    pub class: String,
    /// When the pod's sidecar acknowledged it (RFC 3339).
    pub reported_at: Option<String>,
    /// How the pod answered the policy's last rotation request.
    pub state: ConsumerState,
}

/// The rows of `policies`, in their order and their consumers' order.
pub fn rows(policies: &[SecretRotationPolicy]) -> Vec<Row> {
    let mut rows = Vec::new();
    for p in policies {
        let status = p.status.clone().unwrap_or_default();
        for c in &status.consumers {
            rows.push(Row {
                namespace: p.namespace().unwrap_or_default(),
                policy: p.name_any(),
                secret: p.spec.secret_name.clone(),
                pod: c.name.clone(),
                version: c.serving_version.clone(),
                digest: c.serving_digest.clone(),
                class: c.class(&status).heading().to_owned(),
                reported_at: c.reported_at.clone(),
                state: c.state,
            });
        }
    }
    rows
}

/// `12s`, `5m`, `3h`, `2d`: how long ago, as kubectl's AGE prints it.
pub fn ago(then: &str, now: SystemTime) -> String {
    let Ok(then) = humantime::parse_rfc3339(then) else {
        return "-".to_owned();
    };
    let secs = now.duration_since(then).unwrap_or(Duration::ZERO).as_secs();
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A digest as a table shows it: the algorithm and 12 hex digits.
fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", &hex[..hex.len().min(12)]),
        None => digest.chars().take(12).collect(),
    }
}

/// The table `rotor status` prints.
pub fn table_rows(rows: &[Row], all_namespaces: bool, now: SystemTime) -> Vec<Vec<String>> {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    rows.iter()
        .map(|r| {
            let mut cells = Vec::new();
            if all_namespaces {
                cells.push(r.namespace.clone());
            }
            let pod = r.pod.split_once('/').map_or(r.pod.as_str(), |(_, p)| p);
            cells.extend([
                r.policy.clone(),
                pod.to_owned(),
                dash(&r.version),
                r.class.clone(),
                r.digest
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), short_digest),
                r.reported_at
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |t| ago(t, now)),
            ]);
            cells
        })
        .collect()
}

impl StatusArgs {
    pub fn run(self) -> anyhow::Result<()> {
        super::block_on(self.run_async())
    }

    async fn run_async(self) -> anyhow::Result<()> {
        let Self {
            namespace,
            all_namespaces,
            policy,
            output,
        } = self;
        let client = Client::try_default()
            .await
            .context("cannot reach the Kubernetes API with the kubeconfig")?;
        let api: Api<SecretRotationPolicy> = if all_namespaces {
            Api::all(client)
        } else {
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
            Api::namespaced(client, &namespace)
        };
        let policies = match &policy {
            Some(name) => vec![
                api.get(name)
                    .await
                    .with_context(|| format!("cannot read SecretRotationPolicy {name}"))?,
            ],
            None => {
                api.list(&ListParams::default())
                    .await
                    .context("cannot list SecretRotationPolicies")?
                    .items
            }
        };
        let rows = rows(&policies);
        match output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            Output::Table if rows.is_empty() => eprintln!("No consumers found."),
            Output::Table => {
                let mut header = Vec::new();
                if all_namespaces {
                    header.push("NAMESPACE");
                }
                header.extend([
                    "POLICY",
                    "POD",
                    "VERSION",
                    "CLASS",
                    "DIGEST",
                    "ACKNOWLEDGED",
                ]);
                table::print(
                    &header,
                    &table_rows(&rows, all_namespaces, SystemTime::now()),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rotor_contract::api::{
        ConsumerStatus, Generator, Schedule, SecretRotationPolicySpec, SecretRotationPolicyStatus,
        StoreRef,
    };

    use super::*;

    fn policy(consumers: Vec<ConsumerStatus>) -> SecretRotationPolicy {
        let mut p = SecretRotationPolicy::new(
            "db",
            SecretRotationPolicySpec {
                store_ref: StoreRef {
                    name: "vault".into(),
                    kind: "RotorStore".into(),
                },
                secret_name: "shop/db".into(),
                schedule: Schedule::default(),
                generator: Generator {
                    password: None,
                    random_bytes: None,
                    key_pair: None,
                },
                strategy: Default::default(),
                target: None,
                sidecars: vec![],
                paused: false,
            },
        );
        p.metadata.namespace = Some("shop".into());
        p.status = Some(SecretRotationPolicyStatus {
            current_version: Some("3".into()),
            pending_version: Some("4".into()),
            previous_version: Some("2".into()),
            consumers,
            ..Default::default()
        });
        p
    }

    fn consumer(pod: &str, version: Option<&str>, at: Option<&str>) -> ConsumerStatus {
        ConsumerStatus {
            name: format!("shop/{pod}"),
            serving_version: version.map(str::to_owned),
            serving_digest: version.map(|v| format!("sha256:{v}0123456789abcdef")),
            reported_at: at.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn each_consumer_is_a_row_with_its_class_and_age() {
        let p = policy(vec![
            consumer("a", Some("3"), Some("2026-01-01T00:00:00Z")),
            consumer("b", Some("4"), Some("2026-01-01T00:00:50Z")),
            consumer("c", Some("1"), Some("2025-12-29T00:00:00Z")),
            consumer("d", None, None),
        ]);
        let rows = rows(&[p]);
        let classes: Vec<&str> = rows.iter().map(|r| r.class.as_str()).collect();
        assert_eq!(classes, ["CURRENT", "PENDING", "OLDER", "UNKNOWN"]);
        let now = humantime::parse_rfc3339("2026-01-01T00:01:00Z").unwrap();
        let table = table_rows(&rows, false, now);
        assert_eq!(
            table[1],
            ["db", "b", "4", "PENDING", "sha256:40123456789a", "10s"]
        );
        assert_eq!(table[0][5], "60s");
        assert_eq!(table[2][5], "3d");
        assert_eq!(table[3], ["db", "d", "-", "UNKNOWN", "-", "-"]);
        assert_eq!(table_rows(&rows, true, now)[0][0], "shop");
        let json = serde_json::to_value(&rows[1]).unwrap();
        assert_eq!(json["pod"], "shop/b");
        assert_eq!(json["class"], "PENDING");
        assert_eq!(json["reportedAt"], "2026-01-01T00:00:50Z");
        assert_eq!(json["state"], "Waiting");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = humantime::parse_rfc3339("2026-01-02T00:00:00Z").unwrap();
        assert_eq!(ago("2026-01-01T23:58:30Z", now), "90s");
        assert_eq!(ago("2026-01-01T23:00:00Z", now), "60m");
        assert_eq!(ago("2026-01-01T00:00:00Z", now), "24h");
        assert_eq!(ago("not a time", now), "-");
        // A clock behind the controller's: not negative.
        assert_eq!(ago("2026-01-02T00:00:05Z", now), "0s");
    }
}
