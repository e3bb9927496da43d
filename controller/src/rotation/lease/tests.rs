//! Leader election against kube's mocked client.

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;

use super::*;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The time of every attempt: the tests read no wall clock.
fn now() -> DateTime<Utc> {
    "2026-11-24T10:00:00Z".parse().unwrap()
}

fn lease(holder: &str, renewed_secs_ago: i64) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("leader".into()),
            namespace: Some("rotor-system".into()),
            resource_version: Some("7".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                now() - k8s_openapi::chrono::Duration::seconds(renewed_secs_ago),
            )),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }),
    }
}

fn reply(status: u16, body: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn not_found() -> Response<Body> {
    reply(
        404,
        serde_json::json!({"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// Answers the scripted responses in order; returns (method, body) seen.
fn server(
    script: Vec<Response<Body>>,
) -> (
    Api<Lease>,
    tokio::task::JoinHandle<Vec<(String, serde_json::Value)>>,
) {
    let (service, mut handle): (_, Handle) =
        tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for response in script {
            let Some((request, send)) = handle.next_request().await else {
                break;
            };
            let method = request.method().to_string();
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            seen.push((method, serde_json::from_slice(&bytes).unwrap_or_default()));
            send.send_response(response);
        }
        seen
    });
    (
        Api::namespaced(Client::new(service, "rotor-system"), "rotor-system"),
        task,
    )
}

#[tokio::test]
async fn creates_a_missing_lease() {
    let created = serde_json::to_value(lease("me", 0)).unwrap();
    let (api, seen) = server(vec![not_found(), reply(201, created)]);
    assert!(
        try_acquire(&api, "leader", "me", Duration::from_secs(15), now())
            .await
            .unwrap()
    );
    let seen = seen.await.unwrap();
    assert_eq!(seen[1].0, "POST");
    assert_eq!(seen[1].1["spec"]["holderIdentity"], "me");
}

#[tokio::test]
async fn leaves_a_fresh_lease_of_another_replica_alone() {
    let (api, seen) = server(vec![reply(
        200,
        serde_json::to_value(lease("other", 2)).unwrap(),
    )]);
    assert!(
        !try_acquire(&api, "leader", "me", Duration::from_secs(15), now())
            .await
            .unwrap()
    );
    assert_eq!(seen.await.unwrap().len(), 1, "no write");
}

#[tokio::test]
async fn takes_over_an_expired_lease_and_renews_its_own() {
    let expired = serde_json::to_value(lease("other", 60)).unwrap();
    let (api, seen) = server(vec![reply(200, expired.clone()), reply(200, expired)]);
    assert!(
        try_acquire(&api, "leader", "me", Duration::from_secs(15), now())
            .await
            .unwrap()
    );
    let seen = seen.await.unwrap();
    assert_eq!(seen[1].0, "PUT");
    assert_eq!(seen[1].1["spec"]["holderIdentity"], "me");
    assert_eq!(seen[1].1["spec"]["leaseTransitions"], 4);
    assert_eq!(
        seen[1].1["metadata"]["resourceVersion"], "7",
        "a racing replica's write fails"
    );

    let mine = serde_json::to_value(lease("me", 3)).unwrap();
    let (api, seen) = server(vec![reply(200, mine.clone()), reply(200, mine)]);
    assert!(
        try_acquire(&api, "leader", "me", Duration::from_secs(15), now())
            .await
            .unwrap()
    );
    assert_eq!(
        seen.await.unwrap()[1].1["spec"]["leaseTransitions"],
        3,
        "a renewal is no transition"
    );
}

#[tokio::test]
async fn a_lost_race_is_not_leadership() {
    let expired = serde_json::to_value(lease("other", 60)).unwrap();
    let conflict = reply(
        409,
        serde_json::json!({"kind": "Status", "status": "Failure", "reason": "Conflict", "code": 409, "message": "conflict"}),
    );
    let (api, _seen) = server(vec![reply(200, expired), conflict]);
    assert!(
        !try_acquire(&api, "leader", "me", Duration::from_secs(15), now())
            .await
            .unwrap()
    );
}

/// With the attempt's time given, expiry is exact: a Lease renewed `ttl`
/// ago is still held, one second later it may be taken.
#[tokio::test]
async fn a_lease_expires_one_second_after_its_duration() {
    for (renewed_secs_ago, taken) in [(15, false), (16, true)] {
        let other = serde_json::to_value(lease("other", renewed_secs_ago)).unwrap();
        let (api, seen) = server(vec![reply(200, other.clone()), reply(200, other)]);
        assert_eq!(
            try_acquire(&api, "leader", "me", Duration::from_secs(15), now())
                .await
                .unwrap(),
            taken,
            "renewed {renewed_secs_ago}s ago"
        );
        drop(api);
        assert_eq!(seen.await.unwrap().len(), 1 + usize::from(taken));
    }
}
