//! A real Kubernetes control plane for the cluster tests, started the way
//! controller-runtime's envtest does: `etcd` and `kube-apiserver` as
//! processes on free loopback ports, built from their Go modules by
//! `tests/control-plane/build` (cached outside the clone).
//!
//! - One control plane per test binary ([`ControlPlane::shared`]); each test
//!   uses namespaces of its own ([`ControlPlane::namespace`]).
//! - RBAC is on, with an admin client certificate (CN `admin`, O
//!   `system:masters`) for the harness, and ServiceAccount tokens from the
//!   TokenRequest API for Rotor's processes, so RBAC is what the API server
//!   enforces.
//! - No kubelet, scheduler or controller-manager: the harness plays the
//!   kubelet where a test needs one (pod IPs, running sidecars).
//! - Both processes are stopped by pid when the test binary exits, also on
//!   a panic or a kill: a watchdog shell waits for the test process to go.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::servers::request;
use crate::{free_port, wait_until};

/// A running etcd plus kube-apiserver.
pub struct ControlPlane {
    /// Certificates, keys, kubeconfigs, logs and etcd's data.
    pub dir: PathBuf,
    /// kube-apiserver's secure port on 127.0.0.1.
    pub port: u16,
    /// The CA of the API server's serving certificate (PEM).
    pub ca_pem: String,
    /// An admin kubeconfig (system:masters).
    pub kubeconfig: PathBuf,
    /// The directory with the `etcd` and `kube-apiserver` binaries.
    pub bin_dir: PathBuf,
}

static SHARED: OnceLock<ControlPlane> = OnceLock::new();
static NAMES: AtomicU32 = AtomicU32::new(0);

