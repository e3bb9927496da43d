//! Tests of the atomic writer: the kubelet layout, modes, swaps and clean-up,
//! on tmpfs.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use std::fs::File;
use std::io::Read;

use super::inventory::digest_of;
use super::names::{DATA_TMP, is_data_dir_name};
use super::*;

/// A scratch directory on tmpfs when the machine has one.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

fn opts() -> WriterOptions {
    WriterOptions {
        allow_disk: !Path::new("/dev/shm").is_dir(),
        owner: None,
        grace: Duration::from_secs(1),
        default_mode: 0o400,
    }
}

/// The report of a write that swapped in `changed` and dropped `removed`.
fn written(changed: &[&str], removed: &[&str]) -> Report {
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
    Report {
        changed: names(changed),
        removed: names(removed),
        swapped: true,
    }
}

/// The report of a write that found every file as it should be.
fn unchanged() -> Report {
    Report::default()
}

fn spec(name: &str, data: &str, mode: u32) -> FileSpec {
    FileSpec {
        name: name.into(),
        data: Zeroizing::new(data.as_bytes().to_vec()),
        mode,
    }
}

#[test]
fn writes_the_kubelet_layout_with_modes() {
    let dir = scratch();
    let mut w = AtomicWriter::open(dir.path(), opts()).unwrap();
    let out = w
        .write(&[spec("db", "pw1", 0o400), spec("api", "k1", 0o440)])
        .unwrap();
    assert_eq!(out, written(&["api", "db"], &[]));
    let data = std::fs::read_link(dir.path().join("..data")).unwrap();
    assert!(is_data_dir_name(data.to_str().unwrap()), "{data:?}");
    assert_eq!(
        std::fs::read_link(dir.path().join("db")).unwrap(),
        Path::new("..data/db")
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("db")).unwrap(),
        "pw1"
    );
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("db"), 0o400);
    assert_eq!(mode("api"), 0o440);
    assert_eq!(
        mode("..data"),
        0o750,
        "group-readable files get a 0750 directory"
    );
    w.write(&[spec("db", "pw1", 0o400)]).unwrap();
    assert_eq!(mode("..data"), 0o700);
}

#[test]
fn unchanged_content_is_not_rewritten() {
    let dir = scratch();
    let mut w = AtomicWriter::open(dir.path(), opts()).unwrap();
    w.write(&[spec("db", "a", 0o400)]).unwrap();
    let before = std::fs::read_link(dir.path().join("..data")).unwrap();
    assert_eq!(w.write(&[spec("db", "a", 0o400)]).unwrap(), unchanged());
    assert_eq!(
        std::fs::read_link(dir.path().join("..data")).unwrap(),
        before
    );
    // A new writer over the same directory (a restarted sidecar) agrees.
    let mut again = AtomicWriter::open(dir.path(), opts()).unwrap();
    assert_eq!(again.write(&[spec("db", "a", 0o400)]).unwrap(), unchanged());
    // Mode changes count as changes.
    assert_eq!(
        again.write(&[spec("db", "a", 0o440)]).unwrap(),
        written(&["db"], &[])
    );
    // A write compares digests of what the writer itself wrote: a served
    // file changed behind its back is not read back (the next change's
    // swap replaces it), so an equal write reports no change.
    let served = std::fs::read_link(dir.path().join("..data")).unwrap();
    let file = dir.path().join(served).join("db");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&file, "tampered").unwrap();
    assert_eq!(again.write(&[spec("db", "a", 0o440)]).unwrap(), unchanged());
    assert_eq!(
        again.write(&[spec("db", "b", 0o440)]).unwrap(),
        written(&["db"], &[])
    );
    assert_eq!(std::fs::read_to_string(dir.path().join("db")).unwrap(), "b");
}

