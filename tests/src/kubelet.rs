//! The harness's stand-in for the kubelet: there is none next to the test
//! API server, so for an admitted pod it does what a kubelet would do for
//! Rotor's sidecar, and no more:
//!
//! - gives the pod a loopback IP (`127.0.0.N`; all of 127/8 is loopback),
//!   patches `status.podIP` and `phase: Running`;
//! - materialises the sidecar's volumes in local directories: the secrets
//!   volume on tmpfs, the downward-API annotations file, projected
//!   ServiceAccount tokens from the TokenRequest API (bound to the pod,
//!   with the projection's audience), the API credentials, Secret volumes;
//! - starts the real `rotor-sidecar` with the args and env the webhook
//!   injected, with mount paths mapped to those directories and `0.0.0.0`
//!   to the pod's IP; the pod's own loopback is its IP too (the sidecar's
//!   loopback push port goes there, `ROTOR_PUSH_ADDR`, so pods on this
//!   machine do not collide). The sidecar dials the controller through
//!   [`crate::cluster::ChannelService`], the address the webhook injects.
//!
//! What it does not do: run the app, pull images, enforce the
//! securityContext, or refresh the downward-API file by itself
//! ([`RunningPod::sync_annotations`] does, when a test asks).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use k8s_openapi::api::core::v1::{Container, Pod, Secret, Volume};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use crate::cluster::ControlPlane;
use crate::{http_to, tmpfs_dir, wait_until};

/// An admitted pod whose sidecar runs as a real process; killed on drop.
pub struct RunningPod {
    pub namespace: String,
    pub name: String,
    pub ip: String,
    /// The secrets volume, as the app would see it.
    pub out: tempfile::TempDir,
    /// The other volumes and the sidecar's log.
    pub root: tempfile::TempDir,
    pub admin_port: u16,
    child: Option<Child>,
    /// The downward-API file.
    annotations: Option<PathBuf>,
    /// The injected args and env, mapped to this machine.
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl RunningPod {
    /// Plays the kubelet for `name` in `namespace`, at `ip`: the pod is
    /// Running with its IP, and its sidecar starts.
    pub async fn start(plane: &ControlPlane, namespace: &str, name: &str, ip: &str) -> Self {
        let mut pod = Self::prepare(plane, namespace, name, ip).await;
        pod.spawn();
        pod
    }

    /// Everything but starting the sidecar: the pod is Running with its IP
    /// (so the controller counts it as a consumer), its volumes are ready.
    pub async fn prepare(plane: &ControlPlane, namespace: &str, name: &str, ip: &str) -> Self {
        let client = plane.client().await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let pod = pods.get(name).await.expect("the pod");
        let spec = pod.spec.clone().expect("pod spec");
        let sidecar = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .find(|c| c.name == "rotor-sidecar")
            .cloned()
            .expect("an injected rotor-sidecar container");
        let uid = pod.metadata.uid.clone().expect("pod uid");
        let service_account = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());

        let mut running = Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ip: ip.to_owned(),
            out: tmpfs_dir(),
            root: tempfile::tempdir().unwrap(),
            admin_port: 0,
            child: None,
            annotations: None,
            args: Vec::new(),
            env: Vec::new(),
        };