impl ControlPlane {
    /// This test binary's control plane, started on first use.
    pub fn shared() -> &'static ControlPlane {
        SHARED.get_or_init(Self::start)
    }

    fn start() -> Self {
        let bin_dir = build_binaries();
        let dir = tempfile::Builder::new()
            .prefix("rotor-control-plane-")
            .tempdir()
            .expect("control plane dir")
            .keep();
        let pki = Pki::generate(&dir);
        let etcd_port = free_port();
        let etcd_peer = free_port();
        let port = free_port();

        let etcd = Command::new(bin_dir.join("etcd"))
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg("--name=rotor-test")
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"
            ))
            .arg(format!(
                "--initial-cluster=rotor-test=http://127.0.0.1:{etcd_peer}"
            ))
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&dir, "etcd.log"))
            .spawn()
            .expect("start etcd");
        let etcd_pid = reap(etcd);
        watchdog(&[etcd_pid], None);
        assert!(
            wait_until(60, || request(etcd_port, "GET", "/health", &[], "")
                .is_some_and(|(s, b)| s == 200 && b.contains("true"))),
            "etcd did not become healthy: {}",
            read_log(&dir, "etcd.log")
        );

        let apiserver = Command::new(bin_dir.join("kube-apiserver"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={port}"))
            .arg(format!(
                "--cert-dir={}",
                dir.join("apiserver-certs").display()
            ))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.client_ca.display()))
            .arg(format!("--service-account-issuer=https://127.0.0.1:{port}"))
            .arg(format!(
                "--service-account-key-file={}",
                pki.sa_public.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.sa_private.display()
            ))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--authorization-mode=RBAC")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--endpoint-reconciler-type=none")
            .arg("--allow-privileged=true")
            .arg("--v=1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&dir, "kube-apiserver.log"))
            .spawn()
            .expect("start kube-apiserver");
        watchdog(&[reap(apiserver), etcd_pid], Some(&dir));

        let kubeconfig = dir.join("admin.kubeconfig");
        let ca_pem = std::fs::read_to_string(&pki.serving_ca).expect("ca");
        let admin = format!(
            "client-certificate-data: {}\n    client-key-data: {}",
            b64(&std::fs::read(&pki.admin_cert).unwrap()),
            b64(&std::fs::read(&pki.admin_key).unwrap())
        );
        write_kubeconfig(&kubeconfig, port, &ca_pem, "admin", &admin);
        let plane = Self {
            dir,
            port,
            ca_pem,
            kubeconfig,
            bin_dir,
        };
        let ready = wait_until(180, || {
            plane
                .kubectl()
                .args(["get", "--raw", "/readyz"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(
            ready,
            "kube-apiserver did not become ready: {}",
            read_log(&plane.dir, "kube-apiserver.log")
        );
        plane
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// `kubectl` with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        cmd
    }

    /// Runs kubectl with the admin kubeconfig; panics with its output
    /// unless it succeeds. Returns stdout.
    /// Waits until Rotor's CRDs are Established.
    pub fn wait_for_crds(&self) {
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/rotorstores.rotor.dev",
            "crd/clusterrotorstores.rotor.dev",
            "crd/secretrotationpolicies.rotor.dev",
        ]);
    }

    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        crate::stdout_ok(
            self.kubectl().args(args),
            &format!("kubectl {}", args.join(" ")),
        )
    }

    /// An admin client, bound to the calling test's runtime.
    pub async fn client(&self) -> kube::Client {
        client_from(&self.kubeconfig).await
    }

    /// A fresh namespace named `<prefix>-<n>`, created now.
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", NAMES.fetch_add(1, Ordering::Relaxed));
        self.create_namespace(&name, &[]).await;
        name
    }

    /// Creates a namespace with labels (ignores "already exists").
    pub async fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        match Api::<Namespace>::all(self.client().await)
            .create(&PostParams::default(), &ns)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(r)) if r.code == 409 => {}
            Err(e) => panic!("create namespace {name}: {e}"),
        }
    }

    /// Creates a ServiceAccount (there is no controller-manager to make
    /// the `default` one); ignores "already exists".
    pub async fn service_account(&self, namespace: &str, name: &str) {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match Api::<ServiceAccount>::namespaced(self.client().await, namespace)
            .create(&PostParams::default(), &sa)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(r)) if r.code == 409 => {}
            Err(e) => panic!("create serviceaccount {namespace}/{name}: {e}"),
        }
    }

    /// A token for a ServiceAccount from the TokenRequest API, for the
    /// given audiences (the API server's own when empty), bound to a pod
    /// when `pod` names one (its name and uid).
    pub async fn token(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
        pod: Option<(&str, &str)>,
    ) -> String {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                expiration_seconds: Some(3600),
                bound_object_ref: pod.map(|(name, uid)| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name.into()),
                    uid: Some(uid.into()),
                }),
            },
            ..TokenRequest::default()
        };
        let reply = Api::<ServiceAccount>::namespaced(self.client().await, namespace)
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("token for {namespace}/{service_account}: {e}"));
        reply.status.expect("token status").token
    }

    /// Writes a kubeconfig that authenticates with `token` to `path`.
    pub fn token_kubeconfig(&self, token: &str, path: &Path) {
        write_kubeconfig(
            path,
            self.port,
            &self.ca_pem,
            "token",
            &format!("token: {token}"),
        );
    }

    /// A client that authenticates with `token`, as a ServiceAccount would.
    pub async fn token_client(&self, token: &str) -> kube::Client {
        let path = self.dir.join(format!(
            "token-{}.kubeconfig",
            NAMES.fetch_add(1, Ordering::Relaxed)
        ));
        self.token_kubeconfig(token, &path);
        client_from(&path).await
    }

    /// The API server's log, for failure messages.
    pub fn log(&self) -> String {
        read_log(&self.dir, "kube-apiserver.log")
    }

    /// Starts kube-controller-manager with only its garbage collector
    /// (once per control plane), so that objects whose owners are deleted
    /// go, as in a real cluster. Nothing else of the controller-manager
    /// runs: no Deployments' pods, no default ServiceAccounts.
    pub fn garbage_collector(&self) {
        static STARTED: OnceLock<()> = OnceLock::new();
        STARTED.get_or_init(|| {
            let bin = self.bin_dir.join("kube-controller-manager");
            assert!(
                bin.exists(),
                "{} is missing; tests/control-plane/build builds it",
                bin.display()
            );
            let child = Command::new(bin)
                .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
                .args([
                    "--controllers=garbagecollector",
                    "--leader-elect=false",
                    "--use-service-account-credentials=false",
                    "--secure-port=0",
                    "--v=1",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&self.dir, "kube-controller-manager.log"))
                .spawn()
                .expect("start kube-controller-manager");
            watchdog(&[reap(child)], None);
        });
    }

    /// The controller-manager's log, for failure messages.
    pub fn controller_manager_log(&self) -> String {
        read_log(&self.dir, "kube-controller-manager.log")
    }
}

