//! images/build: the image configs (user 65532, entrypoints, OCI labels),
//! the exact file list of each layer (no shell, no secret, key or test
//! fixture), the binaries running from the unpacked images under chroot as
//! uid 65532 with an empty PATH (a real `rotor-sidecar --once` against a
//! local store that the image's own `rotor` made; names resolved through
//! /etc/hosts and through DNS; TLS roots read from the image's CA bundle),
//! the SBOMs, and images/Containerfile agreeing with the script.
//!
//! The images are built once per test binary (the static release build is
//! cached outside the clone), or taken from `ROTOR_IMAGES_DIR`, where
//! tests/run builds them first.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use rotor_e2e::{free_port, text, tools, wait_until, workspace_root};

const USER: &str = "65532:65532";
const UID: u32 = 65532;
const IMAGES: [(&str, &[&str]); 2] = [
    ("rotor-sidecar", &["rotor-sidecar"]),
    ("rotor-controller", &["rotor-controller", "rotor"]),
];

/// The directory with the image tarballs, digests and SBOMs.
fn images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("ROTOR_IMAGES_DIR").map(PathBuf::from)
            && IMAGES
                .iter()
                .all(|(name, _)| dir.join(format!("{name}.tar")).exists())
        {
            return dir;
        }
        let dir = tempfile::Builder::new()
            .prefix("rotor-images-")
            .tempdir()
            .unwrap()
            .keep();
        let script = workspace_root().join("images/build");
        let status = Command::new(&script)
            .arg(&dir)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .expect("run images/build");
        assert!(status.success(), "images/build failed; see above");
        dir
    })
}

/// One image's tarball unpacked as docker-save lays it out.
struct Tarball {
    dir: tempfile::TempDir,
    manifest: serde_json::Value,
}

impl Tarball {
    fn open(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tar = images().join(format!("{name}.tar"));
        run_ok(
            Command::new("tar")
                .arg("-xf")
                .arg(&tar)
                .arg("-C")
                .arg(dir.path()),
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap())
                .unwrap();
        Self { dir, manifest }
    }

    fn config(&self) -> serde_json::Value {
        let file = self.manifest[0]["Config"].as_str().unwrap();
        serde_json::from_slice(&std::fs::read(self.dir.path().join(file)).unwrap()).unwrap()
    }

    fn layers(&self) -> Vec<PathBuf> {
        self.manifest[0]["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| self.dir.path().join(l.as_str().unwrap()))
            .collect()
    }
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{cmd:?}: {stderr}{stdout}");
    out
}

#[test]
fn configs_name_the_user_the_entrypoint_the_platform_and_the_labels() {
    let head = String::from_utf8(
        run_ok(
            Command::new("git")
                .args(["-C"])
                .arg(workspace_root())
                .args(["rev-parse", "HEAD"]),
        )
        .stdout,
    )
    .unwrap();
    for (name, bins) in IMAGES {
        let image = Tarball::open(name);
        assert_eq!(
            image.manifest[0]["RepoTags"][0],
            format!("ghcr.io/rotor-dev/{name}:0.1.0"),
            "{name}"
        );
        let config = image.config();
        let c = &config["config"];
        assert_eq!(c["User"], USER, "{name}: {config}");
        assert_eq!(
            c["Entrypoint"],
            serde_json::json!([format!("/usr/local/bin/{}", bins[0])]),
            "{name}"
        );
        assert!(c["Cmd"].is_null(), "{name}: {c}");
        assert!(c["Env"].is_null(), "{name} sets environment: {c}");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], "amd64");
        let labels = &c["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.source"],
            "https://github.com/rotor-dev/rotor"
        );
        assert_eq!(labels["org.opencontainers.image.version"], "0.1.0");
        let revision = labels["org.opencontainers.image.revision"]
            .as_str()
            .unwrap();
        assert!(
            revision.starts_with(head.trim()),
            "{name}: revision {revision}, HEAD {head}"
        );
        assert_eq!(
            image.layers().len(),
            1,
            "{name}: one layer on an empty base"
        );
        let digest = std::fs::read_to_string(images().join(format!("{name}.digest"))).unwrap();
        assert!(
            digest.trim().starts_with("sha256:") && digest.trim().len() == 71,
            "{digest}"
        );
    }
}

