//! One builder for the SecretRotationPolicy objects the cluster tests
//! create: a 24-character password on a schedule, staged with an
//! acknowledgement timeout, chainable like controller-rs's
//! `Document::test()` fixtures, each test setting only what it is about.

use kube::api::{Api, PostParams};
use rotor_contract::api::SecretRotationPolicy;

/// A staged password policy; [`PolicyFixture::new`] holds the defaults.
#[derive(Debug, Clone)]
pub struct PolicyFixture {
    name: String,
    store: String,
    secret: String,
    schedule: serde_json::Value,
    ack_timeout: String,
    grace_period: String,
    on_timeout: String,
}

impl PolicyFixture {
    /// Policy `name` rotating `secret` in store `store`: every 720 h, an
    /// acknowledgement timeout of 1 m, a grace period of 1 s, and a
    /// rollback when consumers time out.
    pub fn new(name: &str, store: &str, secret: &str) -> Self {
        Self {
            name: name.to_owned(),
            store: store.to_owned(),
            secret: secret.to_owned(),
            schedule: serde_json::json!({ "interval": "720h" }),
            ack_timeout: "1m".to_owned(),
            grace_period: "1s".to_owned(),
            on_timeout: "Rollback".to_owned(),
        }
    }

    /// `spec.schedule` as given.
    pub fn schedule(mut self, schedule: serde_json::Value) -> Self {
        self.schedule = schedule;
        self
    }

    /// `spec.strategy.staged.ackTimeout`.
    pub fn ack_timeout(mut self, duration: &str) -> Self {
        duration.clone_into(&mut self.ack_timeout);
        self
    }

    /// `spec.strategy.staged.gracePeriod`.
    pub fn grace_period(mut self, duration: &str) -> Self {
        duration.clone_into(&mut self.grace_period);
        self
    }

    /// `spec.strategy.staged.onTimeout` (`Rollback` or `Promote`).
    pub fn on_timeout(mut self, action: &str) -> Self {
        action.clone_into(&mut self.on_timeout);
        self
    }

    /// The policy object, parsed as the API type (so a field the CRD does
    /// not know fails here, not in the API server).
    pub fn build(&self) -> SecretRotationPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "rotor.dev/v1alpha1",
            "kind": "SecretRotationPolicy",
            "metadata": { "name": self.name },
            "spec": {
                "storeRef": { "name": self.store },
                "secretName": self.secret,
                "schedule": self.schedule,
                "generator": { "password": { "length": 24 } },
                "strategy": { "staged": {
                    "ackTimeout": self.ack_timeout,
                    "gracePeriod": self.grace_period,
                    "onTimeout": self.on_timeout,
                } },
            },
        }))
        .expect("the fixture is a valid SecretRotationPolicy")
    }

    /// Creates the policy in `ns`.
    pub async fn create(&self, client: &kube::Client, ns: &str) {
        Api::<SecretRotationPolicy>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &self.build())
            .await
            .unwrap_or_else(|e| panic!("create SecretRotationPolicy {ns}/{}: {e}", self.name));
    }
}

/// Asks for one rotation of policy `name` now: sets its
/// `rotor.dev/rotate-now` annotation to `token` (a new token each time).
pub async fn rotate_now(policies: &Api<SecretRotationPolicy>, name: &str, token: &str) {
    policies
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "metadata": { "annotations": { rotor_contract::annotations::ROTATE_NOW: token } }
            })),
        )
        .await
        .unwrap();
}