#[test]
fn removed_files_disappear_and_old_directories_are_collected() {
    let dir = scratch();
    let mut w = AtomicWriter::open(
        dir.path(),
        WriterOptions {
            grace: Duration::ZERO,
            ..opts()
        },
    )
    .unwrap();
    w.write(&[spec("a", "1", 0o400), spec("b", "1", 0o400)])
        .unwrap();
    assert_eq!(
        w.write(&[spec("a", "2", 0o400)]).unwrap(),
        written(&["a"], &["b"])
    );
    assert!(!dir.path().join("b").exists());
    assert!(
        std::fs::symlink_metadata(dir.path().join("b")).is_err(),
        "dangling link left"
    );
    let data_dirs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| is_data_dir_name(n))
        .collect();
    assert_eq!(data_dirs.len(), 1, "{data_dirs:?}");
    w.wipe().unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_disk_target_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let on_disk = rustix::fs::statfs(dir.path()).unwrap().f_type as u64;
    if on_disk == TMPFS_MAGIC || on_disk == RAMFS_MAGIC {
        return; // this machine's target dir is itself in memory
    }
    let err = AtomicWriter::open(dir.path(), WriterOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("is not on tmpfs or ramfs") && err.contains("--allow-disk"),
        "{err}"
    );
    AtomicWriter::open(
        dir.path(),
        WriterOptions {
            allow_disk: true,
            ..WriterOptions::default()
        },
    )
    .unwrap();
}

#[test]
fn a_symlinked_target_root_is_refused() {
    let dir = scratch();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = AtomicWriter::open(&link, opts()).err().unwrap().to_string();
    assert!(err.contains("is a symlink"), "{err}");
}

#[test]
fn traversal_names_are_refused() {
    let dir = scratch();
    let mut w = AtomicWriter::open(dir.path(), opts()).unwrap();
    for bad in [
        "../escape",
        "/etc/passwd",
        "..",
        ".",
        ".hidden",
        "a/b",
        "..data",
    ] {
        let err = w.write(&[spec(bad, "x", 0o400)]).err().unwrap().to_string();
        assert!(err.contains("file name"), "{bad}: {err}");
    }
    assert!(!dir.path().parent().unwrap().join("escape").exists());
}

#[test]
fn planted_symlinks_never_lead_writes_outside() {
    let dir = scratch();
    let outside = scratch();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    let target = dir.path();
    // A visible name planted as a symlink to a file outside.
    std::os::unix::fs::symlink(&victim, target.join("db")).unwrap();
    // ..data_tmp planted as a symlink to a directory outside.
    std::os::unix::fs::symlink(outside.path(), target.join("..data_tmp")).unwrap();
    let mut w = AtomicWriter::open(target, opts()).unwrap();
    w.write(&[spec("db", "secret", 0o400)]).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    assert_eq!(
        std::fs::read_link(target.join("db")).unwrap(),
        Path::new("..data/db")
    );
    assert_eq!(
        std::fs::read_to_string(target.join("db")).unwrap(),
        "secret"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);

    // ..data planted as a link to a directory outside: the writer points it
    // back, then writes; nothing is written there.
    let served = std::fs::read_link(target.join("..data")).unwrap();
    let plant_data = || {
        std::fs::remove_file(target.join("..data")).unwrap();
        std::os::unix::fs::symlink(outside.path(), target.join("..data")).unwrap();
    };
    plant_data();
    assert_eq!(
        w.write(&[spec("db", "secret", 0o400)]).unwrap(),
        unchanged()
    );
    assert_eq!(std::fs::read_link(target.join("..data")).unwrap(), served);
    plant_data();
    assert_eq!(
        w.write(&[spec("db", "other", 0o400)]).unwrap(),
        written(&["db"], &[])
    );
    assert_eq!(std::fs::read_to_string(target.join("db")).unwrap(), "other");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    // A restarted writer cannot know what ..data pointed to: it refuses.
    plant_data();
    let mut restarted = AtomicWriter::open(target, opts()).unwrap();
    let err = restarted
        .write(&[spec("db", "again", 0o400)])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a directory this writer makes"), "{err}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);

    // ..data planted as a real directory: refused.
    std::fs::remove_file(target.join("..data")).unwrap();
    std::fs::create_dir(target.join("..data")).unwrap();
    let err = w
        .write(&[spec("db", "other", 0o400)])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("..data is not a symlink"), "{err}");

    // A directory planted where a file link belongs: refused.
    std::fs::remove_dir(target.join("..data")).unwrap();
    std::fs::create_dir(target.join("api")).unwrap();
    let err = w
        .write(&[spec("api", "x", 0o400)])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("is a directory where the file link belongs"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
}

