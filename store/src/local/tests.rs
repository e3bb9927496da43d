//! Tests of the local store: round trips, stage labels, retention, tampering,
//! replay, concurrency and the file format.

use std::sync::Arc;

use rotor_envelope::{ExposeSecret, KeyFileKek};

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use ring::{digest, hmac};
use rotor_envelope::Kek;
use rotor_envelope::wire::Writer;

use super::format::{FORMAT, MAGIC};
use super::state::{Sealed, State};
use super::*;
use crate::{Error, Result, Selector, Stage, Stages, WriteAs};

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
    assert_eq!(s.current_number("db").unwrap(), 2);
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
    assert_eq!(s.current_number("db").unwrap(), 2);
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
    s.promote_number("db", 4).unwrap();
    let stages: Vec<String> = s
        .history("db")
        .unwrap()
        .iter()
        .map(|m| m.stages.to_string())
        .collect();
    assert_eq!(stages, ["-", "-", "-", "CURRENT", "PREVIOUS"]);
    // Promoting the current version again is a no-op.
    s.promote_number("db", 4).unwrap();
    assert_eq!(s.current_number("db").unwrap(), 4);
    // Retire: not the current one; others vanish for good.
    let err = s.retire_number("db", 4).unwrap_err().to_string();
    assert!(err.contains("is CURRENT and cannot be retired"), "{err}");
    s.retire_number("db", 5).unwrap();
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
    std::fs::write(s.path(), encoded(s, &state)).unwrap();
}

fn encoded(s: &LocalStore, state: &State) -> Vec<u8> {
    let mut out = Vec::new();
    s.encode(state, &mut out).unwrap();
    out
}

/// The sealed record of a secret's `index`th version, as stored.
fn record_of(s: &LocalStore, name: &str, index: usize) -> Vec<u8> {
    let loaded = s.snapshot().unwrap();
    let state = &loaded.state;
    s.record(
        state.source.as_deref(),
        &state.secrets[name].versions[index].sealed,
    )
    .unwrap()
    .into_owned()
}

