//! Leader election against the fake API server of `rotor-fixtures`.

use rotor_fixtures::api_server::{self, Exchange, Recorded, Reply, Scenario};

use super::*;

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

/// Answers the scripted replies in order and records the requests.
fn server(script: Vec<Reply>) -> (Api<Lease>, Recorded) {
    let (client, server) = api_server::pair("rotor-system");
    let script = script.into_iter().map(|r| Exchange::any().reply(r));
    let seen = server.run(Scenario::Script(script.collect()));
    (Api::namespaced(client, "rotor-system"), seen)
}

#[tokio::test]
async fn creates_a_missing_lease() {
    let (api, seen) = server(vec![Reply::not_found(), Reply::created(&lease("me", 0))]);
    assert!(
        try_acquire(&api, "leader", "me", Duration::from_secs(15), now())
            .await
            .unwrap()
    );
    let seen = seen.finished().await;
    assert_eq!(seen[1].method, "POST");
    assert_eq!(seen[1].body["spec"]["holderIdentity"], "me");
}

#[tokio::test]
async fn leaves_a_fresh_lease_of_another_replica_alone() {
    let (api, seen) = server(vec![Reply::ok(&lease("other", 2))]);
    assert!(
        !try_acquire(&api, "leader", "me", Duration::from_secs(15), now())
            .await
            .unwrap()
    );
    assert_eq!(seen.finished().await.len(), 1, "no write");
}

#[tokio::test]
async fn takes_over_an_expired_lease_and_renews_its_own() {
    let expired = Reply::ok(&lease("other", 60));
    let (api, seen) = server(vec![expired.clone(), expired]);
    assert!(
        try_acquire(&api, "leader", "me", Duration::from_secs(15), now())
            .await
            .unwrap()
    );
    let seen = seen.finished().await;
    assert_eq!(seen[1].method, "PUT");
    assert_eq!(seen[1].body["spec"]["holderIdentity"], "me");
    assert_eq!(seen[1].body["spec"]["leaseTransitions"], 4);
    assert_eq!(
        seen[1].body["metadata"]["resourceVersion"], "7",
        "a racing replica's write fails"
    );

    let mine = Reply::ok(&lease("me", 3));
    let (api, seen) = server(vec![mine.clone(), mine]);
    assert!(
        try_acquire(&api, "leader", "me", Duration::from_secs(15), now())
            .await
            .unwrap()
    );
    assert_eq!(
        seen.finished().await[1].body["spec"]["leaseTransitions"],
        3,
        "a renewal is no transition"
    );
}

#[tokio::test]
async fn a_lost_race_is_not_leadership() {
    let conflict = Reply::failure(409, "Conflict");
    let (api, _seen) = server(vec![Reply::ok(&lease("other", 60)), conflict]);
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
        let other = Reply::ok(&lease("other", renewed_secs_ago));
        let (api, seen) = server(vec![other.clone(), other]);
        assert_eq!(
            try_acquire(&api, "leader", "me", Duration::from_secs(15), now())
                .await
                .unwrap(),
            taken,
            "renewed {renewed_secs_ago}s ago"
        );
        drop(api);
        assert_eq!(seen.finished().await.len(), 1 + usize::from(taken));
    }
}