/// `(mode, uid, gid, path)` of every entry of the image's layers.
fn entries(name: &str) -> BTreeMap<String, (String, String)> {
    let image = Tarball::open(name);
    let mut all = BTreeMap::new();
    for layer in image.layers() {
        let out = run_ok(
            Command::new("tar")
                .args(["--numeric-owner", "-tvzf"])
                .arg(&layer),
        );
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields[5].trim_start_matches("./").trim_end_matches('/');
            if path.is_empty() || path == "." {
                continue;
            }
            all.insert(
                path.to_owned(),
                (fields[0].to_owned(), fields[1].to_owned()),
            );
        }
    }
    all
}

#[test]
fn layers_hold_exactly_the_binaries_ca_bundle_and_user_database() {
    for (name, bins) in IMAGES {
        let all = entries(name);
        let mut expected: BTreeMap<String, (&str, &str)> = [
            ("etc", ("drwxr-xr-x", "0/0")),
            ("etc/group", ("-rw-r--r--", "0/0")),
            ("etc/nsswitch.conf", ("-rw-r--r--", "0/0")),
            ("etc/passwd", ("-rw-r--r--", "0/0")),
            ("etc/ssl", ("drwxr-xr-x", "0/0")),
            ("etc/ssl/certs", ("drwxr-xr-x", "0/0")),
            ("etc/ssl/certs/ca-certificates.crt", ("-rw-r--r--", "0/0")),
            ("home", ("drwxr-xr-x", "0/0")),
            ("home/nonroot", ("drwx------", "65532/65532")),
            ("tmp", ("drwxrwxrwt", "0/0")),
            ("usr", ("drwxr-xr-x", "0/0")),
            ("usr/local", ("drwxr-xr-x", "0/0")),
            ("usr/local/bin", ("drwxr-xr-x", "0/0")),
        ]
        .into_iter()
        .map(|(p, m)| (p.to_owned(), m))
        .collect();
        for b in bins {
            expected.insert(format!("usr/local/bin/{b}"), ("-rwxr-xr-x", "0/0"));
        }
        let got: BTreeMap<String, (&str, &str)> = all
            .iter()
            .map(|(p, (m, o))| (p.clone(), (m.as_str(), o.as_str())))
            .collect();
        assert_eq!(got, expected, "{name}: the layer's files");
    }
}

/// Every file of an image, unpacked by `crane export` (so crane can read
/// the tarball) into a fresh directory on tmpfs, owned as in the image.
fn unpack(name: &str) -> tempfile::TempDir {
    let dir = rotor_e2e::tmpfs_dir();
    let tar = images().join(format!("{name}.tar"));
    let flat = dir.path().join("fs.tar");
    run_ok(
        Command::new(tools::tool("crane"))
            .args(["export", "-"])
            .arg(&flat)
            .stdin(std::fs::File::open(&tar).unwrap()),
    );
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    run_ok(
        Command::new("tar")
            .args(["--same-owner", "--numeric-owner", "-xpf"])
            .arg(&flat)
            .arg("-C")
            .arg(&root),
    );
    std::fs::remove_file(&flat).unwrap();
    dir
}

#[test]
fn no_private_key_secret_or_fixture_is_in_any_file_of_the_images() {
    let fixtures: Vec<String> = std::fs::read_dir(workspace_root().join("tests/tests/fixtures"))
        .into_iter()
        .flatten()
        .chain(
            std::fs::read_dir(workspace_root().join("controller/tests/fixtures"))
                .into_iter()
                .flatten(),
        )
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for (name, _) in IMAGES {
        let dir = unpack(name);
        let root = dir.path().join("root");
        let out = run_ok(Command::new("find").arg(&root).args(["-type", "f"]));
        for file in String::from_utf8(out.stdout).unwrap().lines() {
            let rel = file.strip_prefix(root.to_str().unwrap()).unwrap();
            let base = rel.rsplit('/').next().unwrap();
            assert!(
                !fixtures.iter().any(|f| f == base),
                "{name}: a test fixture {rel}"
            );
            for bad in [
                ".key",
                ".pem",
                ".rotor",
                "kek",
                "token",
                ".env",
                "id_rsa",
                "id_ed25519",
            ] {
                assert!(!base.contains(bad), "{name}: {rel} looks like a secret");
            }
            let data = std::fs::read(file).unwrap();
            // A PEM private key: its header followed by base64.
            let text = String::from_utf8_lossy(&data);
            for (at, _) in text.match_indices("PRIVATE KEY-----") {
                let after = &text[at + 16..];
                let body: String = after.chars().take(80).collect();
                let base64ish = body
                    .trim_start()
                    .chars()
                    .take(40)
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
                assert!(!base64ish, "{name}: {rel} holds a PEM private key");
            }
        }
        let bundle =
            std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert!(
            bundle.matches("BEGIN CERTIFICATE").count() > 50,
            "{name}: a thin CA bundle"
        );
        assert!(!bundle.contains("PRIVATE"), "{name}");
    }
}