/// Installs Rotor with `kubectl apply --server-side -k deploy/` once per
/// control plane and waits for the CRDs to be Established.
pub fn installed() -> &'static ControlPlane {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    let plane = ControlPlane::shared();
    INSTALLED.get_or_init(|| {
        let deploy = crate::workspace_root().join("deploy");
        plane.kubectl_ok(&[
            "apply",
            "--server-side",
            "--field-manager=rotor-tests",
            "-k",
            deploy.to_str().unwrap(),
        ]);
        plane.wait_for_crds();
    });
    plane
}

async fn client_from(path: &Path) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("kubeconfig");
    kube::Client::try_from(config).expect("client")
}

fn write_kubeconfig(path: &Path, port: u16, ca_pem: &str, user: &str, auth: &str) {
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: rotor-test
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    {auth}
contexts:
- name: rotor-test
  context:
    cluster: rotor-test
    user: {user}
current-context: rotor-test
",
        ca = b64(ca_pem.as_bytes()),
    );
    write_private(path, &text);
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap();
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).expect("log file")
}

/// The last 4 KiB of a log, for failure messages.
fn read_log(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let start = text.len().saturating_sub(4096);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

/// Stops `pids` (and removes `dir`) once this test process is gone,
/// however it went: a panic, a kill, a timeout. The watchdog runs in a
/// session of its own and ignores the signals that end a test run, so it
/// outlives whatever ends the test.
pub fn watchdog(pids: &[u32], dir: Option<&Path>) {
    let pids = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let dir = dir.map(|d| d.display().to_string()).unwrap_or_default();
    let script = r#"
        trap '' TERM INT HUP
        while kill -0 "$0" 2>/dev/null; do sleep 0.5; done
        ours() { for p in $1; do
            grep -qaE 'rotor-|kube-apiserver|kube-controller-manager|etcd' /proc/$p/cmdline 2>/dev/null && echo $p; done; }
        kill $(ours "$1") 2>/dev/null; sleep 3; kill -9 $(ours "$1") 2>/dev/null
        [ -n "$2" ] && rm -rf "$2"
        exit 0"#;
    let child = Command::new("setsid")
        .args(["sh", "-c", script])
        .arg(std::process::id().to_string())
        .arg(pids)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start watchdog");
    reap(child);
}

/// Waits for a child on a thread of its own, so that it never lingers as
/// a zombie; returns its pid.
fn reap(mut child: std::process::Child) -> u32 {
    let pid = child.id();
    std::thread::spawn(move || child.wait());
    pid
}

/// Builds (or finds in the cache) kube-apiserver and etcd; returns their
/// directory. `ROTOR_CONTROL_PLANE_DIR` skips the build script.
fn build_binaries() -> PathBuf {
    if let Some(dir) = std::env::var_os("ROTOR_CONTROL_PLANE_DIR").map(PathBuf::from)
        && dir.join("kube-apiserver").exists()
        && dir.join("etcd").exists()
    {
        return dir;
    }
    let script = crate::workspace_root().join("tests/control-plane/build");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/control-plane/build");
    assert!(
        out.status.success(),
        "{} failed; see its output above",
        script.display()
    );
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(str::trim)
        .map(PathBuf::from)
        .expect("the build script prints the binaries' directory");
    assert!(
        dir.join("kube-apiserver").exists(),
        "no kube-apiserver in {}",
        dir.display()
    );
    dir
}

/// The control plane's certificates and keys.
struct Pki {
    serving_ca: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    client_ca: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    sa_private: PathBuf,
    sa_public: PathBuf,
}

impl Pki {
    fn generate(dir: &Path) -> Self {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            write_private(&path, text);
            path
        };
        let (ca, ca_key) = new_ca("rotor-test-ca");
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving = params.signed_by(&key, &ca, &ca_key).unwrap();

        let (client_ca, client_ca_key) = new_ca("rotor-test-client-ca");
        let admin_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "admin");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin = params
            .signed_by(&admin_key, &client_ca, &client_ca_key)
            .unwrap();

        let sa = KeyPair::generate().unwrap();
        Self {
            serving_ca: write("ca.crt", &ca.pem()),
            serving_cert: write("apiserver.crt", &serving.pem()),
            serving_key: write("apiserver.key", &key.serialize_pem()),
            client_ca: write("client-ca.crt", &client_ca.pem()),
            admin_cert: write("admin.crt", &admin.pem()),
            admin_key: write("admin.key", &admin_key.serialize_pem()),
            sa_private: write("sa.key", &sa.serialize_pem()),
            sa_public: write("sa.pub", &sa.public_key_pem()),
        }
    }
}

