//! Every SecretRotationPolicy says where it stands, on a real API server
//! with OpenBao: a store's `paths` and namespace selector are checked at
//! every step (in either creation order of an allowed and a forbidden
//! policy, after a label is removed, after the store is deleted), and a
//! policy whose store is missing, unusable or does not allow it gets
//! `Ready=False` with a typed reason and one Warning Event, nothing else.
//! Nothing is asserted after a fixed sleep: a "nothing was written" check
//! first waits for the controller to log the refused step.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use rotor_contract::api::{
    ClusterRotorStore, Phase, PolicyCondition as Condition, RotorStore, SecretRotationPolicy,
    SecretRotationPolicyStatus,
};
use rotor_e2e::cluster::{
    ControlPlane, Controller, ROTATOR, event_counts, eventually, installed, kv_metadata,
    vault_kubernetes_auth,
};
use rotor_e2e::policy::PolicyFixture;
use rotor_e2e::servers::Bao;

/// The label a namespace carries to use the test's ClusterRotorStores.
const SHARED: (&str, &str) = ("rotor.dev/shared", "yes");

struct Rig {
    plane: &'static ControlPlane,
    client: kube::Client,
    bao: Bao,
    controller: Controller,
}

#[tokio::test]
async fn policies_rotate_only_what_their_store_allows_now_and_say_why_not() {
    let plane = installed();
    let client = plane.client().await;
    let bao = Bao::start();
    // Every namespace's rotator may write all of `secret/`: only the
    // store's rules stand between a policy and a path.
    vault_kubernetes_auth(plane, &bao, "rotor", &[ROTATOR], &["*"]).await;
    let controller = Controller::start(plane, "policy-status", &[]).await;
    let rig = Rig {
        plane,
        client,
        bao,
        controller,
    };
    for allowed_first in [true, false] {
        rig.paths_are_checked_at_every_step(allowed_first).await;
    }
    rig.a_removed_label_or_a_deleted_store_stops_the_next_rotation()
        .await;
    rig.each_unusable_store_has_its_reason_and_one_warning()
        .await;
}

impl Rig {
    /// A fresh namespace with [`SHARED`], or without it.
    async fn namespace(&self, prefix: &str, shared: bool) -> String {
        let ns = self.plane.namespace(prefix).await;
        self.plane.service_account(&ns, ROTATOR).await;
        if shared {
            self.label(&ns, true).await;
        }
        ns
    }