/// `cmd` inside `root` (chroot) as uid/gid 65532 with no supplementary
/// groups, an empty environment and an empty PATH.
fn in_image(root: &Path, cmd: &[&str], env: &[(&str, &str)]) -> Command {
    use std::os::unix::fs::MetadataExt;
    assert!(
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0),
        "the image tests chroot into the unpacked images, which needs root (CI runs as root)"
    );
    let mut c = Command::new("/usr/sbin/chroot");
    c.arg(format!("--userspec={USER}"))
        .arg("--groups=")
        .arg(root)
        .args(cmd)
        .env_clear()
        .env("PATH", "");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

#[test]
fn every_binary_starts_from_its_image_as_non_root_with_an_empty_path() {
    for (name, bins) in IMAGES {
        let dir = unpack(name);
        let root = dir.path().join("root");
        // Nothing else to run: no shell, no loader, no libc.
        assert!(!root.join("bin").exists() && !root.join("lib").exists());
        for b in bins {
            let path = format!("/usr/local/bin/{b}");
            let out = run_ok(&mut in_image(&root, &[&path, "--help"], &[]));
            assert!(text(&out).0.contains("Usage:"), "{b}: {out:?}");
            let out = run_ok(&mut in_image(&root, &[&path, "--version"], &[]));
            assert!(text(&out).0.contains("0.1.0"), "{b}: {out:?}");
        }
    }
    // As 65532, the image's root-owned tree is not writable.
    let controller = unpack("rotor-controller");
    let root = controller.path().join("root");
    let out = in_image(
        &root,
        &[
            "/usr/local/bin/rotor",
            "keygen",
            "--out",
            "/usr/local/bin/kek",
        ],
        &[],
    )
    .output()
    .unwrap();
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success() && stderr.to_lowercase().contains("permission denied"),
        "rotor wrote into the root-owned tree: {stderr}"
    );
    assert!(!root.join("usr/local/bin/kek").exists());
}

/// A scratch directory inside an unpacked image, owned by 65532.
fn work_dir(root: &Path) -> PathBuf {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::chown(&work, Some(UID), Some(UID)).unwrap();
    work
}

fn chown_tree(path: &Path) {
    run_ok(Command::new("chown").args(["-R", USER]).arg(path));
}