/// A serving certificate for `names` (DNS names or IP addresses) signed by
/// `ca`: its PEM and its key's PEM.
pub fn server_cert(ca: &rcgen::Certificate, ca_key: &KeyPair, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, ca, ca_key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A self-signed CA named `name`, and its key.
pub fn new_ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    (cert, key)
}

/// Waits up to `secs` for an async condition, polling every 100 ms.
pub async fn eventually<F, Fut>(secs: u64, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Points Rotor's MutatingWebhookConfiguration at a webhook on loopback
/// (`url: https://127.0.0.1:<port>/mutate`), as envtest does: no Service
/// or kube-proxy here.
pub fn point_webhook_at(plane: &ControlPlane, port: u16) {
    let url = format!("https://127.0.0.1:{port}/mutate");
    let current = plane.kubectl_ok(&[
        "get",
        "mutatingwebhookconfiguration/rotor-webhook",
        "-o",
        "jsonpath={.webhooks[0].clientConfig}",
    ]);
    let mut ops = Vec::new();
    if current.contains("\"service\"") {
        ops.push(serde_json::json!({"op": "remove", "path": "/webhooks/0/clientConfig/service"}));
    }
    ops.push(
        serde_json::json!({"op": "add", "path": "/webhooks/0/clientConfig/url", "value": url}),
    );
    plane.kubectl_ok(&[
        "patch",
        "mutatingwebhookconfiguration/rotor-webhook",
        "--type=json",
        "-p",
        &serde_json::Value::Array(ops).to_string(),
    ]);
}

/// The stand-in for the controller Service's channel port (kube-proxy):
/// one loopback port that forwards each connection to the next replica
/// that accepts it, in turn, as a Service spreads connections over its
/// endpoints. Every [`Controller`] of this test process registers its
/// channel port here, and the webhook injects this address, so a sidecar
/// refused with NotLeader re-dials and lands on another replica.
pub struct ChannelService {
    pub port: u16,
    backends: std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
}

impl ChannelService {
    /// The process's one Service, started on first use.
    pub fn shared() -> &'static ChannelService {
        static SERVICE: OnceLock<ChannelService> = OnceLock::new();
        SERVICE.get_or_init(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let backends: std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>> =
                std::sync::Arc::default();
            let list = backends.clone();
            std::thread::spawn(move || {
                let mut next = 0usize;
                for client in listener.incoming().flatten() {
                    let candidates = list.lock().unwrap().clone();
                    let upstream = (0..candidates.len()).find_map(|i| {
                        let addr = candidates[(next + i) % candidates.len()];
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()
                    });
                    next = next.wrapping_add(1);
                    let Some(upstream) = upstream else { continue };
                    pipe(client, upstream);
                }
            });
            ChannelService { port, backends }
        })
    }

    /// `host:port` sidecars dial.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn add(&self, backend: std::net::SocketAddr) {
        self.backends.lock().unwrap().push(backend);
    }
}