    async fn label(&self, ns: &str, on: bool) {
        let value = on.then_some(SHARED.1);
        Api::<Namespace>::all(self.client.clone())
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "metadata": { "labels": { SHARED.0: value } }
                })),
            )
            .await
            .unwrap();
    }

    /// A ClusterRotorStore for namespaces with [`SHARED`], on this test's
    /// OpenBao, with `paths` and Vault `auth`.
    async fn cluster_store(
        &self,
        name: &str,
        paths: serde_json::Value,
        auth: serde_json::Value,
    ) -> kube::Result<ClusterRotorStore> {
        let store: ClusterRotorStore = serde_json::from_value(serde_json::json!({
            "apiVersion": "rotor.dev/v1alpha1",
            "kind": "ClusterRotorStore",
            "metadata": { "name": name },
            "spec": {
                "allowedNamespaces": { "matchLabels": { SHARED.0: SHARED.1 } },
                "paths": paths,
                "provider": { "vault": { "server": self.bao.addr(), "auth": auth } },
            },
        }))
        .unwrap();
        Api::<ClusterRotorStore>::all(self.client.clone())
            .create(&PostParams::default(), &store)
            .await
    }

    async fn rotor_store(&self, ns: &str, name: &str, provider: serde_json::Value) {
        let store: RotorStore = serde_json::from_value(serde_json::json!({
            "apiVersion": "rotor.dev/v1alpha1",
            "kind": "RotorStore",
            "metadata": { "name": name },
            "spec": { "provider": provider },
        }))
        .unwrap();
        Api::<RotorStore>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &store)
            .await
            .unwrap();
    }

    fn policies(&self, ns: &str) -> Api<SecretRotationPolicy> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// A policy rotating `secret` in `store` every 720 h (so only its
    /// first rotation and rotate-now ever write), with `schedule`.
    async fn policy_with(
        &self,
        ns: &str,
        name: &str,
        store: &str,
        secret: &str,
        schedule: serde_json::Value,
    ) {
        PolicyFixture::new(name, store, secret)
            .schedule(schedule)
            .grace_period("0s")
            .create(&self.client, ns)
            .await;
    }

    async fn policy(&self, ns: &str, name: &str, store: &str, secret: &str) {
        let schedule = serde_json::json!({ "interval": "720h" });
        self.policy_with(ns, name, store, secret, schedule).await;
    }

    async fn status(&self, ns: &str, name: &str) -> SecretRotationPolicyStatus {
        self.policies(ns)
            .get(name)
            .await
            .unwrap()
            .status
            .unwrap_or_default()
    }

    async fn ready(&self, ns: &str, name: &str) -> Option<Condition> {
        self.status(ns, name)
            .await
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")
    }

    /// Waits for `Ready=False` with `reason` and its Warning Event; the
    /// condition.
    async fn wait_blocked(&self, ns: &str, name: &str, reason: &str) -> Condition {
        let blocked = eventually(60, || async {
            self.ready(ns, name)
                .await
                .is_some_and(|c| c.status == "False" && c.reason == reason)
                && self.warnings(ns, name, reason) > 0
        })
        .await;
        let ready = self.ready(ns, name).await;
        assert!(
            blocked,
            "{ns}/{name}: no Ready=False {reason} with its Event: {ready:?}, events {:?}\n{}",
            event_counts(self.plane, ns, name),
            self.controller.log()
        );
        ready.unwrap()
    }

    /// How often a Warning Event with `reason` was reported on the policy.
    fn warnings(&self, ns: &str, name: &str, reason: &str) -> u64 {
        event_counts(self.plane, ns, name)
            .get(&("Warning".to_owned(), reason.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// Waits for the policy's first rotation to end.
    async fn wait_rotated(&self, ns: &str, name: &str) {
        let done = eventually(60, || async {
            let s = self.status(ns, name).await;
            s.phase == Some(Phase::Idle) && s.last_rotation.is_some()
        })
        .await;
        let s = self.status(ns, name).await;
        assert!(
            done,
            "{ns}/{name} never rotated: {s:?}\n{}",
            self.controller.log()
        );
    }

    /// The controller's "cannot rotate" log lines about one policy: each
    /// is one step it refused.
    fn refused_steps(&self, ns: &str, name: &str) -> usize {
        self.controller
            .full_log()
            .lines()
            .filter(|l| {
                l.contains("policy cannot rotate")
                    && l.contains(&format!("namespace={ns} name={name} "))
            })
            .count()
    }

    /// Sets `rotor.dev/rotate-now` to `token` and waits for the step it
    /// triggers to be refused.
    async fn rotate_now_is_refused(&self, ns: &str, name: &str, token: &str) {
        let before = self.refused_steps(ns, name);
        self.policies(ns)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "metadata": { "annotations": { "rotor.dev/rotate-now": token } }
                })),
            )
            .await
            .unwrap();
        let refused = eventually(60, || async { self.refused_steps(ns, name) > before }).await;
        assert!(
            refused,
            "{ns}/{name}: no refused step after rotate-now: {}",
            self.controller.log()
        );
    }

    /// KV versions of `secret` in OpenBao.
    fn versions(&self, secret: &str) -> usize {
        kv_metadata(&self.bao, secret).0
    }

    fn seed(&self, secret: &str) {
        self.bao.api(
            "POST",
            &format!("secret/data/{secret}"),
            r#"{"data":{"value":"initial"}}"#,
        );
    }

    /// team-a may use the store for `team-a/*` only. Its policy for
    /// team-b's secret never writes, whichever policy comes first (the
    /// allowed one filling any cache first, or not), and says why.
    async fn paths_are_checked_at_every_step(&self, allowed_first: bool) {
        let team_a = self.namespace("team-a", true).await;
        let team_b = self.namespace("team-b", true).await;
        let store = format!("paths-{team_a}");
        self.cluster_store(
            &store,
            serde_json::json!([{ "namespace": team_a, "patterns": ["{namespace}/*"] }]),
            serde_json::json!({ "kubernetes": { "role": "rotor" } }),
        )
        .await
        .unwrap();
        let (own, other) = (format!("{team_a}/db"), format!("{team_b}/db"));
        self.seed(&own);
        self.seed(&other);

        let allowed = async {
            self.policy(&team_a, "allowed", &store, &own).await;
            self.wait_rotated(&team_a, "allowed").await;
        };
        let forbidden = async {
            self.policy(&team_a, "forbidden", &store, &other).await;
            self.wait_blocked(&team_a, "forbidden", "NotAllowed").await
        };
        let condition = if allowed_first {
            allowed.await;
            forbidden.await
        } else {
            let c = forbidden.await;
            allowed.await;
            c
        };
        assert!(
            condition
                .message
                .contains(&format!("does not allow secret {other:?}")),
            "{condition:?}"
        );
        assert!(self.versions(&own) > 1, "the allowed policy rotated");

        // With the allowed policy's store built and in use: still refused.
        self.rotate_now_is_refused(&team_a, "forbidden", "now")
            .await;
        assert_eq!(
            self.versions(&other),
            1,
            "team-b's secret written (allowed first: {allowed_first})"
        );
        assert_eq!(self.warnings(&team_a, "forbidden", "NotAllowed"), 1);
        assert_eq!(self.ready(&team_a, "forbidden").await, Some(condition));
    }

    /// After a policy rotated, its namespace loses the label the store
    /// selects, then the store is deleted: each stops the next rotation,
    /// and the condition says which.
    async fn a_removed_label_or_a_deleted_store_stops_the_next_rotation(&self) {
        let ns = self.namespace("relabel", true).await;
        let store = format!("selector-{ns}");
        self.cluster_store(
            &store,
            serde_json::json!([{ "namespace": "*", "patterns": ["{namespace}/*"] }]),
            serde_json::json!({ "kubernetes": { "role": "rotor" } }),
        )
        .await
        .unwrap();
        let secret = format!("{ns}/db");
        self.seed(&secret);
        self.policy(&ns, "db", &store, &secret).await;
        self.wait_rotated(&ns, "db").await;
        let rotated = self.versions(&secret);

        self.label(&ns, false).await;
        let c = self.wait_blocked(&ns, "db", "NotAllowed").await;
        assert!(
            c.message
                .contains(&format!("does not allow namespace {ns:?}")),
            "{c:?}"
        );
        self.rotate_now_is_refused(&ns, "db", "after-label").await;
        assert_eq!(self.versions(&secret), rotated, "written without the label");

        Api::<ClusterRotorStore>::all(self.client.clone())
            .delete(&store, &DeleteParams::default())
            .await
            .unwrap();
        let c = self.wait_blocked(&ns, "db", "StoreNotFound").await;
        assert!(
            c.message.contains(&format!("store {store:?} not found")),
            "{c:?}"
        );
        self.rotate_now_is_refused(&ns, "db", "after-delete").await;
        assert_eq!(self.versions(&secret), rotated, "written without the store");
        for reason in ["NotAllowed", "StoreNotFound"] {
            assert_eq!(self.warnings(&ns, "db", reason), 1, "{reason}");
        }
    }

    /// A missing store, kinds rotation cannot reach, and a bad cron with a
    /// missing store: each its condition and one Warning Event, also after
    /// another step.
    async fn each_unusable_store_has_its_reason_and_one_warning(&self) {
        let ns = self.namespace("unusable", true).await;
        self.rotor_store(&ns, "k8s", serde_json::json!({ "kubernetes": {} }))
            .await;
        self.rotor_store(
            &ns,
            "file",
            serde_json::json!({ "local": { "path": "/var/lib/rotor/s", "keyPath": "/etc/rotor/kek" } }),
        )
        .await;
        // A ClusterRotorStore with Secret-based auth: the API server refuses
        // it, naming the field (a CRD rule). One created before that rule
        // (kept by CEL ratcheting) is `Ready=False` in its own status and
        // `StoreUnsupported` for policies: `store_status` and
        // `cluster::stores` unit tests.
        let refused = self
            .cluster_store(
                &format!("token-{ns}"),
                serde_json::json!([{ "namespace": "*", "patterns": ["{namespace}/*"] }]),
                serde_json::json!({ "tokenSecretRef": { "name": "vault-token", "key": "token" } }),
            )
            .await;
        match refused {
            Err(kube::Error::Api(e)) => assert!(e.message.contains("tokenSecretRef"), "{e:?}"),
            other => panic!("a ClusterRotorStore with tokenSecretRef: {other:?}"),
        }
        let mut cases = vec![
            ("missing", "nothing", "StoreNotFound", "not found"),
            (
                "on-k8s",
                "k8s",
                "StoreUnsupported",
                "supports vault and aws",
            ),
            (
                "on-file",
                "file",
                "StoreUnsupported",
                "supports vault and aws",
            ),
        ];
        for (name, store, _, _) in &cases {
            self.policy(&ns, name, store, &format!("{ns}/{name}")).await;
        }
        let cron = serde_json::json!({ "cron": "0 0 30 2 *" });
        self.policy_with(&ns, "bad-cron", "nothing", &format!("{ns}/x"), cron)
            .await;
        cases.push(("bad-cron", "nothing", "InvalidSpec", "spec.schedule.cron"));

        for (name, store, reason, says) in &cases {
            let c = self.wait_blocked(&ns, name, reason).await;
            assert!(c.message.contains(says), "{name}: {c:?}");
            if *name == "bad-cron" {
                // Both problems, the spec's first.
                let store_problem = format!("store {store:?} not found");
                assert!(c.message.contains(&store_problem), "{c:?}");
            }
            // Another step: the same condition (and transition time), no
            // second Event.
            self.rotate_now_is_refused(&ns, name, "again").await;
            assert_eq!(self.warnings(&ns, name, reason), 1, "{name}");
            assert_eq!(self.ready(&ns, name).await, Some(c), "{name}");
            assert!(
                self.status(&ns, name).await.phase.is_none(),
                "{name} started"
            );
        }
    }
}
