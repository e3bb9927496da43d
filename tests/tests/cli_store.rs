//! The `rotor` CLI and the local store, exercised as separate processes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rotor_e2e::{command, text};
use rotor_envelope::{ExposeSecret, Kek, KeyFileKek};
use rotor_store::{LocalStore, Selector, Stage, WriteAs};

const CANARY: &str = "canary-b41f09-must-never-leak";

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let env = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let out = command("rotor")
            .args(["keygen", "--out"])
            .arg(env.key())
            .output()
            .unwrap();
        assert!(out.status.success(), "{:?}", text(&out));
        env
    }
    fn key(&self) -> std::path::PathBuf {
        self.dir.path().join("kek")
    }
    fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("store.rotor")
    }
    fn rotor(&self) -> Command {
        let mut cmd = command("rotor");
        cmd.env("ROTOR_STORE", self.store())
            .env("ROTOR_KEY", self.key())
            .env("ROTOR_LOG", "trace");
        cmd
    }
    fn put(&self, name: &str, value: &[u8]) -> std::process::Output {
        rotor_e2e::output_with_stdin(self.rotor().args(["store", "put", name]), value)
    }
    fn open(&self) -> LocalStore {
        LocalStore::new(
            self.store(),
            Arc::new(KeyFileKek::load(&self.key()).unwrap()),
        )
    }
}

