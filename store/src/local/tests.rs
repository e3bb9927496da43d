use std::sync::Arc;

use rotor_envelope::{ExposeSecret, KeyFileKek};

use super::*;

const CANARY: &[u8] = b"canary-5d1e77-never-in-plain-sight";

fn kek(seed: u8) -> Arc<dyn Kek> {
    Arc::new(KeyFileKek::from_bytes(&[seed; 32]))
}

fn store(dir: &tempfile::TempDir, seed: u8) -> LocalStore {
    LocalStore::new(dir.path().join("store.rotor"), kek(seed))
}

fn value(s: &LocalStore, name: &str, sel: Selector) -> Vec<u8> {
    s.get(name, sel).unwrap().value.expose_secret().to_vec()
}

#[test]
fn round_trip_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    assert!(matches!(
        s.get("db", Selector::Current),
        Err(Error::Missing { .. })
    ));
    let m1 = s.put("db", b"one", WriteAs::Current).unwrap();
    let m2 = s.put("db", CANARY, WriteAs::Current).unwrap();
    assert_eq!((m1.version, m2.version), (1, 2));
    assert_eq!(value(&s, "db", Selector::Current), CANARY);
    assert_eq!(value(&s, "db", Selector::Version(1.into())), b"one");
    assert_eq!(value(&s, "db", Selector::Stage(Stage::Previous)), b"one");
    assert_eq!(s.current_version("db").unwrap(), 2);
    let h = s.history("db").unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[1].size, CANARY.len());
    assert_eq!(h[0].stages.to_string(), "PREVIOUS");
    // A second handle (another process, in effect) sees the same data.
    let other = store(&dir, 1);
    assert_eq!(value(&other, "db", Selector::Current), CANARY);
}

#[test]
fn stage_labels_follow_aws_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    s.put("db", b"v1", WriteAs::Current).unwrap();
    s.put("db", b"v2", WriteAs::Current).unwrap();
    let p = s.put("db", b"v3", WriteAs::Pending).unwrap();
    assert_eq!(p.stages.to_string(), "PENDING");
    // Pending does not change what consumers read.
    assert_eq!(s.current_version("db").unwrap(), 2);
    assert_eq!(value(&s, "db", Selector::Stage(Stage::Pending)), b"v3");
    // A newer pending takes the label.
    s.put("db", b"v4", WriteAs::Pending).unwrap();
    let stages: Vec<String> = s
        .history("db")
        .unwrap()
        .iter()
        .map(|m| m.stages.to_string())
        .collect();
    assert_eq!(stages, ["PREVIOUS", "CURRENT", "-", "PENDING"]);
    // Promote: pending -> current, current -> previous, old previous loses it.
    s.put("db", b"v5", WriteAs::Current).unwrap();
    s.promote("db", 4).unwrap();
    let stages: Vec<String> = s
        .history("db")
        .unwrap()
        .iter()
        .map(|m| m.stages.to_string())
        .collect();
    assert_eq!(stages, ["-", "-", "-", "CURRENT", "PREVIOUS"]);
    // Promoting the current version again is a no-op.
    s.promote("db", 4).unwrap();
    assert_eq!(s.current_version("db").unwrap(), 4);
    // Retire: not the current one; others vanish for good.
    let err = s.retire("db", 4).unwrap_err().to_string();
    assert!(err.contains("is CURRENT and cannot be retired"), "{err}");
    s.retire("db", 5).unwrap();
    let err = s
        .get("db", Selector::Version(5.into()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("has no version 5 (versions: 1, 2, 3, 4)"),
        "{err}"
    );
    let err = s
        .get("db", Selector::Stage(Stage::Previous))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no version labelled PREVIOUS"), "{err}");
    // Version numbers are never reused.
    assert_eq!(s.put("db", b"v6", WriteAs::Current).unwrap().version, 6);
}