#[test]
fn a_record_swapped_in_from_another_store_is_refused() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (a, b) = (store(&dir_a, 1), store(&dir_b, 1));
    a.put("db", &vec![b'a'; CANARY.len()], WriteAs::Current)
        .unwrap();
    b.put("db", CANARY, WriteAs::Current).unwrap();
    let foreign = record_of(&b, "db", 0);

    // Pasted raw: the file's MAC and checksum no longer match.
    let mut raw = std::fs::read(a.path()).unwrap();
    let own = record_of(&a, "db", 0);
    let at = raw.windows(own.len()).position(|w| *w == *own).unwrap();
    raw[at..at + own.len()].copy_from_slice(&foreign);
    std::fs::write(dir_a.path().join("pasted.rotor"), &raw).unwrap();
    let err = read_fresh(&dir_a.path().join("pasted.rotor"), 1).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");

    // Pasted and re-signed: the record's AAD names the other store.
    resign(&a, |state| {
        state.secrets.get_mut("db").unwrap().versions[0].sealed = Sealed::Bytes(foreign.into());
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
    assert_eq!(b.current_number("db").unwrap(), 1);
    a.put("db", b"2", WriteAs::Current).unwrap();
    assert_eq!(b.current_number("db").unwrap(), 2);
    b.put("db", b"3", WriteAs::Current).unwrap();
    assert_eq!(a.current_number("db").unwrap(), 3);
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
        // Every write got its own number; retention keeps the newest 10.
        assert_eq!(s.current_number(&format!("t{t}")).unwrap(), 25);
        assert_eq!(s.history(&format!("t{t}")).unwrap().len(), 10);
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
        reader.current_number("db"),
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
        s.current_number("db"),
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
        s.current_number("db"),
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
                        let v = reader.current_number("db").unwrap();
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
    assert_eq!(reader.current_number("db").unwrap(), 201);
}

fn labelled(s: &LocalStore, name: &str) -> Vec<(u64, Stages)> {
    s.history(name)
        .unwrap()
        .into_iter()
        .filter(|m| !m.stages.is_empty())
        .map(|m| (m.version, m.stages))
        .collect()
}

#[test]
fn retention_never_drops_a_labelled_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    // The tightest limit: one version. CURRENT, PENDING and PREVIOUS on
    // three different versions all stay.
    s.put_with("db", b"v1", WriteAs::Current, Some(1)).unwrap();
    s.put("db", b"v2", WriteAs::Current).unwrap();
    s.put("db", b"v3", WriteAs::Pending).unwrap();
    assert_eq!(
        labelled(&s, "db")
            .iter()
            .map(|(n, st)| format!("{n}:{st}"))
            .collect::<Vec<_>>(),
        ["1:PREVIOUS", "2:CURRENT", "3:PENDING"]
    );
    assert_eq!(s.history("db").unwrap().len(), 3);
    for stage in Stage::ALL {
        s.get("db", Selector::Stage(stage)).unwrap();
    }
    // A fourth, unlabelled version is what goes.
    s.put("db", b"v4", WriteAs::Pending).unwrap();
    let kept: Vec<u64> = s.history("db").unwrap().iter().map(|m| m.version).collect();
    assert_eq!(kept, [1, 2, 4]);

    // Random writes, promotions and retirements under a limit of 3: after
    // every step each labelled version reads by number and by stage, the
    // labels the step set are where it set them, numbers only grow, and the
    // secret holds more than 3 versions only when all of them are labelled.
    let rng = crate::random::Seeded::new(7);
    s.set_max_versions(Some("db"), 3).unwrap();
    let mut last_number = 4;
    for step in 0..400 {
        let before = labelled(&s, "db");
        let history = s.history("db").unwrap();
        match rng.below(4) {
            0 => {
                let m = s.put("db", b"c", WriteAs::Current).unwrap();
                assert!(m.version > last_number);
                last_number = m.version;
                assert_eq!(s.current_number("db").unwrap(), m.version);
                let old = before.iter().find(|(_, st)| st.contains(Stage::Current));
                if let Some((old, _)) = old {
                    let previous = s
                        .version_meta("db", Selector::Stage(Stage::Previous))
                        .unwrap();
                    assert_eq!(previous.version, *old, "step {step}");
                }
            }
            1 => {
                let m = s.put("db", b"p", WriteAs::Pending).unwrap();
                assert!(m.version > last_number);
                last_number = m.version;
                let pending = s
                    .version_meta("db", Selector::Stage(Stage::Pending))
                    .unwrap();
                assert_eq!(pending.version, m.version);
            }
            2 => {
                let pick = &history[rng.below(history.len() as u64) as usize];
                let old = s.current_number("db").unwrap();
                s.promote_number("db", pick.version).unwrap();
                assert_eq!(s.current_number("db").unwrap(), pick.version);
                if old != pick.version {
                    let previous = s
                        .version_meta("db", Selector::Stage(Stage::Previous))
                        .unwrap();
                    assert_eq!(previous.version, old, "step {step}");
                }
            }
            _ => {
                if let Some(pick) = history.iter().find(|m| !m.stages.contains(Stage::Current)) {
                    s.retire_number("db", pick.version).unwrap();
                }
            }
        }
        let history = s.history("db").unwrap();
        let after = labelled(&s, "db");
        for (n, stages) in &after {
            s.get("db", Selector::Version((*n).into())).unwrap();
            for stage in stages.iter() {
                assert_eq!(
                    s.version_meta("db", Selector::Stage(stage))
                        .unwrap()
                        .version,
                    *n
                );
            }
        }
        assert!(
            history.len() <= 3 || history.iter().all(|m| !m.stages.is_empty()),
            "step {step}: {} versions, not all labelled",
            history.len()
        );
        assert!(history.windows(2).all(|w| w[0].version < w[1].version));
    }
}