#[test]
fn keygen_put_get_reveal_round_trip() {
    let env = Env::new();
    let file = env.dir.path().join("pw.txt");
    std::fs::write(&file, CANARY).unwrap();
    let out = env
        .rotor()
        .args(["store", "put", "db", "--from-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let out = env
        .rotor()
        .args(["store", "get", "db", "--reveal"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, CANARY.as_bytes());
    let stored = std::fs::read(env.store()).unwrap();
    assert!(!stored.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()));
}

#[test]
fn canary_never_appears_in_output_logs_or_errors() {
    let env = Env::new();
    let out = env.put("db", CANARY.as_bytes());
    assert!(out.status.success());
    let mut seen = String::new();
    let runs: &[&[&str]] = &[
        &["store", "get", "db"],
        &["store", "get", "db", "--version", "1"],
        &["store", "get", "db", "--version", "7"],
        &["store", "get", "db", "--stage", "PENDING"],
        &["store", "list"],
        &["store", "info"],
        &["store", "history", "db"],
        &["store", "retire", "db", "--version", "1"],
        &["store", "get", "missing"],
    ];
    for args in runs {
        let out = env.rotor().args(*args).output().unwrap();
        let (o, e) = text(&out);
        seen.push_str(&o);
        seen.push_str(&e);
    }
    let (o, e) = text(&env.put("db", b"x"));
    seen.push_str(&o);
    seen.push_str(&e);
    // A wrong key and a corrupted store fail without echoing anything secret.
    let other = env.dir.path().join("other");
    command("rotor")
        .args(["keygen", "--out"])
        .arg(&other)
        .output()
        .unwrap();
    let out = env
        .rotor()
        .env("ROTOR_KEY", &other)
        .args(["store", "get", "db"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    seen.push_str(&text(&out).1);
    assert!(!seen.contains(CANARY), "canary leaked:\n{seen}");
    assert!(seen.contains("not available"), "{seen}");
}

/// The `generation` line of `rotor store info`.
fn generation(env: &Env) -> u64 {
    let out = env.rotor().args(["store", "info"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("generation"))
        .unwrap_or_else(|| panic!("no generation line:\n{stdout}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn info_shows_the_generation_which_goes_back_when_an_older_copy_is_put_back() {
    let env = Env::new();
    assert!(env.put("db", CANARY.as_bytes()).status.success());
    assert!(env.put("api", b"x").status.success());
    let out = env.rotor().args(["store", "info"]).output().unwrap();
    let (stdout, _) = text(&out);
    let store_id = env.open().info().unwrap().store_id;
    let expected = format!(
        "path          {}\nstore id      {store_id}\nkey id        {}\ngeneration    2\nsecrets       2\nversions      2\nmax versions  10\nsize          {} bytes\n",
        env.store().display(),
        KeyFileKek::load(&env.key()).unwrap().key_id(),
        std::fs::metadata(env.store()).unwrap().len(),
    );
    assert_eq!(stdout, expected);
    assert!(!stdout.contains(CANARY));
    let old = std::fs::read(env.store()).unwrap();
    env.put("db", b"y");
    assert_eq!(generation(&env), 3);
    // Each `rotor` is a new process: it cannot know the file went back,
    // but the generation it shows does.
    std::fs::write(env.store(), &old).unwrap();
    assert_eq!(generation(&env), 2);
}

#[test]
fn every_failure_gets_a_message_and_a_nonzero_exit() {
    let env = Env::new();
    env.put("db", b"v");
    let bad_key = env.dir.path().join("bad.key");
    std::fs::write(&bad_key, b"short").unwrap();
    let corrupt = env.dir.path().join("corrupt.rotor");
    std::fs::write(&corrupt, b"this is not a store").unwrap();
    let missing = env.dir.path().join("none.rotor");
    // (arguments, an environment override, what the error must say)
    type Case<'a> = (&'a str, Option<(&'a str, &'a Path)>, &'a str);
    let cases: [Case; 6] = [
        (
            "store get db",
            Some(("ROTOR_STORE", &missing)),
            "does not exist",
        ),
        (
            "store get db",
            Some(("ROTOR_STORE", &corrupt)),
            "failed its integrity check",
        ),
        (
            "store get db",
            Some(("ROTOR_KEY", &bad_key)),
            "expected exactly 32 random bytes",
        ),
        ("store get nope", None, "secret \"nope\" not found"),
        ("store get db --version 5", None, "has no version 5"),
        ("store put bad/../name", None, "secret name \"bad/../name\""),
    ];
    for (args, var, expected) in cases {
        let mut cmd = env.rotor();
        cmd.args(args.split(' ')).stdin(Stdio::null());
        if let Some((k, v)) = var {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
        assert!(stdout.is_empty(), "{args:?} printed to stdout: {stdout}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn flipping_any_byte_of_the_store_fails_get_with_an_integrity_error() {
    let env = Env::new();
    env.put("db", CANARY.as_bytes());
    let good = std::fs::read(env.store()).unwrap();
    // Every byte is covered by the library's unit test; here, through the
    // binary, a spread of offsets across every region of the file.
    for i in (0..good.len()).step_by(7).chain([good.len() - 1]) {
        let mut bad = good.clone();
        bad[i] ^= 0x80;
        std::fs::write(env.store(), &bad).unwrap();
        let out = env.rotor().args(["store", "get", "db"]).output().unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "byte {i}");
        assert!(stderr.contains("integrity check"), "byte {i}: {stderr}");
    }
}

#[test]
fn concurrent_puts_from_several_processes_lose_no_write() {
    let env = Env::new();
    const WRITERS: usize = 4;
    const EACH: usize = 15;
    // Keep every version, so that every write can be read back.
    let out = env
        .rotor()
        .args(["store", "config", "--max-versions", "100"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let children: Vec<_> = (0..WRITERS)
        .map(|w| {
            let script = format!(
                "for i in $(seq 1 {EACH}); do printf 'w{w}-%s' $i | \"$0\" store put shared || exit 1; printf x | \"$0\" store put own-{w} || exit 1; done"
            );
            let mut rotor = env.rotor();
            rotor.env("ROTOR_LOG", "warn");
            spawn_shell(&rotor, &script)
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let store = env.open();
    let history = store.history("shared").unwrap();
    assert_eq!(history.len(), WRITERS * EACH, "a write was lost");
    let numbers: Vec<u64> = history.iter().map(|m| m.version).collect();
    assert_eq!(numbers, (1..=(WRITERS * EACH) as u64).collect::<Vec<_>>());
    let mut values: Vec<String> = (1..=(WRITERS * EACH) as u64)
        .map(|v| {
            String::from_utf8(
                store
                    .get("shared", Selector::Version(v.into()))
                    .unwrap()
                    .value
                    .expose_secret()
                    .to_vec(),
            )
            .unwrap()
        })
        .collect();
    values.sort();
    let mut expected: Vec<String> = (0..WRITERS)
        .flat_map(|w| (1..=EACH).map(move |i| format!("w{w}-{i}")))
        .collect();
    expected.sort();
    assert_eq!(values, expected);
    for w in 0..WRITERS {
        assert_eq!(store.history(&format!("own-{w}")).unwrap().len(), EACH);
    }
}

#[test]
fn a_process_killed_mid_write_leaves_a_readable_store() {
    let env = Env::new();
    // A large store makes every write take long enough to be interrupted.
    let big = vec![b'v'; 256 * 1024];
    for i in 0..8 {
        assert!(env.put(&format!("bulk-{i}"), &big).status.success());
    }
    let value_file = env.dir.path().join("value");
    std::fs::write(&value_file, &big).unwrap();
    let mut last = 0;
    for round in 0..40u64 {
        let mut child = env
            .rotor()
            .env("ROTOR_LOG", "warn")
            .args(["store", "put", "victim", "--from-file"])
            .arg(&value_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Spread the kills over the process's whole life.
        std::thread::sleep(Duration::from_micros(500 + (round * 7919) % 15_000));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let store = env.open();
        let versions = match store.current_number("victim") {
            Ok(n) => n,
            Err(e) if e.is_not_found() => 0,
            Err(e) => panic!("round {round}: store unreadable after kill -9: {e}"),
        };
        assert!(versions >= last, "round {round}: versions went back");
        last = versions;
        for i in 0..8 {
            store.get(&format!("bulk-{i}"), Selector::Current).unwrap();
        }
    }
    assert_tmp_is_harmless(&env.store());
}

/// A stale temporary file from a killed writer is overwritten by the next one.
fn assert_tmp_is_harmless(store: &Path) {
    let key = store.with_file_name("kek");
    let out = command("rotor")
        .env("ROTOR_STORE", store)
        .env("ROTOR_KEY", key)
        .args(["store", "put", "after", "--from-file"])
        .arg(store.with_file_name("value"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
}

/// Runs `script` under `sh -c`, with `cmd`'s program as `$0` and its
/// environment.
fn spawn_shell(cmd: &Command, script: &str) -> std::process::Child {
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(script).arg(cmd.get_program());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh.stdout(Stdio::null()).spawn().unwrap()
}

/// A thousand versions: the file stays the size of what retention keeps,
/// every labelled version still reads (through `rotor` processes), and a
/// removed one fails naming the version and retention.
#[test]
fn a_thousand_versions_keep_the_file_small_and_every_labelled_version_readable() {
    let env = Env::new();
    let rotor = |args: &[&str]| {
        let out = env
            .rotor()
            .env("ROTOR_LOG", "warn")
            .args(args)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.success(), stdout, stderr, out.stdout)
    };
    // The store-wide limit, set before the store exists.
    let (ok, stdout, stderr, _) = rotor(&["store", "config", "--max-versions", "5"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "max versions  5\n");
    let value = |n: u64| format!("{n:08}-").repeat(456).into_bytes(); // 4,104 bytes
    let store = env.open();
    store.put("db", &value(1), WriteAs::Current).unwrap();
    // An old PENDING version that stays labelled through all the rest.
    store.put("db", &value(2), WriteAs::Pending).unwrap();
    for n in 3..=1000 {
        store.put("db", &value(n), WriteAs::Current).unwrap();
        if n == 10 {
            // Another process writes too, with its own limit for its secret.
            for _ in 0..6 {
                assert!(env.put("api", b"k").status.success());
            }
            let (ok, _, stderr, _) =
                rotor(&["store", "config", "--secret", "api", "--max-versions", "3"]);
            assert!(ok, "{stderr}");
        }
    }
    let size = std::fs::metadata(env.store()).unwrap().len();
    // Five sealed 4 KiB records of db, three small ones of api, headers.
    assert!(size < 5 * 4200 + 4096, "the store file is {size} bytes");
    let info = store.info().unwrap();
    assert_eq!((info.versions, info.bytes), (5 + 3, size));
    let kept: Vec<(u64, String)> = store
        .history("db")
        .unwrap()
        .iter()
        .map(|m| (m.version, m.stages.to_string()))
        .collect();
    assert_eq!(
        kept,
        [
            (2, "PENDING".to_owned()),
            (997, "-".to_owned()),
            (998, "-".to_owned()),
            (999, "PREVIOUS".to_owned()),
            (1000, "CURRENT".to_owned()),
        ]
    );
    for (stage, n) in [("CURRENT", 1000), ("PENDING", 2), ("PREVIOUS", 999)] {
        let (ok, _, stderr, bytes) = rotor(&["store", "get", "db", "--stage", stage, "--reveal"]);
        assert!(ok, "{stage}: {stderr}");
        assert_eq!(bytes, value(n), "{stage}");
        let (ok, _, stderr, bytes) = rotor(&[
            "store",
            "get",
            "db",
            "--version",
            &n.to_string(),
            "--reveal",
        ]);
        assert!(ok, "{n}: {stderr}");
        assert_eq!(bytes, value(n));
    }
    assert_eq!(
        store
            .get("db", Selector::Stage(Stage::Pending))
            .unwrap()
            .meta
            .version,
        2
    );
    let (ok, _, stderr, _) = rotor(&["store", "get", "db", "--version", "500"]);
    assert!(!ok);
    assert!(
        stderr.contains("no longer has version 500: retention removed it")
            && stderr.contains("keeps its newest 5 versions"),
        "{stderr}"
    );
    assert_eq!(store.history("api").unwrap().len(), 3);
    let (ok, stdout, _, _) = rotor(&["store", "config", "--secret", "api"]);
    assert!(ok);
    assert_eq!(stdout, "\"api\" keeps 3 versions (its own setting)\n");
    // Numbers go on from the highest ever written.
    assert_eq!(
        store.put("db", b"next", WriteAs::Current).unwrap().version,
        1001
    );
}

/// `put` (and `config`, to set retention before the first put) create a
/// store; every other command on a path that holds none says so and writes
/// nothing (not an empty store, not a lock file).
#[test]
fn commands_other_than_put_refuse_a_store_that_does_not_exist() {
    let env = Env::new();
    let new_key = env.dir.path().join("kek2");
    let out = command("rotor")
        .args(["keygen", "--out"])
        .arg(&new_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let new_key = new_key.to_str().unwrap();
    let before: Vec<_> = std::fs::read_dir(env.dir.path()).unwrap().collect();
    for args in [
        &["store", "promote", "db", "--version", "1"][..],
        &["store", "retire", "db", "--version", "1"],
        &["store", "rewrap", "--new-key", new_key],
        &["store", "list"],
    ] {
        let out = env.rotor().args(args).output().unwrap();
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains("does not exist; `rotor store put` creates it"),
            "{args:?}: {stderr}"
        );
    }
    let after: Vec<_> = std::fs::read_dir(env.dir.path()).unwrap().collect();
    assert_eq!(before.len(), after.len(), "a command wrote a file");
    assert!(!env.store().exists());
}