#[test]
fn the_sidecar_image_serves_a_local_store_made_by_the_controller_images_cli() {
    // The store and key, made by `rotor` from the controller image.
    let controller = unpack("rotor-controller");
    let croot = controller.path().join("root");
    let cwork = work_dir(&croot);
    let rotor = "/usr/local/bin/rotor";
    run_ok(&mut in_image(
        &croot,
        &[rotor, "keygen", "--out", "/work/kek"],
        &[],
    ));
    let mut put = in_image(
        &croot,
        &[
            rotor,
            "store",
            "put",
            "app/db",
            "--store",
            "/work/s.rotor",
            "--key",
            "/work/kek",
        ],
        &[],
    );
    let out = rotor_e2e::output_with_stdin(&mut put, b"s3cret-from-the-image");
    assert!(out.status.success(), "rotor store put: {out:?}");
    let kek_meta = std::fs::metadata(cwork.join("kek")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(kek_meta.uid(), UID, "rotor ran as 65532");

    // The sidecar, from its own image.
    let sidecar = unpack("rotor-sidecar");
    let root = sidecar.path().join("root");
    let work = work_dir(&root);
    for f in ["kek", "s.rotor"] {
        std::fs::copy(cwork.join(f), work.join(f)).unwrap();
    }
    std::fs::write(
        work.join("annotations"),
        "rotor.dev/secret.db-password=\"app/db\"\n",
    )
    .unwrap();
    std::fs::create_dir(work.join("out")).unwrap();
    chown_tree(&work);
    let admin = format!("--admin-addr=127.0.0.1:{}", free_port());
    let push = format!("--push-addr=127.0.0.1:{}", free_port());
    let out = run_ok(&mut in_image(
        &root,
        &[
            "/usr/local/bin/rotor-sidecar",
            "--once",
            "--annotations=/work/annotations",
            "--out-dir=/work/out",
            "--local-store=/work/s.rotor",
            "--key=/work/kek",
            &admin,
            &push,
        ],
        &[],
    ));
    let file = work.join("out/db-password");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}: {out:?}")),
        "s3cret-from-the-image"
    );
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (UID, UID), "written as 65532");
    assert_eq!(meta.mode() & 0o777, 0o400);
}

/// Records the request heads an HTTP(S) test server receives.
type Seen = Arc<Mutex<Vec<String>>>;

fn read_head(stream: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

/// A plain-HTTP server that answers every request with a Vault 404.
fn vault_404() -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let head = read_head(&mut s);
            record.lock().unwrap().push(head);
            let body = r#"{"errors":[]}"#;
            let _ = write!(
                s,
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

/// A DNS server on `<ip>:53` that answers A queries for `name` with
/// 127.0.0.1, and others with no records. Returns the queries it saw.
fn dns_server(ip: &str, name: &str) -> Seen {
    let sock = UdpSocket::bind((ip, 53)).expect("bind a loopback DNS port (root)");
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let name = name.to_owned();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            if n < 17 {
                continue;
            }
            // The question: labels from byte 12, then type and class.
            let mut i = 12;
            let mut labels = Vec::new();
            while i < n && q[i] != 0 {
                let len = q[i] as usize;
                labels.push(String::from_utf8_lossy(&q[i + 1..i + 1 + len]).into_owned());
                i += 1 + len;
            }
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            let question_end = i + 5;
            let qname = labels.join(".");
            record.lock().unwrap().push(format!("{qname} {qtype}"));
            let answer = qtype == 1 && qname.eq_ignore_ascii_case(&name);
            let mut r = Vec::new();
            r.extend_from_slice(&q[..2]);
            r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(answer), 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..question_end]);
            if answer {
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
            }
            let _ = sock.send_to(&r, from);
        }
    });
    seen
}

/// Runs the sidecar from `root` in `--once` mode against a Vault at `addr`
/// until `done` holds (it never finishes by itself: the test server has no
/// secrets, and `--once` retries until it has them); returns its stderr.
fn sidecar_against_vault(root: &Path, addr: &str, done: impl Fn(&str) -> bool) -> String {
    let work = work_dir(root);
    std::fs::write(work.join("annotations"), "rotor.dev/secret.db=\"app/db\"\n").unwrap();
    std::fs::write(work.join("token"), "test-token").unwrap();
    std::fs::create_dir_all(work.join("out")).unwrap();
    chown_tree(&work);
    let admin = format!("--admin-addr=127.0.0.1:{}", free_port());
    let push = format!("--push-addr=127.0.0.1:{}", free_port());
    let vault = format!("--vault-addr={addr}");
    run_until(
        in_image(
            root,
            &[
                "/usr/local/bin/rotor-sidecar",
                "--once",
                "--annotations=/work/annotations",
                "--out-dir=/work/out",
                "--store-kind=vault",
                &vault,
                "--vault-auth=token",
                "--vault-token-file=/work/token",
                &admin,
                &push,
            ],
            &[],
        ),
        done,
    )
}

/// Runs a command until `done(stderr so far)` holds, for at most 60 s,
/// then kills it; returns its stderr.
fn run_until(mut cmd: Command, done: impl Fn(&str) -> bool) -> String {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(log.path()).unwrap_or_default();
    let met = wait_until(60, || {
        done(&read()) || child.try_wait().ok().flatten().is_some()
    });
    let _ = child.kill();
    let _ = child.wait();
    let stderr = read();
    assert!(met, "timed out: {stderr}");
    stderr
}