/// Copies bytes both ways between `a` and `b` until either side closes.
fn pipe(a: std::net::TcpStream, b: std::net::TcpStream) {
    let copy = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
        });
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        copy(a, b2);
        copy(b, a2);
    }
}

/// `rotor-controller run` out of cluster, authenticated as its own
/// ServiceAccount (a TokenRequest token), so `deploy/`'s RBAC is what the
/// API server enforces. Its webhook serves on 127.0.0.1 with a
/// self-managed certificate valid for that address. Killed on drop.
pub struct Controller {
    pub identity: String,
    pub webhook_port: u16,
    pub metrics_port: u16,
    /// Where this replica's channel listens (behind [`ChannelService`]).
    pub channel_port: u16,
    pub dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Controller {
    /// Starts a replica; `extra` are more flags for `run`.
    pub async fn start(plane: &ControlPlane, identity: &str, extra: &[&str]) -> Self {
        Self::start_at(plane, identity, free_port(), extra).await
    }

    /// Starts a replica whose webhook listens on `webhook_port`.
    pub async fn start_at(
        plane: &ControlPlane,
        identity: &str,
        webhook_port: u16,
        extra: &[&str],
    ) -> Self {
        Self::start_with_env(plane, identity, webhook_port, extra, &[]).await
    }

    /// Starts a replica with more environment variables (e.g.
    /// `AWS_ENDPOINT_URL_STS`).
    pub async fn start_with_env(
        plane: &ControlPlane,
        identity: &str,
        webhook_port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token = plane
            .token("rotor-system", "rotor-controller", &[], None)
            .await;
        let kubeconfig = dir.path().join("kubeconfig");
        plane.token_kubeconfig(&token, &kubeconfig);
        let tls = dir.path().join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        let metrics_port = free_port();
        let channel_port = free_port();
        let service = ChannelService::shared();
        service.add(([127, 0, 0, 1], channel_port).into());
        let child = crate::command("rotor-controller")
            .arg("run")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["--self-managed-certs", "--cert-host=127.0.0.1"])
            .arg(format!("--tls-cert={}", tls.join("tls.crt").display()))
            .arg(format!("--tls-key={}", tls.join("tls.key").display()))
            .arg(format!("--listen=127.0.0.1:{webhook_port}"))
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .arg(format!("--channel-addr=127.0.0.1:{channel_port}"))
            .arg(format!("--sidecar-controller-addr={}", service.addr()))
            .arg(format!("--identity={identity}"))
            .args(extra)
            .envs(env.iter().copied())
            .env("ROTOR_LOG", "info,rotor_controller=debug")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("controller.log")).unwrap())
            .spawn()
            .expect("start rotor-controller");
        watchdog(&[child.id()], None);
        Self {
            identity: identity.to_owned(),
            webhook_port,
            metrics_port,
            channel_port,
            dir,
            child: Some(child),
        }
    }

    /// Waits until the webhook answers over HTTPS with the certificate
    /// it wrote.
    pub fn wait_serving(&self) {
        let port = self.webhook_port;
        let ok = wait_until(60, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(ok, "the webhook never listened: {}", self.log());
    }

    pub fn log(&self) -> String {
        read_log(self.dir.path(), "controller.log")
    }

    /// The whole log, for scans.
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }

    /// The certificate this replica serves.
    pub fn serving_cert(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tls/tls.crt")).unwrap_or_default()
    }

    /// SIGKILL: a crash, no cleanup.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            crate::signal(&c, "TERM");
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Configures OpenBao's Kubernetes auth method with this API server as its
/// TokenReview endpoint (a reviewer ServiceAccount bound to
/// `system:auth-delegator`), and a role `role` for the given accounts and
/// namespaces, for tokens of audience `vault`, with read and write on the
/// `secret/` KV v2 mount.
pub async fn vault_kubernetes_auth(
    plane: &ControlPlane,
    bao: &crate::servers::Bao,
    role: &str,
    service_accounts: &[&str],
    namespaces: &[&str],
) {
    vault_kubernetes_role(plane, bao, role, service_accounts, namespaces, "rotor").await;
}