        // The volumes the sidecar mounts, in local directories.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        let mut env: Vec<(String, String)> = Vec::new();
        for m in sidecar.volume_mounts.iter().flatten() {
            let volume = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .unwrap_or_else(|| panic!("no volume {}", m.name));
            let dir = if m.name == "rotor-secrets" {
                running.out.path().to_owned()
            } else {
                let dir = running.root.path().join(&m.name);
                std::fs::create_dir_all(&dir).unwrap();
                dir
            };
            running
                .materialise(plane, &client, &pod, &uid, &service_account, volume, &dir)
                .await;
            if volume
                .projected
                .as_ref()
                .is_some_and(|p| p.sources.iter().flatten().any(|s| s.config_map.is_some()))
                && m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount"
            {
                // In-cluster API credentials: a kubeconfig over the same
                // files, since in-cluster paths are fixed.
                let kubeconfig = dir.join("kubeconfig");
                std::fs::write(
                    &kubeconfig,
                    format!(
                        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    tokenFile: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: {namespace}}}\ncurrent-context: c\n",
                        plane.server(),
                        dir.join("ca.crt").display(),
                        dir.join("token").display(),
                    ),
                )
                .unwrap();
                env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
            }
            mounts.push((m.mount_path.clone(), dir));
        }
        // Longest mount path first, so /a/b maps before /a.
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));

        let container_env = container_env(&sidecar, &pod, ip);
        let args: Vec<String> = sidecar
            .args
            .iter()
            .flatten()
            .map(|a| map_arg(&expand(a, &container_env), &mounts, ip))
            .collect();
        running.admin_port = args
            .iter()
            .find_map(|a| a.strip_prefix(&format!("--admin-addr={ip}:")))
            .and_then(|p| p.parse().ok())
            .expect("an --admin-addr");
        env.extend(container_env);
        env.push((
            "ROTOR_PUSH_ADDR".into(),
            format!("{ip}:{}", rotor_contract::defaults::PUSH_PORT),
        ));
        running.args = args;
        running.env = env;

        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{ "ip": ip }],
                }
            })),
        )
        .await
        .expect("patch pod status");

        running
    }

    /// Starts the sidecar with the injected args and env.
    pub fn spawn(&mut self) {
        let child = crate::command("rotor-sidecar")
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .env("ROTOR_LOG", "debug")
            .env_remove("ROTOR_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log_path()).unwrap())
            .spawn()
            .expect("start rotor-sidecar");
        crate::cluster::watchdog(&[child.id()], None);
        self.child = Some(child);
    }

    /// Waits for the sidecar's `/readyz`.
    pub fn wait_ready(&self) {
        let ok = wait_until(30, || {
            http_to(&self.ip, self.admin_port, "GET", "/readyz", "").is_some_and(|(s, _)| s == 200)
        });
        assert!(
            ok,
            "{}/{} never ready: {}",
            self.namespace,
            self.name,
            self.log()
        );
    }

    pub fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.out.path().join(file)).ok()
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("sidecar.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Rewrites the downward-API file from the pod's current annotations,
    /// as the kubelet does after an update.
    pub async fn sync_annotations(&self, plane: &ControlPlane) {
        let pod = Api::<Pod>::namespaced(plane.client().await, &self.namespace)
            .get(&self.name)
            .await
            .unwrap();
        if let Some(path) = &self.annotations {
            write_annotations(path, &pod);
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn materialise(
        &mut self,
        plane: &ControlPlane,
        client: &kube::Client,
        pod: &Pod,
        uid: &str,
        service_account: &str,
        volume: &Volume,
        dir: &Path,
    ) {
        let name = pod.name_any();
        if let Some(d) = &volume.downward_api {
            for item in d.items.iter().flatten() {
                let field = item.field_ref.as_ref().map(|f| f.field_path.as_str());
                assert_eq!(field, Some("metadata.annotations"), "{item:?}");
                let path = dir.join(&item.path);
                write_annotations(&path, pod);
                self.annotations = Some(path);
            }
        }
        if let Some(p) = &volume.projected {
            for source in p.sources.iter().flatten() {
                if let Some(t) = &source.service_account_token {
                    let audiences: Vec<&str> = t.audience.as_deref().into_iter().collect();
                    let token = plane
                        .token(
                            &self.namespace,
                            service_account,
                            &audiences,
                            Some((&name, uid)),
                        )
                        .await;
                    std::fs::write(dir.join(&t.path), token).unwrap();
                }
                if source.config_map.is_some() {
                    std::fs::write(dir.join("ca.crt"), &plane.ca_pem).unwrap();
                }
                if let Some(d) = &source.downward_api {
                    for item in d.items.iter().flatten() {
                        std::fs::write(dir.join(&item.path), &self.namespace).unwrap();
                    }
                }
            }
        }
        if let Some(s) = &volume.secret {
            let secret = Api::<Secret>::namespaced(client.clone(), &self.namespace)
                .get(s.secret_name.as_deref().unwrap_or_default())
                .await
                .expect("the Secret a volume names");
            let data = secret.data.unwrap_or_default();
            for item in s.items.iter().flatten() {
                std::fs::write(dir.join(&item.path), &data[&item.key].0).unwrap();
            }
        }
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_annotations(path: &Path, pod: &Pod) {
    let map: BTreeMap<String, String> = pod.annotations().clone();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, rotor_sidecar::downward::format(&map)).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// An injected arg with mount paths mapped to local directories and the
/// wildcard address to the pod's IP.
fn map_arg(arg: &str, mounts: &[(String, PathBuf)], ip: &str) -> String {
    let Some((flag, value)) = arg.split_once('=') else {
        return arg.to_owned();
    };
    if let Some(port) = value.strip_prefix("0.0.0.0:") {
        return format!("{flag}={ip}:{port}");
    }
    for (mount, dir) in mounts {
        if let Some(rest) = value.strip_prefix(mount.as_str())
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return format!("{flag}={}{rest}", dir.display());
        }
    }
    arg.to_owned()
}

/// `$(NAME)` in an arg replaced by the container's env, as the kubelet
/// does.
fn expand(arg: &str, env: &[(String, String)]) -> String {
    env.iter()
        .fold(arg.to_owned(), |a, (k, v)| a.replace(&format!("$({k})"), v))
}

/// The container's env: plain values, and `metadata.name`,
/// `metadata.namespace`, `metadata.uid` and `status.podIP` field refs.
fn container_env(c: &Container, pod: &Pod, ip: &str) -> Vec<(String, String)> {
    c.env
        .iter()
        .flatten()
        .filter_map(|e| {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => match from.field_ref.as_ref()?.field_path.as_str() {
                    "metadata.name" => pod.name_any(),
                    "metadata.namespace" => pod.namespace().unwrap_or_default(),
                    "metadata.uid" => pod.uid().unwrap_or_default(),
                    "status.podIP" => ip.to_owned(),
                    _ => return None,
                },
                _ => return None,
            };
            Some((e.name.clone(), value))
        })
        .collect()
}