#[test]
fn owner_and_modes_are_as_set() {
    if rustix::process::geteuid().as_raw() != 0 {
        // As a non-root user only one's own uid can be asked for.
        let me = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        let dir = scratch();
        let mut w = AtomicWriter::open(
            dir.path(),
            WriterOptions {
                owner: Some(me),
                ..opts()
            },
        )
        .unwrap();
        w.write(&[spec("db", "x", 0o400)]).unwrap();
        let err = AtomicWriter::open(
            dir.path(),
            WriterOptions {
                owner: Some((me.0 + 1, me.1)),
                ..opts()
            },
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("holds no capability to chown"), "{err}");
        return;
    }
    let dir = scratch();
    let mut w = AtomicWriter::open(
        dir.path(),
        WriterOptions {
            owner: Some((4321, 8765)),
            ..opts()
        },
    )
    .unwrap();
    w.write(&[spec("db", "x", 0o400), spec("ca", "y", 0o440)])
        .unwrap();
    for f in ["db", "ca", "..data"] {
        let meta = std::fs::metadata(dir.path().join(f)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (4321, 8765), "{f}");
    }
    assert_eq!(
        std::fs::metadata(dir.path().join("ca")).unwrap().mode() & 0o7777,
        0o440
    );
}

/// Reads every file through its visible name, and the whole set through
/// `..data` opened once. No directory is collected during the run: a reader
/// stalled for longer than the grace period (a loaded machine) would find
/// its file gone, by design, and the test would say so.
#[test]
fn concurrent_reader_never_sees_a_mix_or_a_missing_file_over_10000_swaps() {
    const NAMES: [&str; 4] = ["a", "b", "c", "d"];
    let dir = scratch();
    let path = dir.path().to_owned();
    let mut w = AtomicWriter::open(
        &path,
        WriterOptions {
            grace: Duration::from_secs(3600),
            ..opts()
        },
    )
    .unwrap();
    let files = |generation: u32| -> Vec<FileSpec> {
        NAMES
            .iter()
            .map(|n| spec(n, &format!("{n}:{generation:08}"), 0o400))
            .collect()
    };
    w.write(&files(0)).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, path) = (done.clone(), path.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            // Until the writer is done, and once more after.
            loop {
                let last = done.load(Ordering::SeqCst);
                // Each file, by its visible name: present and complete.
                for n in NAMES {
                    let text = std::fs::read_to_string(path.join(n))
                        .unwrap_or_else(|e| panic!("{n} missing after {reads} reads: {e}"));
                    assert_eq!(text.len(), n.len() + 9, "partial file {n}: {text:?}");
                }
                // The set, through ..data opened once: one generation.
                let set = std::fs::File::open(path.join("..data")).unwrap();
                let gens: Vec<String> = NAMES
                    .iter()
                    .map(|n| {
                        let fd = rustix::fs::openat(&set, *n, OFlags::RDONLY, Mode::empty())
                            .unwrap_or_else(|e| panic!("{n} missing in a set: {e}"));
                        let mut s = String::new();
                        File::from(fd).read_to_string(&mut s).unwrap();
                        s.split(':').nth(1).unwrap().to_owned()
                    })
                    .collect();
                assert!(gens.windows(2).all(|w| w[0] == w[1]), "mixed set: {gens:?}");
                reads += 1;
                if last {
                    break reads;
                }
            }
        })
    };
    for generation in 1..=10_000 {
        w.write(&files(generation)).unwrap();
    }
    done.store(true, Ordering::SeqCst);
    reader.join().expect("reader saw a mix or a missing file");
}

/// When the webhook cannot run the sidecar as the app's user, files are
/// 0440 (fsGroup) or 0444, and every directory on the way lets those
/// readers through, and no one more.
#[test]
fn directories_open_only_to_the_classes_that_may_read() {
    let mode_of = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for (default_mode, dir_mode) in [(0o400, 0o700), (0o440, 0o750), (0o444, 0o755)] {
        let dir = scratch();
        let mut w = AtomicWriter::open(
            dir.path(),
            WriterOptions {
                default_mode,
                ..opts()
            },
        )
        .unwrap();
        assert_eq!(mode_of(dir.path()), dir_mode, "target for {default_mode:o}");
        w.write(&[spec("db", "x", default_mode)]).unwrap();
        let data = std::fs::canonicalize(dir.path().join("..data")).unwrap();
        assert_eq!(mode_of(&data), dir_mode, "data dir for {default_mode:o}");
        assert_eq!(mode_of(&dir.path().join("db")), default_mode);
    }
}

