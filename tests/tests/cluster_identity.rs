//! Rotation writes as the policy's namespace, on a real API server: the
//! controller logs in to a store with a TokenRequest token of the
//! namespace's `rotor-rotator` account, never its own.
//!
//! - a RotorStore whose `server` is the test's own listener only ever
//!   receives the tenant's rotator token (its `sub` decoded), and a
//!   namespace without the account gets no login at all;
//! - real OpenBao with Kubernetes auth (this API server's TokenReview) and
//!   a policy templated on the token's namespace: team-a's policy rotates
//!   `team-a/db`, and its policy for `team-b/db` writes nothing;
//! - moto: the store's role is assumed with `AssumeRoleWithWebIdentity` and
//!   the tenant's token, and Secrets Manager is called with that role's
//!   credentials;
//! - the controller's RBAC allows tokens of `rotor-rotator` only.
//!
//! The tests share the one Lease, so they take turns (`ONE_CONTROLLER`).

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use rotor_contract::api::{Phase, RotorStore, SecretRotationPolicy};
use rotor_e2e::cluster::{
    ControlPlane, Controller, ROTATOR, eventually, installed, jwt_claims, vault_kubernetes_role,
};
use rotor_e2e::free_port;
use rotor_e2e::policy::PolicyFixture;
use rotor_e2e::servers::{Bao, Moto, recorded_body};
use rotor_fixtures::http_recorder::HttpRecorder;
use rotor_store::{Store, WriteAs};

/// One controller at a time: they would share the leader Lease.
static ONE_CONTROLLER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CONTROLLER_SUBJECT: &str = "system:serviceaccount:rotor-system:rotor-controller";

async fn start_controller(plane: &ControlPlane, env: &[(&str, &str)]) -> Controller {
    let lease = ["--lease-duration=4s"];
    Controller::start_with_env(plane, "identity-tests", free_port(), &lease, env).await
}

async fn create_store(client: &kube::Client, ns: &str, provider: serde_json::Value) {
    let store: RotorStore = serde_json::from_value(serde_json::json!({
        "apiVersion": "rotor.dev/v1alpha1",
        "kind": "RotorStore",
        "metadata": { "name": "store" },
        "spec": { "provider": provider },
    }))
    .unwrap();
    Api::<RotorStore>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &store)
        .await
        .unwrap();
}

async fn create_policy(client: &kube::Client, ns: &str, name: &str, secret: &str) {
    PolicyFixture::new(name, "store", secret)
        .on_timeout("Promote")
        .create(client, ns)
        .await;
}

/// Waits until the policy's rotation has finished once: Idle with a
/// current version and a last rotation time.
async fn wait_rotated(client: &kube::Client, ns: &str, name: &str) -> bool {
    let api: Api<SecretRotationPolicy> = Api::namespaced(client.clone(), ns);
    eventually(90, || async {
        let s = api.get(name).await.unwrap().status.unwrap_or_default();
        s.phase == Some(Phase::Idle) && s.last_rotation.is_some()
    })
    .await
}

/// Waits for the controller's log to hold a line with all of `parts`
/// (quotes unescaped, whatever the log format).
async fn wait_logged(controller: &Controller, parts: &[&str]) -> bool {
    eventually(60, || async {
        controller
            .full_log()
            .lines()
            .map(|l| l.replace('\\', ""))
            .any(|l| parts.iter().all(|p| l.contains(p)))
    })
    .await
}

#[tokio::test]
async fn a_stores_server_only_ever_gets_the_tenants_rotator_token() {
    let _turn = ONE_CONTROLLER.lock().await;
    let plane = installed();
    let client = plane.client().await;
    // Whatever it is sent, the listener refuses the login.
    let listener =
        HttpRecorder::start(|_| (403, serde_json::json!({"errors": ["permission denied"]})));
    let tenant = plane.namespace("tenant").await;
    plane.service_account(&tenant, ROTATOR).await;
    // A namespace that did not opt in.
    let bystander = plane.namespace("bystander").await;
    for ns in [&tenant, &bystander] {
        create_store(
            &client,
            ns,
            serde_json::json!({ "vault": {
                "server": listener.url(),
                "auth": { "kubernetes": { "role": "rotor" } },
            } }),
        )
        .await;
        create_policy(&client, ns, "db", &format!("{ns}/db")).await;
    }
    let controller = start_controller(plane, &[]).await;

    let logins = || {
        listener
            .requests()
            .into_iter()
            .filter(|r| r.path == "/v1/auth/kubernetes/login")
            .collect::<Vec<_>>()
    };
    let tried = eventually(60, || async { !logins().is_empty() }).await;
    assert!(tried, "no login reached the listener: {}", controller.log());
    let missing = format!("namespace \"{bystander}\" has no ServiceAccount \"{ROTATOR}\"");
    let explained = wait_logged(&controller, &[&missing, "create serviceaccount"]).await;
    assert!(explained, "{}", controller.log());

    let rotator = format!("system:serviceaccount:{tenant}:{ROTATOR}");
    let log = controller.full_log();
    for request in listener.requests() {
        assert_eq!(request.path, "/v1/auth/kubernetes/login", "{request:?}");
        let body = request.json();
        assert_eq!(body["role"], "rotor");
        let jwt = body["jwt"].as_str().expect("a jwt");
        let claims = jwt_claims(jwt);
        assert_ne!(
            claims["sub"], CONTROLLER_SUBJECT,
            "the controller's own token"
        );
        assert_eq!(claims["sub"], rotator.as_str(), "{claims}");
        assert_eq!(claims["aud"], serde_json::json!(["vault"]), "{claims}");
        let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
        assert!(lifetime <= 3600, "a long-lived token: {claims}");
        assert!(!log.contains(jwt), "a token in the controller's log");
    }
}