/// [`vault_kubernetes_auth`] with the role's token policy named: policy
/// `rotor` is read and write on all of `secret/`; write others with
/// `bao.api("PUT", "sys/policies/acl/<name>", ...)`.
pub async fn vault_kubernetes_role(
    plane: &ControlPlane,
    bao: &crate::servers::Bao,
    role: &str,
    service_accounts: &[&str],
    namespaces: &[&str],
    policy: &str,
) {
    plane.create_namespace("vault", &[]).await;
    plane.service_account("vault", "token-reviewer").await;
    let _ = plane
        .kubectl()
        .args([
            "create",
            "clusterrolebinding",
            "vault-token-reviewer",
            "--clusterrole=system:auth-delegator",
            "--serviceaccount=vault:token-reviewer",
        ])
        .output();
    let reviewer = plane.token("vault", "token-reviewer", &[], None).await;
    bao.api(
        "PUT",
        "sys/policies/acl/rotor",
        &serde_json::json!({
            "policy": "path \"secret/*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\", \"patch\"] }"
        })
        .to_string(),
    );
    let auths = bao.api("GET", "sys/auth", "");
    if !auths.contains("\"kubernetes/\"") {
        bao.api("POST", "sys/auth/kubernetes", r#"{"type":"kubernetes"}"#);
    }
    bao.api(
        "POST",
        "auth/kubernetes/config",
        &serde_json::json!({
            "kubernetes_host": plane.server(),
            "kubernetes_ca_cert": plane.ca_pem,
            "token_reviewer_jwt": reviewer,
            "disable_local_ca_jwt": true,
        })
        .to_string(),
    );
    bao.api(
        "POST",
        &format!("auth/kubernetes/role/{role}"),
        &serde_json::json!({
            "bound_service_account_names": service_accounts,
            "bound_service_account_namespaces": namespaces,
            "audience": "vault",
            "token_policies": [policy],
            "token_ttl": "1h",
        })
        .to_string(),
    );
}

/// The ServiceAccount rotation acts as in a namespace.
pub const ROTATOR: &str = "rotor-rotator";

/// The claims of a JWT (its payload, not verified): `sub`, `aud`, ...
pub fn jwt_claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// A pod of ServiceAccount `app`, running as uid 1000, with these
/// annotations: what an app team's Deployment would create.
pub fn app_pod(name: &str, annotations: &[(&str, &str)]) -> k8s_openapi::api::core::v1::Pod {
    let annotations: std::collections::BTreeMap<&str, &str> = annotations.iter().copied().collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            "serviceAccountName": "app",
            "securityContext": { "runAsUser": 1000, "runAsGroup": 1000 },
            "containers": [{ "name": "app", "image": "example/app:1" }],
        },
    }))
    .expect("a pod")
}

/// The Events about `object` in `ns`, as `kubectl get events -o json`
/// lists them (core v1: `reason`, `type`, `message`, `count`).
pub fn events(plane: &ControlPlane, ns: &str, object: &str) -> Vec<serde_json::Value> {
    let out = plane.kubectl_ok(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        &format!("involvedObject.name={object}"),
        "-o",
        "json",
    ]);
    let mut list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list["items"].as_array_mut().map(std::mem::take).unwrap()
}