/// A process that swaps the writer's temporary link for a link to
/// `outside` between the writer's `symlinkat` and its swap, the first
/// `times` swaps.
fn racer(outside: &Path, times: usize) -> (SwapRace, Arc<AtomicUsize>) {
    let outside = outside.to_owned();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let race = move |target: &Path, tmp: &str| {
        if counter.fetch_add(1, Ordering::SeqCst) < times {
            let tmp = target.join(tmp);
            std::fs::remove_file(&tmp).unwrap();
            std::os::unix::fs::symlink(&outside, &tmp).unwrap();
        }
    };
    (Box::new(race), calls)
}

#[test]
fn a_data_tmp_swapped_during_the_swap_is_repaired_before_the_files_are_served() {
    let dir = scratch();
    let outside = scratch();
    std::fs::write(outside.path().join("db"), "planted").unwrap();
    let mut w = AtomicWriter::open(dir.path(), opts()).unwrap();
    w.write(&[spec("db", "v1", 0o400)]).unwrap();
    let (race, calls) = racer(outside.path(), 1);
    w.before_swap = Some(race);
    assert_eq!(
        w.write(&[spec("db", "v2", 0o400)]).unwrap(),
        written(&["db"], &[])
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "swapped once more");
    let data = std::fs::read_link(dir.path().join("..data")).unwrap();
    assert!(is_data_dir_name(data.to_str().unwrap()), "{data:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("db")).unwrap(),
        "v2"
    );
    assert_eq!(
        std::fs::read_to_string(outside.path().join("db")).unwrap(),
        "planted"
    );
    // Later writes work.
    w.before_swap = None;
    w.write(&[spec("db", "v3", 0o400)]).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("db")).unwrap(),
        "v3"
    );
}

#[test]
fn a_swap_that_keeps_losing_the_race_fails_then_recovers() {
    let dir = scratch();
    let outside = scratch();
    let mut w = AtomicWriter::open(dir.path(), opts()).unwrap();
    w.write(&[spec("db", "v1", 0o400)]).unwrap();
    let served = std::fs::read_link(dir.path().join("..data")).unwrap();
    let (race, calls) = racer(outside.path(), usize::MAX);
    w.before_swap = Some(race);
    let err = w
        .write(&[spec("db", "v2", 0o400)])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("after 3 swaps") && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // The directory made for the failed write is gone; each lost swap was
    // undone, so ..data still names the directory served before.
    let data_dirs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| is_data_dir_name(e.as_ref().unwrap().file_name().to_str().unwrap()))
        .count();
    assert_eq!(data_dirs, 1);
    assert_eq!(
        std::fs::read_link(dir.path().join("..data")).unwrap(),
        served
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("db")).unwrap(),
        "v1"
    );
    // The race stops: the next write points ..data back and goes through.
    w.before_swap = None;
    w.write(&[spec("db", "v2", 0o400)]).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("db")).unwrap(),
        "v2"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

