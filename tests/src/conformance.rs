//! One conformance suite for every secret store behind `&dyn Store`: the
//! stage model (write, stage PENDING, promote, PREVIOUS, retire), reads by
//! version and by stage, and errors by kind. `tests/store_conformance.rs`
//! runs it against the local store, OpenBao, moto and a real
//! kube-apiserver; what only one store does is checked there, after the
//! suite, on what the suite returns.

use rotor_envelope::ExposeSecret;
use rotor_store::{Error, Selector, Stage, Store, VersionId, WriteAs};

/// The value `selector` reads, as text.
pub async fn text(store: &dyn Store, name: &str, selector: Selector) -> String {
    let fetched = store
        .read(name, &selector)
        .await
        .unwrap_or_else(|e| panic!("{}: read {name} {selector:?}: {e}", store.describe()));
    String::from_utf8(fetched.value.expose_secret().to_vec()).unwrap()
}

/// What one run of [`stages`] made, for store-specific checks.
pub struct StageRun {
    /// The versions written: `one` and `two` as CURRENT, `three` as PENDING.
    pub versions: [VersionId; 3],
    /// The refusal to retire the CURRENT version.
    pub retire_current: Error,
}

/// The stage model on secret `name`, which must not exist yet: two CURRENT
/// writes, a PENDING one that consumers do not see, its promotion (twice:
/// the second changes nothing), the retirement of PREVIOUS and the refusal
/// to retire CURRENT.
pub async fn stages(store: &dyn Store, name: &str) -> StageRun {
    let v1 = store.write(name, b"one", WriteAs::Current).await.unwrap();
    let v2 = store.write(name, b"two", WriteAs::Current).await.unwrap();
    assert_ne!(v1, v2);
    assert_eq!(text(store, name, Selector::Current).await, "two");
    assert_eq!(
        text(store, name, Selector::Stage(Stage::Previous)).await,
        "one"
    );
    assert_eq!(
        text(store, name, Selector::Version(v1.clone())).await,
        "one"
    );
    assert_eq!(store.current_version(name).await.unwrap(), v2);

    // A pending version: consumers still read CURRENT.
    let v3 = store.write(name, b"three", WriteAs::Pending).await.unwrap();
    assert_eq!(store.current_version(name).await.unwrap(), v2);
    assert_eq!(text(store, name, Selector::Current).await, "two");
    assert_eq!(
        text(store, name, Selector::Stage(Stage::Pending)).await,
        "three"
    );
    assert_eq!(
        text(store, name, Selector::Version(v3.clone())).await,
        "three"
    );

    // Promote: pending -> current, current -> previous; again is a no-op.
    store.promote(name, &v3).await.unwrap();
    store.promote(name, &v3).await.unwrap();
    assert_eq!(store.current_version(name).await.unwrap(), v3);
    assert_eq!(text(store, name, Selector::Current).await, "three");
    assert_eq!(
        text(store, name, Selector::Stage(Stage::Previous)).await,
        "two"
    );
    let err = store
        .read(name, &Selector::Stage(Stage::Pending))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::StageNotFound { .. }), "{err}");

    // Retire the previous version; the current one cannot be retired.
    store.retire(name, &v2).await.unwrap();
    assert!(
        store
            .read(name, &Selector::Stage(Stage::Previous))
            .await
            .is_err()
    );
    let retire_current = store.retire(name, &v3).await.unwrap_err();
    assert!(
        matches!(retire_current, Error::Conflict { .. })
            && retire_current.to_string().contains("cannot be retired"),
        "{retire_current}"
    );
    StageRun {
        versions: [v1, v2, v3],
        retire_current,
    }
}

/// Errors by kind for secret `missing`, which does not exist: not found,
/// not retryable, naming where the store is and the secret.
pub async fn missing_secret(store: &dyn Store, missing: &str) {
    let err = store.read(missing, &Selector::Current).await.err().unwrap();
    assert!(
        matches!(err, Error::SecretNotFound { .. }) && !err.is_retryable(),
        "{err}"
    );
    // The store's location (`describe()` past its kind: a path, an
    // address, a region, a namespace) and the secret.
    let described = store.describe();
    let location = described.split_once(':').map_or(&*described, |(_, l)| l);
    let text = err.to_string();
    assert!(text.contains(location) && text.contains(missing), "{text}");
    let err = store.current_version(missing).await.unwrap_err();
    assert!(matches!(err, Error::SecretNotFound { .. }), "{err}");
}