/// Runs the image's sidecar in `root` against a Vault that answers 404,
/// named `vault.rotor.test`: whether a request reached it by that name, the
/// request heads it saw, and the sidecar's output. The store's answer (no
/// such secret) is logged once a request got there.
fn vault_by_name(root: &Path) -> (bool, Vec<String>, String) {
    let (port, seen) = vault_404();
    let out = sidecar_against_vault(root, &format!("http://vault.rotor.test:{port}"), |e| {
        e.contains("not found")
    });
    let heads = seen.lock().unwrap().clone();
    let reached = heads
        .iter()
        .any(|h| h.contains(&format!("host: vault.rotor.test:{port}")));
    (reached, heads, out)
}

#[test]
fn the_static_sidecar_resolves_names_from_etc_hosts_and_from_dns() {
    // /etc/hosts, as the kubelet mounts it.
    let sidecar = unpack("rotor-sidecar");
    let root = sidecar.path().join("root");
    std::fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost\n127.0.0.1 vault.rotor.test\n",
    )
    .unwrap();
    let (reached, heads, out) = vault_by_name(&root);
    assert!(
        reached,
        "no request reached the server by its /etc/hosts name: {heads:?}\n{out}"
    );

    // DNS, as the kubelet's resolv.conf points at the cluster's: a server
    // on a loopback address of its own, so parallel runs do not meet.
    let sidecar = unpack("rotor-sidecar");
    let root = sidecar.path().join("root");
    let ip = format!(
        "127.53.{}.{}",
        std::process::id() % 250 + 1,
        free_port() % 250 + 1
    );
    let queries = dns_server(&ip, "vault.rotor.test");
    std::fs::write(
        root.join("etc/resolv.conf"),
        format!("nameserver {ip}\noptions attempts:1 timeout:2\n"),
    )
    .unwrap();
    let (reached, heads, out) = vault_by_name(&root);
    assert!(
        reached,
        "no request reached the server by its DNS name: {heads:?}\nDNS queries: {:?}\n{out}",
        queries.lock().unwrap()
    );
    assert!(
        queries
            .lock()
            .unwrap()
            .iter()
            .any(|q| q.starts_with("vault.rotor.test ")),
        "{:?}",
        queries.lock().unwrap()
    );
}

#[test]
fn tls_roots_come_from_the_images_ca_bundle() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rotor image test CA");
    let ca = params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["aws.rotor.test".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();

    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let head = read_head(&mut tls);
            if head.is_empty() {
                continue; // the handshake failed
            }
            record.lock().unwrap().push(head);
            let body = r#"{"__type":"ResourceNotFoundException","Message":"no such secret"}"#;
            let _ = write!(
                tls,
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.flush();
        }
    });

    let sidecar = unpack("rotor-sidecar");
    let root = sidecar.path().join("root");
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 aws.rotor.test\n").unwrap();
    // The test CA, in this copy of the image's bundle only.
    let mut bundle = std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("etc/ssl/certs/ca-certificates.crt"))
        .unwrap();
    bundle.write_all(ca.pem().as_bytes()).unwrap();
    drop(bundle);
    let work = work_dir(&root);
    std::fs::write(work.join("annotations"), "rotor.dev/secret.db=\"app/db\"\n").unwrap();
    std::fs::create_dir_all(work.join("out")).unwrap();
    chown_tree(&work);
    let admin = format!("--admin-addr=127.0.0.1:{}", free_port());
    let push = format!("--push-addr=127.0.0.1:{}", free_port());
    let endpoint = format!("--aws-endpoint=https://aws.rotor.test:{port}");
    // --once retries until it has the secret: stop it once the store's
    // answer (no such secret) is logged.
    let stderr = run_until(
        in_image(
            &root,
            &[
                "/usr/local/bin/rotor-sidecar",
                "--once",
                "--annotations=/work/annotations",
                "--out-dir=/work/out",
                "--store-kind=aws",
                "--aws-region=eu-west-1",
                &endpoint,
                &admin,
                &push,
            ],
            &[
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ],
        ),
        |e| e.contains("not found"),
    );
    let heads = seen.lock().unwrap().clone();
    assert!(
        heads
            .iter()
            .any(|h| h.contains("x-amz-target: secretsmanager.")
                && h.contains("host: aws.rotor.test")),
        "no AWS request arrived over TLS verified with the image's bundle: {heads:?}\n{stderr}"
    );
}

