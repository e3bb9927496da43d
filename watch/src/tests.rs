//! Tests of the file watcher: bare names, kubelet swaps reported once, and
//! errors.

use std::time::Duration;

use super::*;

const CHANGES: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::DELETE);

#[test]
fn a_bare_file_name_is_watched_in_the_current_directory() {
    assert_eq!(dir_of(Path::new("annotations")), Path::new("."));
    assert_eq!(
        dir_of(Path::new("/etc/rotor/pod/annotations")),
        Path::new("/etc/rotor/pod")
    );
    assert_eq!(dir_of(Path::new("tls/tls.crt")), Path::new("tls"));
}

/// The kubelet's swap is a burst of events; the watcher reports it once,
/// after the debounce, with every event of the burst counted.
#[tokio::test(start_paused = true)]
async fn a_burst_of_events_settles_into_one_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut watch = DirWatch::new(dir.path(), CHANGES, Duration::from_millis(100)).unwrap();
    for i in 0..5 {
        std::fs::write(dir.path().join(format!("f{i}")), "x").unwrap();
    }
    let started = tokio::time::Instant::now();
    let settled = watch.settled().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "reported before the debounce"
    );
    // Each file: CREATE and CLOSE_WRITE.
    assert_eq!(settled.events, 10, "{settled:?}");
    // The next change is a burst of its own.
    std::fs::remove_file(dir.path().join("f0")).unwrap();
    assert_eq!(watch.settled().await.unwrap().events, 1);
}

/// Events that come during the debounce join the burst being settled.
#[tokio::test(start_paused = true)]
async fn events_during_the_debounce_join_the_burst() {
    let dir = tempfile::tempdir().unwrap();
    let mut watch = DirWatch::new(dir.path(), CHANGES, Duration::from_millis(100)).unwrap();
    std::fs::write(dir.path().join("a"), "x").unwrap();
    let path = dir.path().join("b");
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(path, "y").unwrap();
    });
    assert_eq!(watch.settled().await.unwrap().events, 4);
    late.await.unwrap();
}

/// The mask decides which events count: a write to an existing file is
/// `MODIFY` and `CLOSE_WRITE`, so a watch for `MODIFY` alone counts one.
#[tokio::test(start_paused = true)]
async fn only_the_masked_events_count() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), "x").unwrap();
    let mut watch =
        DirWatch::new(dir.path(), WatchMask::MODIFY, Duration::from_millis(10)).unwrap();
    std::fs::write(dir.path().join("a"), "y").unwrap();
    assert_eq!(watch.settled().await.unwrap().events, 1);
}

#[tokio::test]
async fn a_missing_directory_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let err = DirWatch::new(&missing, CHANGES, Duration::ZERO).unwrap_err();
    assert!(matches!(err, Error::Watch { .. }), "{err:?}");
    assert_eq!(err.metric_label(), "watch");
    assert_eq!(err.io().kind(), std::io::ErrorKind::NotFound);
    assert!(
        err.to_string()
            .starts_with(&format!("cannot watch {}: ", missing.display())),
        "{err}"
    );
}

/// Narrowed to the kubelet's names, the watch ignores every other entry
/// of the directory: a log written there again and again is no change; the
/// `..data` swap and the file's own creation are.
#[tokio::test(start_paused = true)]
async fn only_the_named_entries_count() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("annotations");
    let mut watch = DirWatch::parent_of(&file, CHANGES, Duration::from_millis(10))
        .unwrap()
        .only(DirWatch::kubelet_names(&file));
    for i in 0..20 {
        std::fs::write(dir.path().join("sidecar.log"), format!("line {i}")).unwrap();
    }
    // The kubelet's swap: a new link renamed over `..data`.
    std::os::unix::fs::symlink("..2026", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    // Only the MOVED_TO of `..data` counts (its CREATE was `..data_tmp`).
    assert_eq!(watch.settled().await.unwrap().events, 1);
    std::fs::write(dir.path().join("sidecar.log"), "more").unwrap();
    std::fs::write(&file, "x").unwrap();
    // CREATE and CLOSE_WRITE of the file; the log is not counted.
    assert_eq!(watch.settled().await.unwrap().events, 2);
}

#[test]
fn metric_labels_lists_every_label() {
    rotor_fixtures::metric_labels::assert_lists_every_label(
        &Error::METRIC_LABELS,
        include_str!("lib.rs"),
    );
}

/// A cause for a polling watch in tests: what inotify answers a user past
/// `max_user_instances`.
fn out_of_instances() -> Error {
    Error::Init(std::io::Error::from_raw_os_error(
        rustix::io::Errno::MFILE.raw_os_error(),
    ))
}

#[test]
fn only_inotify_limits_are_limits() {
    assert!(out_of_instances().is_limit());
    let no_space = Error::Watch {
        dir: "d".into(),
        source: std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()),
    };
    assert!(no_space.is_limit());
    let missing = Error::Watch {
        dir: "d".into(),
        source: std::io::ErrorKind::NotFound.into(),
    };
    assert!(!missing.is_limit());
}

/// Without inotify, the kubelet's swap of `..data` is seen at the next
/// check, once; nothing is reported while nothing changes, and a file
/// replaced in place (outside a cluster) is seen too.
#[tokio::test(start_paused = true)]
async fn polling_sees_the_data_link_swap_and_the_file_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("annotations");
    std::fs::write(&file, "a").unwrap();
    std::os::unix::fs::symlink("..2026_1", dir.path().join("..data")).unwrap();
    let every = Duration::from_secs(1);
    let mut watch = DirWatch::polling(&file, every, out_of_instances());
    assert_eq!(watch.fallback().map(Error::metric_label), Some("inotify"));

    // Nothing changes: no change within several checks.
    let quiet = tokio::time::timeout(every * 5, watch.settled()).await;
    assert!(quiet.is_err(), "reported a change that did not happen");

    // The kubelet's swap.
    std::os::unix::fs::symlink("..2026_2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(watch.settled().await, Some(Settled { events: 1 }));
    assert!(started.elapsed() <= every, "seen later than one check");
    let quiet = tokio::time::timeout(every * 3, watch.settled()).await;
    assert!(quiet.is_err(), "one swap reported twice");

    // The file replaced by a rename, as the tests' fake kubelet does.
    let tmp = dir.path().join("annotations.tmp");
    std::fs::write(&tmp, "b").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    assert_eq!(watch.settled().await, Some(Settled { events: 1 }));
}

/// With inotify available, `file_or_poll` watches with it; a missing
/// directory is still an error, not a silent poll.
#[tokio::test]
async fn file_or_poll_uses_inotify_when_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("annotations");
    let watch =
        DirWatch::file_or_poll(&file, CHANGES, Duration::ZERO, Duration::from_secs(1)).unwrap();
    assert!(watch.fallback().is_none());
    let missing = dir.path().join("missing").join("annotations");
    let err = DirWatch::file_or_poll(&missing, CHANGES, Duration::ZERO, Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(err.io().kind(), std::io::ErrorKind::NotFound);
}