#[test]
fn list_summarises_every_secret() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    s.put("b", b"x", WriteAs::Current).unwrap();
    s.put("a", b"x", WriteAs::Current).unwrap();
    s.put("a", b"y", WriteAs::Pending).unwrap();
    let l = s.list().unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(
        (l[0].name.as_str(), l[0].current, l[0].pending),
        ("a", Some(1), Some(2))
    );
    assert_eq!(l[1].name, "b");
}

#[test]
fn unknown_secret_and_bad_input_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    s.put("db", b"x", WriteAs::Current).unwrap();
    let err = s.get("nope", Selector::Current).err().unwrap().to_string();
    assert!(err.contains("secret \"nope\" not found in store"), "{err}");
    let err = s
        .put("../x", b"x", WriteAs::Current)
        .unwrap_err()
        .to_string();
    assert!(err.contains("secret name \"../x\""), "{err}");
    let err = s.put("db", b"", WriteAs::Current).unwrap_err().to_string();
    assert!(err.contains("is 0 bytes; expected 1 to"), "{err}");
}

#[test]
fn canary_never_appears_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    s.put("db", CANARY, WriteAs::Current).unwrap();
    s.put("db", CANARY, WriteAs::Pending).unwrap();
    let bytes = std::fs::read(s.path()).unwrap();
    assert!(!bytes.windows(CANARY.len()).any(|w| w == CANARY));
    let mode = std::fs::metadata(s.path()).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
}

/// A fresh handle per check, so nothing is served from a cache.
fn read_fresh(path: &Path, seed: u8) -> Result<Vec<u8>> {
    let s = LocalStore::new(path, kek(seed));
    s.get("db", Selector::Current)
        .map(|v| v.value.expose_secret().to_vec())
}

#[test]
fn any_flipped_byte_or_truncation_fails_the_integrity_check() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    s.put("db", CANARY, WriteAs::Current).unwrap();
    s.put("api", b"k", WriteAs::Current).unwrap();
    let good = std::fs::read(s.path()).unwrap();
    let bad_path = dir.path().join("bad.rotor");
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        std::fs::write(&bad_path, &bad).unwrap();
        let err = read_fresh(&bad_path, 1).expect_err(&format!("byte {i} flip accepted"));
        assert!(matches!(err, Error::Corrupt { .. }), "byte {i}: {err}");
        assert!(err.to_string().contains("failed its integrity check"));
    }
    for len in 0..good.len() {
        std::fs::write(&bad_path, &good[..len]).unwrap();
        let err = read_fresh(&bad_path, 1).expect_err(&format!("truncation to {len} accepted"));
        assert!(matches!(err, Error::Corrupt { .. }), "len {len}: {err}");
    }
}

/// Rewrites a store's body through `edit` and re-signs it with its own MAC
/// key and checksum: what an attacker holding the KEK could do, and the
/// strongest case for the per-record AAD.
fn resign(s: &LocalStore, edit: impl FnOnce(&mut State)) {
    let mut state = s.snapshot().unwrap().state.clone();
    edit(&mut state);
    std::fs::write(s.path(), encode(&state).unwrap()).unwrap();
}

#[test]
fn a_record_swapped_in_from_another_store_is_refused() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (a, b) = (store(&dir_a, 1), store(&dir_b, 1));
    a.put("db", &vec![b'a'; CANARY.len()], WriteAs::Current)
        .unwrap();
    b.put("db", CANARY, WriteAs::Current).unwrap();
    let foreign = b.snapshot().unwrap().state.secrets["db"].versions[0]
        .sealed
        .clone();

    // Pasted raw: the file's MAC and checksum no longer match.
    let mut raw = std::fs::read(a.path()).unwrap();
    let own = a.snapshot().unwrap().state.secrets["db"].versions[0]
        .sealed
        .clone();
    let at = raw.windows(own.len()).position(|w| *w == *own).unwrap();
    raw[at..at + own.len()].copy_from_slice(&foreign);
    std::fs::write(dir_a.path().join("pasted.rotor"), &raw).unwrap();
    let err = read_fresh(&dir_a.path().join("pasted.rotor"), 1).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");

    // Pasted and re-signed: the record's AAD names the other store.
    resign(&a, |state| {
        state.secrets.get_mut("db").unwrap().versions[0].sealed = foreign;
    });
    let err = read_fresh(a.path(), 1).unwrap_err();
    let text = format!("{:#}", anyhow_chain(&err));
    assert!(text.contains("integrity check failed"), "{text}");
}