#[test]
fn a_version_removed_by_retention_is_not_found_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    for i in 1..=12 {
        s.put("db", format!("v{i}").as_bytes(), WriteAs::Current)
            .unwrap();
    }
    let kept: Vec<u64> = s.history("db").unwrap().iter().map(|m| m.version).collect();
    assert_eq!(kept, (3..=12).collect::<Vec<_>>());
    let err = s.get("db", Selector::Version(2.into())).err().unwrap();
    assert!(
        matches!(
            err,
            Error::VersionRemoved {
                version: 2,
                max_versions: 10,
                removed_through: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_not_found());
    assert_eq!(err.metric_label(), "not_found");
    let text = err.to_string();
    assert!(
        text.contains("no longer has version 2: retention removed it")
            && text.contains("keeps its newest 10 versions"),
        "{text}"
    );
    // Promote and retire say the same.
    assert!(matches!(
        s.promote_number("db", 1),
        Err(Error::VersionRemoved { version: 1, .. })
    ));
    // A version never written is another error.
    let err = s.get("db", Selector::Version(13.into())).err().unwrap();
    assert!(matches!(err, Error::VersionNotFound { .. }), "{err}");
    // Numbers are never reused.
    assert_eq!(s.put("db", b"v13", WriteAs::Current).unwrap().version, 13);
    assert!(matches!(
        s.get("db", Selector::Version(3.into())),
        Err(Error::VersionRemoved {
            version: 3,
            removed_through: 3,
            ..
        })
    ));
    assert_eq!(value(&s, "db", Selector::Version(4.into())), b"v4");
}

#[test]
fn max_versions_is_kept_per_store_and_per_secret() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    for i in 0..6 {
        s.put("a", format!("{i}").as_bytes(), WriteAs::Current)
            .unwrap();
        s.put_with("b", format!("{i}").as_bytes(), WriteAs::Current, Some(5))
            .unwrap();
    }
    assert_eq!(s.info().unwrap().max_versions, DEFAULT_MAX_VERSIONS);
    assert_eq!(s.max_versions("a").unwrap(), (10, false));
    assert_eq!(s.max_versions("b").unwrap(), (5, true));
    assert_eq!(s.history("b").unwrap().len(), 5);
    // Lowering the store's limit trims at once, except where a secret has
    // its own; another handle (process) reads both settings from the file.
    assert_eq!(s.set_max_versions(None, 2).unwrap(), 4);
    let other = store(&dir, 1);
    assert_eq!(other.info().unwrap().max_versions, 2);
    assert_eq!(other.history("a").unwrap().len(), 2);
    assert_eq!(other.history("b").unwrap().len(), 5);
    // 0: the secret follows the store again.
    assert_eq!(other.set_max_versions(Some("b"), 0).unwrap(), 3);
    assert_eq!(s.max_versions("b").unwrap(), (2, false));
    // 0 for the store: the default.
    s.set_max_versions(None, 0).unwrap();
    assert_eq!(s.info().unwrap().max_versions, DEFAULT_MAX_VERSIONS);
    assert!(matches!(
        s.set_max_versions(Some("nope"), 3),
        Err(Error::SecretNotFound { .. })
    ));
}

#[test]
fn the_file_stays_proportional_to_the_live_data() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    let value = vec![0x42u8; 4096];
    for _ in 0..300 {
        s.put("db", &value, WriteAs::Current).unwrap();
    }
    let size = std::fs::metadata(s.path()).unwrap().len();
    // Ten sealed 4 KiB records and their headers.
    assert!(size < 10 * 4096 + 4096, "{size} bytes");
    assert_eq!(s.info().unwrap().bytes, size);
    assert_eq!(s.info().unwrap().versions, 10);
}

/// Neither a write nor a fresh read keeps any sealed record in memory: the
/// index says where each is in the verified file.
#[test]
fn the_index_holds_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    s.put("db", b"one", WriteAs::Current).unwrap();
    s.put("db", CANARY, WriteAs::Pending).unwrap();
    let in_file = |s: &LocalStore| {
        let loaded = s.snapshot().unwrap();
        loaded
            .state
            .secrets
            .values()
            .flat_map(|s| &s.versions)
            .all(|v| matches!(v.sealed, Sealed::InFile { .. }))
    };
    assert!(in_file(&s));
    let fresh = store(&dir, 1);
    assert!(in_file(&fresh));
    assert_eq!(value(&fresh, "db", Selector::Stage(Stage::Pending)), CANARY);
    assert_eq!(fresh.history("db").unwrap()[1].size, CANARY.len());
}

/// The warm check is one `stat`: it sees another process's write at once,
/// and the handle shares one decoded generation until then.
#[test]
fn a_generation_is_decoded_once_and_shared() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (store(&dir, 1), store(&dir, 1));
    a.put("db", b"1", WriteAs::Current).unwrap();
    assert!(b.fresh().is_none());
    let first = b.snapshot().unwrap();
    let again = b.clone().snapshot().unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    assert!(Arc::ptr_eq(&first, &b.fresh().unwrap()));
    a.put("db", b"2", WriteAs::Current).unwrap();
    assert!(b.fresh().is_none());
    assert_eq!(b.current_number("db").unwrap(), 2);
}