/// Writes an ACL policy that lets a token act on `secret/<its namespace>/*`
/// only, templated on the Kubernetes auth mount's accessor (README:
/// "Identities: whose credentials rotation uses").
fn namespace_policy(bao: &Bao, name: &str) {
    let auths: serde_json::Value = serde_json::from_str(&bao.api("GET", "sys/auth", "")).unwrap();
    let accessor = auths["data"]["kubernetes/"]["accessor"]
        .as_str()
        .or_else(|| auths["kubernetes/"]["accessor"].as_str())
        .expect("the kubernetes mount's accessor")
        .to_owned();
    let ns =
        format!("{{{{identity.entity.aliases.{accessor}.metadata.service_account_namespace}}}}");
    let policy = format!(
        "path \"secret/data/{ns}/*\" {{ capabilities = [\"create\", \"read\", \"update\"] }}\n\
         path \"secret/metadata/{ns}/*\" {{ capabilities = [\"create\", \"read\", \"update\"] }}\n\
         path \"secret/destroy/{ns}/*\" {{ capabilities = [\"update\"] }}\n"
    );
    bao.api(
        "PUT",
        &format!("sys/policies/acl/{name}"),
        &serde_json::json!({ "policy": policy }).to_string(),
    );
}

/// The number of KV v2 versions of `secret`.
fn kv_versions(bao: &Bao, secret: &str) -> usize {
    let meta: serde_json::Value =
        serde_json::from_str(&bao.api("GET", &format!("secret/metadata/{secret}"), "")).unwrap();
    meta["data"]["versions"].as_object().map_or(0, |v| v.len())
}

#[tokio::test]
async fn a_namespaces_rotator_writes_its_own_paths_and_nothing_else() {
    let _turn = ONE_CONTROLLER.lock().await;
    let plane = installed();
    let client = plane.client().await;
    let bao = Bao::start();
    let team_a = plane.namespace("team-a").await;
    let team_b = plane.namespace("team-b").await;
    plane.service_account(&team_a, ROTATOR).await;
    // One role for every namespace's rotator; the policy is the namespace's.
    vault_kubernetes_role(plane, &bao, "rotator", &[ROTATOR], &["*"], "rotator").await;
    namespace_policy(&bao, "rotator");
    let (own, other) = (format!("{team_a}/db"), format!("{team_b}/db"));
    for secret in [&own, &other] {
        bao.api(
            "POST",
            &format!("secret/data/{secret}"),
            r#"{"data":{"value":"initial"}}"#,
        );
    }
    create_store(
        &client,
        &team_a,
        serde_json::json!({ "vault": {
            "server": bao.addr(),
            "auth": { "kubernetes": { "role": "rotator" } },
        } }),
    )
    .await;
    create_policy(&client, &team_a, "own", &own).await;
    create_policy(&client, &team_a, "other", &other).await;
    let controller = start_controller(plane, &[]).await;

    let rotated = wait_rotated(&client, &team_a, "own").await;
    assert!(rotated, "{}", controller.log());
    assert!(kv_versions(&bao, &own) >= 2, "team-a/db was not written");
    // The other policy's step was refused by the store, as the controller
    // reports it (its condition's reason); nothing was written.
    let refused = wait_logged(
        &controller,
        &["policy cannot rotate", "name=other ", "reason=StoreDenied"],
    )
    .await;
    assert!(refused, "{}", controller.log());
    assert_eq!(kv_versions(&bao, &other), 1, "team-b/db was written");
}