#[test]
fn reordered_or_dropped_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    s.put("db", b"old", WriteAs::Current).unwrap();
    s.put("db", CANARY, WriteAs::Current).unwrap();
    // Swap the sealed records of versions 1 and 2 and re-sign.
    resign(&s, |state| {
        let v = &mut state.secrets.get_mut("db").unwrap().versions;
        let first = v[0].sealed.clone();
        v[0].sealed = v[1].sealed.clone();
        v[1].sealed = first;
    });
    assert!(read_fresh(s.path(), 1).is_err());
}

#[test]
fn the_wrong_key_is_refused_naming_the_key_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    s.put("db", CANARY, WriteAs::Current).unwrap();
    let err = read_fresh(s.path(), 2).unwrap_err();
    let text = anyhow_chain(&err);
    assert!(
        text.contains("not available") && text.contains(kek(1).key_id()),
        "{text}"
    );
    assert!(!text.contains("canary"));
}

#[test]
fn rewrap_moves_every_record_to_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    s.put("db", b"one", WriteAs::Current).unwrap();
    s.put("db", CANARY, WriteAs::Current).unwrap();
    s.put("api", b"k", WriteAs::Current).unwrap();
    assert_eq!(s.rewrap(&*kek(2)).unwrap(), 3);
    assert!(read_fresh(s.path(), 1).is_err());
    assert_eq!(read_fresh(s.path(), 2).unwrap(), CANARY);
    let s2 = LocalStore::new(s.path(), kek(2));
    assert_eq!(value(&s2, "db", Selector::Version(1.into())), b"one");
}

#[test]
fn writes_through_one_handle_are_seen_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (store(&dir, 1), store(&dir, 1));
    a.put("db", b"1", WriteAs::Current).unwrap();
    assert_eq!(b.current_version("db").unwrap(), 1);
    a.put("db", b"2", WriteAs::Current).unwrap();
    assert_eq!(b.current_version("db").unwrap(), 2);
    b.put("db", b"3", WriteAs::Current).unwrap();
    assert_eq!(a.current_version("db").unwrap(), 3);
}

#[test]
fn threads_writing_at_once_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.rotor");
    std::thread::scope(|scope| {
        for t in 0..4 {
            let path = path.clone();
            scope.spawn(move || {
                let s = LocalStore::new(path, kek(1));
                for i in 0..25 {
                    s.put(
                        &format!("t{t}"),
                        format!("{i}").as_bytes(),
                        WriteAs::Current,
                    )
                    .unwrap();
                }
            });
        }
    });
    let s = LocalStore::new(path, kek(1));
    for t in 0..4 {
        assert_eq!(s.history(&format!("t{t}")).unwrap().len(), 25);
    }
}