/// What an interrupted run leaves: the swap's and a file link's temporary
/// symlinks, a superseded data directory, an empty one from a write cut
/// short. All of it goes at open; what is served stays.
#[test]
fn leftovers_of_an_interrupted_run_are_removed_at_open() {
    let dir = scratch();
    let outside = scratch();
    let target = dir.path();
    let mut w = AtomicWriter::open(
        target,
        WriterOptions {
            grace: Duration::from_secs(3600),
            ..opts()
        },
    )
    .unwrap();
    w.write(&[spec("db", "v1", 0o400)]).unwrap();
    w.write(&[spec("db", "v2", 0o400)]).unwrap();
    drop(w);
    std::os::unix::fs::symlink(outside.path(), target.join("..data_tmp")).unwrap();
    std::os::unix::fs::symlink("..data/db", target.join("..tmp.db")).unwrap();
    std::fs::create_dir(target.join("..2020_01_01_00_00_00.000000001")).unwrap();
    std::fs::write(target.join("unrelated"), "kept").unwrap();
    let entries = || {
        let mut names: Vec<String> = std::fs::read_dir(target)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(entries().len(), 8, "{:?}", entries());

    let w = AtomicWriter::open(target, opts()).unwrap();
    let served = std::fs::read_link(target.join("..data")).unwrap();
    let served = served.to_str().unwrap();
    assert_eq!(entries(), [served, "..data", "db", "unrelated"]);
    assert_eq!(std::fs::read_to_string(target.join("db")).unwrap(), "v2");
    assert_eq!(w.read_current().unwrap().len(), 1);
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

/// Under the writer's names, anything it would not have left is refused
/// at open, by path, and nothing is removed.
#[test]
fn foreign_entries_under_the_writers_names_are_refused_at_open() {
    const OLD: &str = "..2020_01_01_00_00_00.000000001";
    type Plant = fn(&Path);
    let cases: [(&str, Plant, &str, &str); 5] = [
        (
            "a ..tmp.* directory",
            |t| std::fs::create_dir(t.join("..tmp.db")).unwrap(),
            "..tmp.db is a directory",
            "only a symlink",
        ),
        (
            "a ..data_tmp regular file",
            |t| std::fs::write(t.join("..data_tmp"), "x").unwrap(),
            "..data_tmp is a regular file",
            "only a symlink",
        ),
        (
            "a subdirectory in an old data directory",
            |t| std::fs::create_dir_all(t.join(OLD).join("sub")).unwrap(),
            "/sub is a directory",
            "only regular files",
        ),
        (
            "a symlink in an old data directory",
            |t| {
                std::fs::create_dir(t.join(OLD)).unwrap();
                std::os::unix::fs::symlink("/etc/hostname", t.join(OLD).join("db")).unwrap();
            },
            "/db is a symlink",
            "only regular files",
        ),
        (
            "a symlink named like a data directory",
            |t| std::os::unix::fs::symlink("/tmp", t.join(OLD)).unwrap(),
            " is a symlink",
            "only a data directory",
        ),
    ];
    for (case, plant, found, expected) in cases {
        let dir = scratch();
        let target = dir.path();
        // A leftover the writer would remove, and an old data directory.
        std::os::unix::fs::symlink("nowhere", target.join("..tmp.api")).unwrap();
        std::fs::create_dir(target.join("..2020_01_01_00_00_00.000000000")).unwrap();
        std::fs::write(target.join("..2020_01_01_00_00_00.000000000/db"), "x").unwrap();
        plant(target);
        let before = std::fs::read_dir(target).unwrap().count();
        let err = AtomicWriter::open(target, opts())
            .err()
            .unwrap_or_else(|| panic!("{case}: accepted"))
            .to_string();
        assert!(
            err.contains(&target.display().to_string())
                && err.contains(found)
                && err.contains(expected)
                && err.contains("not made by rotor-sidecar"),
            "{case}: {err}"
        );
        assert_eq!(
            std::fs::read_dir(target).unwrap().count(),
            before,
            "{case}: something was removed"
        );
    }
}

/// When `..data` is not one of the writer's links, which data directory is
/// served is unknown: none is removed.
#[test]
fn data_directories_are_kept_when_data_is_not_the_writers() {
    let dir = scratch();
    let outside = scratch();
    let target = dir.path();
    let mut w = AtomicWriter::open(target, opts()).unwrap();
    w.write(&[spec("db", "v1", 0o400)]).unwrap();
    drop(w);
    let served = std::fs::read_link(target.join("..data")).unwrap();
    std::fs::remove_file(target.join("..data")).unwrap();
    std::os::unix::fs::symlink(outside.path(), target.join("..data")).unwrap();
    std::os::unix::fs::symlink("nowhere", target.join("..data_tmp")).unwrap();
    AtomicWriter::open(target, opts()).unwrap();
    assert!(target.join(&served).join("db").exists());
    assert!(std::fs::symlink_metadata(target.join("..data_tmp")).is_err());
}

/// The generation in a file written by [`generation_set`].
fn generation_of(data: &[u8]) -> String {
    let text = std::str::from_utf8(data).unwrap();
    text.split_once(':').unwrap().1.to_owned()
}

/// Four files, each naming its generation.
fn generation_set(generation: u32) -> Vec<FileSpec> {
    ["a", "b", "c", "d"]
        .iter()
        .map(|n| spec(n, &format!("{n}:{generation:08}"), 0o400))
        .collect()
}

/// `..data` opened once, as a directory (following the link).
fn open_data(target: &Path) -> OwnedFd {
    rustix::fs::open(
        target.join("..data"),
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

/// The way the README says to read several files as one set: open `..data`
/// once and read each file relative to that handle. Swaps land between the
/// reads, 2,000 of them in lockstep with the reader and 2,000 more running
/// freely; every set read through one handle is one generation. The same
/// files opened by path through `..data/` are torn by every lockstep swap.
#[test]
fn a_set_read_through_one_data_handle_is_never_torn() {
    const SWAPS: u32 = 2_000;
    let dir = scratch();
    let target = dir.path().to_owned();
    let mut w = AtomicWriter::open(
        &target,
        WriterOptions {
            // No directory goes while a reader may hold it.
            grace: Duration::from_secs(3600),
            ..opts()
        },
    )
    .unwrap();
    w.write(&generation_set(0)).unwrap();
    let read_set = |set: &OwnedFd| -> Vec<String> {
        ["a", "b", "c", "d"]
            .iter()
            .map(|n| generation_of(&read_file(set, n).unwrap().0))
            .collect()
    };

    // In lockstep: the writer swaps between every two files read.
    let (swap, swapping) = std::sync::mpsc::sync_channel::<()>(0);
    let (swapped, done) = std::sync::mpsc::sync_channel::<()>(0);
    let writer = std::thread::spawn(move || {
        for generation in 1..=SWAPS {
            swapping.recv().unwrap();
            w.write(&generation_set(generation)).unwrap();
            swapped.send(()).unwrap();
        }
        w
    });
    let (mut swaps, mut sets, mut torn_by_path) = (0, 0, 0);
    while swaps < SWAPS {
        let set = open_data(&target);
        let mut by_handle = Vec::new();
        let mut by_path = Vec::new();
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            if i > 0 && swaps < SWAPS {
                swap.send(()).unwrap();
                done.recv().unwrap();
                swaps += 1;
            }
            by_handle.push(generation_of(&read_file(&set, name).unwrap().0));
            by_path.push(generation_of(
                &std::fs::read(target.join("..data").join(name)).unwrap(),
            ));
        }
        assert!(
            by_handle.windows(2).all(|g| g[0] == g[1]),
            "a torn set through one handle: {by_handle:?}"
        );
        assert_eq!(by_handle, read_set(&set), "the handle moved");
        sets += 1;
        torn_by_path += usize::from(by_path.windows(2).any(|g| g[0] != g[1]));
    }
    let mut w = writer.join().unwrap();
    assert_eq!(
        torn_by_path, sets,
        "opening ..data/<file> by path follows each swap"
    );

    // Running freely: the reader reads sets until the writer is done, and
    // once more after.
    let finished = Arc::new(AtomicBool::new(false));
    let writer = {
        let finished = finished.clone();
        std::thread::spawn(move || {
            for generation in SWAPS + 1..=2 * SWAPS {
                w.write(&generation_set(generation)).unwrap();
            }
            finished.store(true, Ordering::SeqCst);
        })
    };
    let (mut sets, mut torn_by_path) = (0usize, 0usize);
    loop {
        let last = finished.load(Ordering::SeqCst);
        let gens = read_set(&open_data(&target));
        assert!(
            gens.windows(2).all(|g| g[0] == g[1]),
            "a torn set: {gens:?}"
        );
        // For comparison only: the same set by path.
        let by_path: Vec<String> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| generation_of(&std::fs::read(target.join("..data").join(n)).unwrap()))
            .collect();
        sets += 1;
        torn_by_path += usize::from(by_path.windows(2).any(|g| g[0] != g[1]));
        if last {
            assert_eq!(gens[0], format!("{:08}", 2 * SWAPS));
            break;
        }
    }
    writer.join().unwrap();
    eprintln!(
        "{SWAPS} free-running swaps: {sets} sets read through one ..data handle, none torn; \
         by path through ..data/, {torn_by_path} torn"
    );
}

#[test]
fn the_diff_names_changed_added_and_removed_files() {
    let inv = |files: &[(&str, &str, u32)]| {
        files
            .iter()
            .map(|(n, d, m)| (n.to_string(), digest_of(*m, d.as_bytes())))
            .collect::<Inventory>()
    };
    let served = inv(&[("a", "1", 0o400), ("b", "1", 0o400), ("c", "1", 0o400)]);
    let wanted = inv(&[
        ("a", "1", 0o400),
        ("b", "2", 0o400),
        ("c", "1", 0o440),
        ("d", "1", 0o400),
    ]);
    let (changed, removed) = diff(&served, &wanted);
    assert_eq!(changed, ["b", "c", "d"]);
    assert!(removed.is_empty());
    let (changed, removed) = diff(&wanted, &inv(&[("a", "1", 0o400)]));
    assert!(changed.is_empty());
    assert_eq!(removed, ["b", "c", "d"]);
    assert_eq!(diff(&served, &served), (vec![], vec![]));
}

/// The `..data_tmp` race replayed (issue 19.3): while the writer swaps in a
/// new set as fast as it can, a racer of the same uid replaces every
/// temporary link it finds (`..data_tmp*`, listed as a process watching
/// the directory would) with a link to a directory outside, and a sampler
/// reads `..data`. `..data` may point outside for the instant between a
/// lost swap and its check, but never for longer than one repair: the
/// sampler reads the repair count before each `readlink`, and the count
/// is raised only after a repair is checked, so every sample found outside
/// must be followed by a higher count. After the racer stops, one write
/// goes through and `..data` is the writer's. Nothing is written outside.
/// `ROTOR_RACE_SECS` sets the duration (2 s by default; the issue's
/// replay is 60 s); run with `--nocapture` for the figures.
#[test]
fn the_data_tmp_race_never_leaves_data_outside_longer_than_one_repair() {
    let secs: u64 = std::env::var("ROTOR_RACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let dir = scratch();
    let outside = scratch();
    std::fs::write(outside.path().join("db"), "planted").unwrap();
    let target = dir.path().to_owned();
    let mut w = AtomicWriter::open(&target, opts()).unwrap();
    w.write(&[spec("db", "v0", 0o400)]).unwrap();
    let repairs = w.repairs();
    let stop = Arc::new(AtomicBool::new(false));

    let racer = {
        let (stop, target, outside) = (stop.clone(), target.clone(), outside.path().to_owned());
        std::thread::spawn(move || {
            let (mut replaced, mut n) = (0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                let Ok(entries) = std::fs::read_dir(&target) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if !name.to_string_lossy().starts_with(DATA_TMP) {
                        continue;
                    }
                    n += 1;
                    let evil = target.join(format!("evil.{n}"));
                    if std::os::unix::fs::symlink(&outside, &evil).is_ok() {
                        if std::fs::rename(&evil, target.join(&name)).is_ok() {
                            replaced += 1;
                        } else {
                            let _ = std::fs::remove_file(&evil);
                        }
                    }
                }
            }
            replaced
        })
    };
    let sampler = {
        let (stop, target, repairs) = (stop.clone(), target.clone(), repairs.clone());
        std::thread::spawn(move || {
            let (mut samples, mut outside, mut last_outside_at) = (0u64, 0u64, None);
            let data = target.join(DATA);
            while !stop.load(Ordering::SeqCst) {
                let count = repairs.load(Ordering::SeqCst);
                let Ok(link) = std::fs::read_link(&data) else {
                    continue;
                };
                samples += 1;
                if !is_data_dir_name(&link.to_string_lossy()) {
                    outside += 1;
                    last_outside_at = Some(count);
                }
            }
            (samples, outside, last_outside_at)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut writes, mut failed) = (0u64, 0u64);
    while Instant::now() < deadline {
        writes += 1;
        if w.write(&[spec("db", &format!("v{writes}"), 0o400)])
            .is_err()
        {
            failed += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let replaced = racer.join().unwrap();
    let (samples, outside_samples, last_outside_at) = sampler.join().unwrap();
    // The racer is gone: the next write goes through, checked.
    w.write(&[spec("db", "final", 0o400)]).unwrap();
    let repaired = repairs.load(Ordering::SeqCst);
    println!(
        "race for {secs}s: {writes} writes ({failed} failed), {replaced} temporary links replaced, \
         {outside_samples} of {samples} samples of ..data outside, {repaired} repairs"
    );
    if let Some(count) = last_outside_at {
        assert!(
            repaired > count,
            "..data was seen outside at repair count {count} and never repaired after ({repaired})"
        );
    }
    let data = std::fs::read_link(target.join(DATA)).unwrap();
    assert!(is_data_dir_name(data.to_str().unwrap()), "{data:?}");
    assert_eq!(std::fs::read_to_string(target.join("db")).unwrap(), "final");
    assert_eq!(
        std::fs::read_to_string(outside.path().join("db")).unwrap(),
        "planted"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    assert!(samples > 0 && writes > 0);
}
