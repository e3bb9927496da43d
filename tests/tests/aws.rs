//! The AWS Secrets Manager store against a real moto server on a loopback
//! port. The store is built for real AWS; moto's quirks are handled here,
//! not in the product: reads always name a stage or version (moto returns
//! the old version to a read without one after a promotion).

use rotor_e2e::servers::Moto;
use rotor_envelope::ExposeSecret;
use rotor_store::{AwsConfig, AwsStore, Error, Selector, Stage, Store, WriteAs};

async fn store(endpoint: String) -> AwsStore {
    AwsStore::new(AwsConfig {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint),
        static_credentials: Some(("test".into(), "test".to_owned().into())),
    })
    .await
}

async fn text(s: &AwsStore, name: &str, sel: Selector) -> String {
    String::from_utf8(
        s.read(name, &sel)
            .await
            .unwrap()
            .value
            .expose_secret()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn stages_follow_aws_labels_through_a_rotation() {
    let moto = Moto::start();
    let s = store(moto.endpoint()).await;
    let v1 = s.write("app/db", b"one", WriteAs::Current).await.unwrap();
    let v2 = s.write("app/db", b"two", WriteAs::Current).await.unwrap();
    assert_ne!(v1, v2);
    assert_eq!(text(&s, "app/db", Selector::Current).await, "two");
    assert_eq!(
        text(&s, "app/db", Selector::Stage(Stage::Previous)).await,
        "one"
    );
    assert_eq!(
        text(&s, "app/db", Selector::Version(v1.clone())).await,
        "one"
    );
    assert_eq!(s.current_version("app/db").await.unwrap(), v2);

    // Stage a pending version: consumers still read CURRENT.
    let v3 = s.write("app/db", b"three", WriteAs::Pending).await.unwrap();
    assert_eq!(s.current_version("app/db").await.unwrap(), v2);
    assert_eq!(text(&s, "app/db", Selector::Current).await, "two");
    assert_eq!(
        text(&s, "app/db", Selector::Stage(Stage::Pending)).await,
        "three"
    );

    // Promote: AWSCURRENT moves, the old one becomes AWSPREVIOUS, and the
    // promoted version keeps no AWSPENDING label.
    s.promote("app/db", &v3).await.unwrap();
    s.promote("app/db", &v3).await.unwrap();
    assert_eq!(s.current_version("app/db").await.unwrap(), v3);
    assert_eq!(text(&s, "app/db", Selector::Current).await, "three");
    assert_eq!(
        text(&s, "app/db", Selector::Stage(Stage::Previous)).await,
        "two"
    );
    let err = s
        .read("app/db", &Selector::Stage(Stage::Pending))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::StageNotFound { .. }), "{err}");

    // Retire the previous version: it loses its labels.
    s.retire("app/db", &v2).await.unwrap();
    let err = s
        .read("app/db", &Selector::Stage(Stage::Previous))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::StageNotFound { .. }), "{err}");
    let err = s.retire("app/db", &v3).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("is AWSCURRENT and cannot be retired"),
        "{err}"
    );
}

#[tokio::test]
async fn binary_values_and_errors() {
    let moto = Moto::start();
    let s = store(moto.endpoint()).await;
    let bin = [0u8, 159, 146, 150, 255];
    s.write("bin", &bin, WriteAs::Current).await.unwrap();
    assert_eq!(
        s.read("bin", &Selector::Current)
            .await
            .unwrap()
            .value
            .expose_secret(),
        &bin
    );

    let err = s.read("missing", &Selector::Current).await.err().unwrap();
    assert!(
        matches!(err, Error::SecretNotFound { .. }) && !err.is_retryable(),
        "{err}"
    );
    assert!(
        err.to_string().contains("aws:us-east-1") && err.to_string().contains("missing"),
        "{err}"
    );
    let err = s
        .write("missing", b"x", WriteAs::Pending)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SecretNotFound { .. }), "{err}");

    let closed = store(format!("http://127.0.0.1:{}", rotor_e2e::free_port())).await;
    let err = closed.current_version("x").await.err().unwrap();
    assert!(
        matches!(err, Error::Unreachable { .. }) && err.is_retryable(),
        "{err}"
    );
}