fn anyhow_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Puts `bytes` in place of the store file the way `cp` + `mv` would: a new
/// file renamed over it.
fn put_back(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("copy");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[test]
fn an_older_copy_put_back_is_refused_by_a_running_handle() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    s.put("db", b"old", WriteAs::Current).unwrap();
    let old = std::fs::read(s.path()).unwrap();
    assert_eq!(s.info().unwrap().generation, 1);
    s.put("db", CANARY, WriteAs::Current).unwrap();
    let reader = s.clone();
    assert_eq!(value(&reader, "db", Selector::Current), CANARY);
    let newest = std::fs::read(s.path()).unwrap();

    put_back(s.path(), &old);
    let err = reader.get("db", Selector::Current).err().unwrap();
    assert!(
        matches!(
            err,
            Error::Replayed {
                seen: 2,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.metric_label(), "replayed");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "store file {} went back from generation 2 to 1: an older copy was put in place; refusing it",
            s.path().display()
        )),
        "{text}"
    );
    assert!(
        !text.contains(std::str::from_utf8(CANARY).unwrap()),
        "{text}"
    );
    // Nothing is served from it, and nothing is written over it.
    assert!(matches!(
        reader.current_version("db"),
        Err(Error::Replayed { .. })
    ));
    assert!(matches!(reader.list(), Err(Error::Replayed { .. })));
    assert!(matches!(reader.info(), Err(Error::Replayed { .. })));
    assert!(matches!(
        s.put("db", b"over it", WriteAs::Current),
        Err(Error::Replayed { .. })
    ));
    assert_eq!(std::fs::read(s.path()).unwrap(), old);

    // A process that starts fresh cannot tell: it reads the older copy.
    // That is the residual risk; the generation shows it to an audit.
    let fresh = store(&dir, 1);
    assert_eq!(value(&fresh, "db", Selector::Current), b"old");
    assert_eq!(fresh.info().unwrap().generation, 1);

    // The newest copy put back is accepted again.
    put_back(s.path(), &newest);
    assert_eq!(value(&reader, "db", Selector::Current), CANARY);
    assert_eq!(reader.info().unwrap().generation, 2);
}

#[test]
fn writes_on_top_of_an_older_copy_are_accepted_once_they_pass_the_seen_generation() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    s.put("db", b"1", WriteAs::Current).unwrap();
    let old = std::fs::read(s.path()).unwrap();
    s.put("db", b"2", WriteAs::Current).unwrap();
    s.put("db", b"3", WriteAs::Current).unwrap();
    put_back(s.path(), &old);
    assert!(matches!(
        s.current_version("db"),
        Err(Error::Replayed {
            seen: 3,
            found: 1,
            ..
        })
    ));
    // Another writer goes on from the older copy: generation 2 is still
    // behind, generation 3 is not.
    let other = store(&dir, 1);
    other.put("db", b"2'", WriteAs::Current).unwrap();
    assert!(matches!(
        s.current_version("db"),
        Err(Error::Replayed { found: 2, .. })
    ));
    other.put("db", b"3'", WriteAs::Current).unwrap();
    assert_eq!(value(&s, "db", Selector::Current), b"3'");
}

#[test]
fn a_store_made_again_by_the_same_handle_goes_on_from_its_generation() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    for v in [b"1", b"2", b"3"] {
        s.put("db", v, WriteAs::Current).unwrap();
    }
    std::fs::remove_file(s.path()).unwrap();
    assert!(matches!(
        s.get("db", Selector::Current),
        Err(Error::Missing { .. })
    ));
    s.put("db", b"again", WriteAs::Current).unwrap();
    assert_eq!(s.info().unwrap().generation, 4);
    // Another process's write on top of it is not taken for a replay.
    store(&dir, 1).put("db", b"next", WriteAs::Current).unwrap();
    assert_eq!(value(&s, "db", Selector::Current), b"next");
}

/// Readers that share one handle while another process writes: a thread
/// that opened the file just before a rename decodes an older generation
/// than one that opened it after, which is no replay.
#[test]
fn concurrent_readers_never_take_a_racing_write_for_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let writer = store(&dir, 1);
    writer.put("db", b"0", WriteAs::Current).unwrap();
    let reader = store(&dir, 1);
    let done = std::sync::atomic::AtomicBool::new(false);
    let reads = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (reader, done, reads) = (reader.clone(), &done, &reads);
                scope.spawn(move || {
                    let mut last = 0;
                    while !done.load(std::sync::atomic::Ordering::Acquire) {
                        let v = reader.current_version("db").unwrap();
                        assert!(v >= last, "went back from {last} to {v}");
                        last = v;
                        reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for i in 1..=200 {
            writer
                .put("db", format!("{i}").as_bytes(), WriteAs::Current)
                .unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        for r in readers {
            r.join().unwrap();
        }
    });
    assert!(reads.load(std::sync::atomic::Ordering::Relaxed) > 200);
    assert_eq!(reader.current_version("db").unwrap(), 201);
}