/// The reasons of the Events about `policy`, as `kubectl get events` lists
/// them, with their counts.
pub fn event_reasons(
    plane: &ControlPlane,
    ns: &str,
    policy: &str,
) -> std::collections::BTreeMap<String, usize> {
    let mut reasons = std::collections::BTreeMap::new();
    for e in events(plane, ns, policy) {
        *reasons
            .entry(e["reason"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    reasons
}

/// How often each (type, reason) was reported about `object`, repeats
/// included: kube's recorder turns a repeated Event into one object whose
/// `count` grows.
pub fn event_counts(
    plane: &ControlPlane,
    ns: &str,
    object: &str,
) -> std::collections::BTreeMap<(String, String), u64> {
    let mut counts = std::collections::BTreeMap::new();
    for e in events(plane, ns, object) {
        let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
        *counts.entry((text("type"), text("reason"))).or_default() +=
            e["count"].as_u64().unwrap_or(1).max(1);
    }
    counts
}

/// KV v2 metadata of a secret: (number of versions, custom_metadata).
pub fn kv_metadata(bao: &crate::servers::Bao, secret: &str) -> (usize, serde_json::Value) {
    let meta: serde_json::Value =
        serde_json::from_str(&bao.api("GET", &format!("secret/metadata/{secret}"), "")).unwrap();
    (
        meta["data"]["versions"].as_object().unwrap().len(),
        meta["data"]["custom_metadata"].clone(),
    )
}

/// A pod reading `secret` from the RotorStore `vault` as `db-password`.
pub fn consumer_pod(name: &str, secret: &str) -> k8s_openapi::api::core::v1::Pod {
    app_pod(
        name,
        &[
            ("rotor.dev/inject", "true"),
            ("rotor.dev/store", "vault"),
            ("rotor.dev/secret.db-password", secret),
        ],
    )
}

/// A fresh namespace (named from `prefix`) with an `app` and a rotator
/// account, `bao` holding the secret `<ns>/db` with Kubernetes auth for
/// both, and the RotorStore `vault`; the namespace and the secret's name.
pub async fn vault_store_namespace(
    plane: &ControlPlane,
    bao: &crate::servers::Bao,
    prefix: &str,
) -> (String, String) {
    let ns = plane.namespace(prefix).await;
    plane.service_account(&ns, "app").await;
    plane.service_account(&ns, ROTATOR).await;
    vault_kubernetes_auth(plane, bao, "app", &["app", ROTATOR], &[&ns]).await;
    let secret = format!("{ns}/db");
    bao.api(
        "POST",
        &format!("secret/data/{secret}"),
        r#"{"data":{"value":"initial-password"}}"#,
    );
    let store: rotor_contract::api::RotorStore = serde_json::from_value(serde_json::json!({
        "apiVersion": "rotor.dev/v1alpha1",
        "kind": "RotorStore",
        "metadata": { "name": "vault" },
        "spec": { "provider": { "vault": {
            "server": bao.addr(),
            "mount": "secret",
            "auth": { "kubernetes": { "role": "app" } },
        } } },
    }))
    .unwrap();
    Api::<rotor_contract::api::RotorStore>::namespaced(plane.client().await, &ns)
        .create(&PostParams::default(), &store)
        .await
        .unwrap();
    (ns, secret)
}

/// One replica named `identity` that serves the webhook and holds the
/// leader Lease.
pub async fn lone_leader(plane: &ControlPlane, identity: &str) -> Controller {
    use k8s_openapi::api::coordination::v1::Lease;
    let client = plane.client().await;
    let webhook_port = free_port();
    point_webhook_at(plane, webhook_port);
    let controller =
        Controller::start_at(plane, identity, webhook_port, &["--lease-duration=4s"]).await;
    let led = eventually(30, || async {
        Api::<Lease>::namespaced(client.clone(), "rotor-system")
            .get_opt("rotor-controller-leader")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .as_deref()
            == Some(identity)
    })
    .await;
    assert!(led, "{identity} never took the Lease: {}", controller.log());
    controller
}

/// Creates `pod` through the webhook (retried while the webhook starts)
/// and returns it as stored.
pub async fn admit_pod(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    pod: k8s_openapi::api::core::v1::Pod,
    controller: &Controller,
) -> k8s_openapi::api::core::v1::Pod {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let admitted = eventually(30, || async {
        pods.create(&PostParams::default(), &pod).await.is_ok()
    })
    .await;
    assert!(admitted, "{name} was not admitted: {}", controller.log());
    pods.get(&name).await.unwrap()
}