#[test]
fn sboms_list_the_rust_dependencies_of_each_binary() {
    for (file, component) in [
        ("rotor-sidecar.cdx.json", "rotor-sidecar"),
        ("rotor-controller.cdx.json", "rotor-controller"),
        ("rotor-controller.rotor.cdx.json", "rotor"),
    ] {
        let bom: serde_json::Value =
            serde_json::from_slice(&std::fs::read(images().join(file)).unwrap()).unwrap();
        assert_eq!(bom["bomFormat"], "CycloneDX", "{file}");
        assert_eq!(bom["metadata"]["component"]["name"], component, "{file}");
        let names: Vec<&str> = bom["components"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        for dep in ["ring", "rustls", "tokio", "rotor-store"] {
            assert!(names.contains(&dep), "{file}: no {dep} in {names:?}");
        }
        // Dev-only dependencies are not in the binaries.
        for dev in ["criterion", "tower-test"] {
            assert!(!names.contains(&dev), "{file}: {dev} is a dev dependency");
        }
    }
}

#[test]
fn images_are_small() {
    for (name, _) in IMAGES {
        let size = std::fs::metadata(images().join(format!("{name}.tar")))
            .unwrap()
            .len();
        eprintln!("{name}.tar: {:.1} MiB", size as f64 / 1048576.0);
        assert!(size < 40 << 20, "{name} is {size} bytes");
    }
}

/// The recipe's constants from images/build (`NAME=value` lines).
fn script_constants() -> BTreeMap<String, String> {
    let script = std::fs::read_to_string(workspace_root().join("images/build")).unwrap();
    let mut vars = BTreeMap::new();
    for line in script.lines() {
        if let Some((k, v)) = line.split_once('=')
            && !k.is_empty()
            && k.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        {
            let v = v.trim_matches('"');
            let v = vars
                .iter()
                .fold(v.to_owned(), |v, (k, val): (&String, &String)| {
                    v.replace(&format!("${k}"), val)
                });
            vars.insert(k.to_owned(), v);
        }
    }
    vars
}

#[test]
fn the_containerfile_and_the_script_name_the_same_base_user_and_entrypoints() {
    let vars = script_constants();
    let containerfile =
        std::fs::read_to_string(workspace_root().join("images/Containerfile")).unwrap();
    let script = std::fs::read_to_string(workspace_root().join("images/build")).unwrap();
    // Base: the script starts from crane's empty base; the Containerfile's
    // final stages from scratch.
    assert!(script.contains("--oci-empty-base"));
    let user = format!("{}:{}", vars["USER_ID"], vars["USER_ID"]);
    assert_eq!(user, USER);
    for (name, entry) in [
        ("rotor-sidecar", &vars["SIDECAR_ENTRYPOINT"]),
        ("rotor-controller", &vars["CONTROLLER_ENTRYPOINT"]),
    ] {
        let stage = containerfile
            .split("\nFROM ")
            .find(|s| s.contains(&format!(" AS {name}\n")))
            .unwrap_or_else(|| panic!("no stage {name}"));
        assert!(stage.starts_with("scratch AS"), "{name}: {stage}");
        assert!(stage.contains(&format!("\nUSER {user}\n")), "{name}");
        assert!(
            stage.contains(&format!("\nENTRYPOINT [\"{entry}\"]\n")),
            "{name}: entrypoint {entry}"
        );
        assert_eq!(entry, &format!("{}/{name}", vars["BIN_DIR"]));
    }
    // The same static build and the same CA bundle path.
    assert!(containerfile.contains("-C target-feature=+crt-static"));
    assert!(containerfile.contains(&vars["TRIPLE"]));
    assert!(containerfile.contains(&vars["CA_BUNDLE"]));
    assert!(containerfile.contains("COPY --from=build /out/rotor /usr/local/bin/rotor\n"));
}