/// The value of `key` in a form-encoded body.
fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}
/// The access key id a SigV4 Authorization header names.
fn access_key(entry: &serde_json::Value) -> Option<String> {
    let auth = entry["headers"]["Authorization"].as_str()?;
    let credential = auth.split("Credential=").nth(1)?;
    Some(credential.split('/').next()?.to_owned())
}

#[tokio::test]
async fn aws_rotation_assumes_the_stores_role_with_the_tenants_token() {
    let _turn = ONE_CONTROLLER.lock().await;
    let plane = installed();
    let client = plane.client().await;
    let moto = Moto::start();
    let ns = plane.namespace("team-aws").await;
    plane.service_account(&ns, ROTATOR).await;
    let secret = format!("{ns}/db");
    let seed = moto.store().await;
    // moto's CreateSecret happens through a first write.
    seed.write(&secret, b"initial", WriteAs::Current)
        .await
        .unwrap();
    moto.start_recording();
    let role_arn = "arn:aws:iam::123456789012:role/team-aws-rotator";
    create_store(
        &client,
        &ns,
        serde_json::json!({ "aws": {
            "region": "us-east-1",
            "endpoint": moto.endpoint(),
            "roleArn": role_arn,
        } }),
    )
    .await;
    create_policy(&client, &ns, "db", &secret).await;
    let sts = moto.endpoint();
    let controller = start_controller(plane, &[("AWS_ENDPOINT_URL_STS", &sts)]).await;

    let rotated = wait_rotated(&client, &ns, "db").await;
    assert!(rotated, "{}", controller.log());

    let recording = moto.recording();
    let assumed: Vec<String> = recording
        .iter()
        .map(recorded_body)
        .filter(|b| form_value(b, "Action").as_deref() == Some("AssumeRoleWithWebIdentity"))
        .collect();
    assert!(
        !assumed.is_empty(),
        "no AssumeRoleWithWebIdentity: {recording:?}"
    );
    for body in &assumed {
        assert_eq!(form_value(body, "RoleArn").as_deref(), Some(role_arn));
        assert_eq!(
            form_value(body, "RoleSessionName").as_deref(),
            Some(format!("rotor-{ns}").as_str())
        );
        let token = form_value(body, "WebIdentityToken").expect("a web identity token");
        let claims = jwt_claims(&token);
        assert_eq!(
            claims["sub"],
            format!("system:serviceaccount:{ns}:{ROTATOR}").as_str(),
            "{claims}"
        );
        assert_eq!(claims["aud"], serde_json::json!(["sts.amazonaws.com"]));
    }

    // Every Secrets Manager call the rotation made carried one access key,
    // which moto's STS says is the assumed role's.
    let keys: std::collections::BTreeSet<String> = recording
        .iter()
        .filter(|e| {
            e["headers"]["X-Amz-Target"]
                .as_str()
                .is_some_and(|t| t.starts_with("secretsmanager."))
        })
        .map(|e| access_key(e).expect("a signed request"))
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = keys.into_iter().next().unwrap();
    assert_ne!(key, "test", "the rotation used static credentials");
    let header = format!(
        "AWS4-HMAC-SHA256 Credential={key}/20260101/us-east-1/sts/aws4_request, \
         SignedHeaders=host, Signature=00"
    );
    let (status, identity) = rotor_e2e::servers::request(
        moto.port,
        "POST",
        "/",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &header),
        ],
        "Action=GetCallerIdentity&Version=2011-06-15",
    )
    .unwrap();
    assert_eq!(status, 200, "{identity}");
    assert!(
        identity.contains(&format!("assumed-role/team-aws-rotator/rotor-{ns}")),
        "{identity}"
    );
}

/// Whether `user` may create a token of ServiceAccount `account` in `ns`.
async fn may_request_token(client: &kube::Client, user: &str, ns: &str, account: &str) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.to_owned()),
                verb: Some("create".into()),
                resource: Some("serviceaccounts".into()),
                subresource: Some("token".into()),
                name: Some(account.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .is_some_and(|s| s.allowed)
}

#[tokio::test]
async fn the_controller_may_request_tokens_of_the_rotator_account_only() {
    let plane = installed();
    let client = plane.client().await;
    let can_i = plane.kubectl_ok(&[
        "auth",
        "can-i",
        "--list",
        &format!("--as={CONTROLLER_SUBJECT}"),
    ]);
    println!("kubectl auth can-i --list --as={CONTROLLER_SUBJECT}:\n{can_i}");
    for ns in ["team-a", "rotor-system", "kube-system"] {
        assert!(
            may_request_token(&client, CONTROLLER_SUBJECT, ns, ROTATOR).await,
            "{ns}"
        );
        for other in ["default", "rotor-controller", "app"] {
            assert!(
                !may_request_token(&client, CONTROLLER_SUBJECT, ns, other).await,
                "{ns}/{other}"
            );
        }
    }
}
