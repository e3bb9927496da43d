//! [`plan`]: when the leader renews what, step by step through a CA's
//! replacement, from validities alone.

use super::*;

const OVERLAP: Duration = Duration::from_secs(10);

fn names() -> Vec<String> {
    vec!["rotor-webhook.rotor-system.svc".to_owned()]
}

/// A Secret's state: serving certificate 0..300, CA 0..3000.
fn state() -> State {
    State {
        serving: Validity {
            issued: 0,
            not_after: 300,
        },
        names: names(),
        signer: Validity {
            issued: 0,
            not_after: 3000,
        },
        next: None,
        previous_until: None,
        bundle_changed: 0,
    }
}

#[test]
fn nothing_before_two_thirds_then_a_reissue() {
    let s = state();
    assert_eq!(plan(Some(&s), true, 199, &names(), OVERLAP), Step::Nothing);
    assert_eq!(plan(Some(&s), true, 200, &names(), OVERLAP), Step::Reissue);
}

#[test]
fn new_names_reissue_at_once() {
    let s = state();
    let more = vec!["127.0.0.1".to_owned()];
    assert_eq!(plan(Some(&s), true, 1, &more, OVERLAP), Step::Reissue);
}

#[test]
fn no_secret_or_an_expired_ca_starts_fresh() {
    assert_eq!(plan(None, false, 5, &names(), OVERLAP), Step::Fresh);
    assert_eq!(
        plan(Some(&state()), true, 3000, &names(), OVERLAP),
        Step::Fresh
    );
}

#[test]
fn a_ca_is_replaced_in_three_steps_each_an_overlap_apart() {
    let mut s = state();
    // Two-thirds of the CA's life: a new CA is staged in the bundle.
    assert_eq!(plan(Some(&s), true, 1999, &names(), OVERLAP), Step::Reissue);
    s.serving = Validity {
        issued: 1999,
        not_after: 2299,
    };
    assert_eq!(plan(Some(&s), true, 2000, &names(), OVERLAP), Step::StageCa);
    s.next = Some(Validity {
        issued: 2000,
        not_after: 5000,
    });
    s.bundle_changed = 2000;
    // Not before the overlap: the API server may not trust it yet.
    assert_eq!(plan(Some(&s), true, 2009, &names(), OVERLAP), Step::Nothing);
    assert_eq!(
        plan(Some(&s), true, 2010, &names(), OVERLAP),
        Step::PromoteCa
    );
    s.signer = s.next.take().unwrap();
    s.previous_until = Some(2020);
    s.bundle_changed = 2010;
    s.serving = Validity {
        issued: 2010,
        not_after: 2310,
    };
    // The old CA stays for the overlap, then goes.
    assert_eq!(plan(Some(&s), true, 2019, &names(), OVERLAP), Step::Nothing);
    assert_eq!(
        plan(Some(&s), true, 2020, &names(), OVERLAP),
        Step::DropPrevious
    );
}

#[test]
fn a_secret_without_the_cas_key_replaces_its_ca() {
    // Written before renewal existed: nothing can be re-issued until a
    // CA with a key signs.
    let legacy = LEGACY;
    assert_eq!(
        plan(Some(&legacy), false, 100, &names(), OVERLAP),
        Step::StageCa
    );
    let mut staged = legacy.clone();
    staged.next = Some(Validity {
        issued: 100,
        not_after: 1000,
    });
    staged.bundle_changed = 100;
    assert_eq!(
        plan(Some(&staged), false, 105, &names(), OVERLAP),
        Step::Nothing
    );
    assert_eq!(
        plan(Some(&staged), false, 110, &names(), OVERLAP),
        Step::PromoteCa
    );
}

fn config(dir: &std::path::Path) -> CertConfig {
    CertConfig {
        namespace: "rotor-system".into(),
        secret: "rotor-webhook-tls".into(),
        names: names(),
        webhook: "rotor-webhook".into(),
        dir: dir.to_owned(),
        owner: None,
        lifetimes: Lifetimes {
            serving: Duration::from_secs(300),
            ca: Duration::from_secs(3000),
        },
        overlap: OVERLAP,
    }
}

/// Through the Secret and back: the bundle holds the right CAs at each
/// step, and the state survives the round trip.
#[test]
fn the_bundle_follows_the_steps_through_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let round = |m: &Material| Material::read(&m.to_secret(&cfg, None)).unwrap();
    let fresh = Material::fresh(&cfg, 1000).unwrap();
    let first_ca = fresh.signer_cert.clone();
    assert_eq!(fresh.bundle(), first_ca);
    assert_eq!(fresh.state.serving.not_after, 1300);
    let staged = round(&fresh).apply(Step::StageCa, &cfg, 3000).unwrap();
    let second_ca = staged.next.as_ref().unwrap().cert_pem.clone();
    assert_eq!(round(&staged).bundle(), format!("{first_ca}{second_ca}"));
    let promoted = round(&staged).apply(Step::PromoteCa, &cfg, 3010).unwrap();
    assert_eq!(promoted.signer_cert, second_ca);
    assert_eq!(round(&promoted).bundle(), format!("{second_ca}{first_ca}"));
    assert_eq!(promoted.state.previous_until, Some(3020));
    assert_eq!(promoted.state.serving.issued, 3010);
    let dropped = round(&promoted)
        .apply(Step::DropPrevious, &cfg, 3020)
        .unwrap();
    assert_eq!(round(&dropped).bundle(), second_ca);
    assert_eq!(round(&dropped).state, dropped.state);
}
