//! The AWS Secrets Manager store against a real moto server on a loopback
//! port; the stage model: the conformance suite (store_conformance.rs).
//! The store is built for real AWS; moto's quirks are handled here, not in
//! the product: reads always name a stage or version (moto returns the old
//! version to a read without one after a promotion).

use rotor_e2e::servers::{Moto, aws_store};
use rotor_envelope::ExposeSecret;
use rotor_store::{Error, Selector, Store, WriteAs};

#[tokio::test]
async fn binary_values_and_errors() {
    let moto = Moto::start();
    let s = moto.store().await;
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

    // Reading a missing secret: the conformance suite (store_conformance.rs).
    let err = s
        .write("missing", b"x", WriteAs::Pending)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SecretNotFound { .. }), "{err}");

    let closed = aws_store(format!("http://127.0.0.1:{}", rotor_e2e::free_port())).await;
    let err = closed.current_version("x").await.err().unwrap();
    assert!(
        matches!(err, Error::Unreachable { .. }) && err.is_retryable(),
        "{err}"
    );
}