/// A record changed in place after the file was verified, with its times
/// put back so that the handle does not notice the change: opening it
/// fails its AEAD tag; no other value is served.
#[test]
fn a_record_changed_in_place_after_verification_fails_its_tag() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    s.put("db", CANARY, WriteAs::Current).unwrap();
    let reader = store(&dir, 1);
    assert_eq!(value(&reader, "db", Selector::Current), CANARY);
    let (offset, len) = match reader.snapshot().unwrap().state.secrets["db"].versions[0].sealed {
        Sealed::InFile { offset, len } => (offset, len),
        Sealed::Bytes(_) => unreachable!(),
    };
    let modified = std::fs::metadata(s.path()).unwrap().modified().unwrap();
    let file = OpenOptions::new().write(true).open(s.path()).unwrap();
    let last = offset + u64::from(len) - 1;
    let mut byte = [0u8; 1];
    File::open(s.path())
        .unwrap()
        .read_exact_at(&mut byte, last)
        .unwrap();
    file.write_all_at(&[byte[0] ^ 1], last).unwrap();
    file.set_modified(modified).unwrap();
    drop(file);
    assert!(reader.fresh().is_some(), "the change was noticed");
    let err = reader.get("db", Selector::Current).err().unwrap();
    assert!(
        anyhow_chain(&err).contains("integrity check failed"),
        "{err}"
    );
}

/// Stores written before retention (format 1) are read, and the first
/// write turns them into format 2.
#[test]
fn a_format_1_file_is_read_and_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    for i in 1..=3 {
        s.put("db", format!("v{i}").as_bytes(), WriteAs::Current)
            .unwrap();
    }
    let loaded = s.snapshot().unwrap();
    let state = &loaded.state;
    let mut w = Writer::default();
    w.bytes(MAGIC)
        .u8(1)
        .bytes(&state.store_id)
        .short("kek id", state.kek_id.as_bytes())
        .unwrap()
        .medium("wrapped MAC key", &state.wrapped_mac_key)
        .unwrap()
        .u64(state.generation)
        .u32(1);
    let secret = &state.secrets["db"];
    w.medium("secret name", b"db")
        .unwrap()
        .u64(secret.next_version)
        .u32(secret.versions.len() as u32);
    for (i, v) in secret.versions.iter().enumerate() {
        w.u64(v.number)
            .u64(v.created_at_ms)
            .u8(v.stages.bits())
            .long("sealed record", &record_of(&s, "db", i))
            .unwrap();
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, &state.mac_key[..]);
    let mac = hmac::sign(&key, w.as_slice());
    w.bytes(mac.as_ref());
    let checksum = digest::digest(&digest::SHA256, w.as_slice());
    w.bytes(checksum.as_ref());
    let old = dir.path().join("old.rotor");
    std::fs::write(&old, w.into_vec()).unwrap();

    let o = LocalStore::new(&old, kek(1));
    assert_eq!(value(&o, "db", Selector::Current), b"v3");
    assert_eq!(value(&o, "db", Selector::Version(1.into())), b"v1");
    assert_eq!(o.info().unwrap().max_versions, DEFAULT_MAX_VERSIONS);
    o.put("db", b"v4", WriteAs::Current).unwrap();
    assert_eq!(std::fs::read(&old).unwrap()[MAGIC.len()], FORMAT);
    assert_eq!(
        value(&store_at(&old), "db", Selector::Version(1.into())),
        b"v1"
    );
}

fn store_at(path: &Path) -> LocalStore {
    LocalStore::new(path, kek(1))
}

#[test]
fn promote_retire_and_rewrap_do_not_create_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, 1);
    let missing = |r: Result<()>| assert!(matches!(r, Err(Error::Missing { .. })));
    missing(s.promote_number("db", 1).map(drop));
    missing(s.retire_number("db", 1));
    missing(s.rewrap(&*kek(2)).map(drop));
    // Nothing was written, not even the lock file.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    s.put("db", b"v1", WriteAs::Current).unwrap();
    assert_eq!(s.promote_number("db", 1).unwrap().version, 1);
}
