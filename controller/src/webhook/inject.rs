//! Builds the injected pod: the sidecar (a native sidecar, or an init
//! container plus a sidecar container on clusters before 1.29), its
//! volumes, and the read-only mount in every app container. Every step adds
//! only what is missing, so a second pass changes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection,
    DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, Pod, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rotor_crds::annotations::{self, PodSecrets};
use rotor_crds::api::ProviderKind;
use rotor_crds::defaults;

use crate::store_index::Resolved;

use crate::pod_injection::{ANNOTATIONS_FILE, annotations_arg};
pub use crate::pod_injection::{
    INIT, PODINFO_PATH, PODINFO_VOLUME, SCRATCH_VOLUME, SECRETS_VOLUME, SIDECAR,
};
const CREDS_PATH: &str = "/var/run/secrets/rotor";
/// The projected token the sidecar presents on the channel.
pub const CHANNEL_TOKEN_VOLUME: &str = "rotor-channel-token";
/// Where the sidecar mounts [`CHANNEL_TOKEN_VOLUME`].
pub const CHANNEL_TOKEN_PATH: &str = "/var/run/rotor/channel";
/// The channel token's lifetime: the API server's minimum, so a token
/// that leaves the pod is of use for minutes at most (the kubelet renews
/// it at 80 %).
pub const CHANNEL_TOKEN_SECONDS: i64 = 600;
/// The sidecar's env var with the controller's CA bundle (PEM).
pub const CONTROLLER_CA_ENV: &str = "ROTOR_CONTROLLER_CA_PEM";

/// How injected sidecars reach the controller's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInjection {
    /// `host:port` the sidecar dials (the controller Service's DNS name).
    pub controller_addr: String,
    /// The CA bundle of the controller's serving certificate.
    pub ca: CaSource,
}

/// Where the controller's CA bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// Read at each injection (it changes when the CA is replaced).
    File(std::path::PathBuf),
    /// Fixed PEM text (tests).
    Pem(String),
}

impl CaSource {
    /// The bundle in canonical PEM (each certificate re-encoded, in order),
    /// so that the same certificates are always the same text and a
    /// second pass over a pod changes nothing.
    pub fn canonical(&self) -> Result<String, String> {
        let (pem, origin) = match self {
            CaSource::File(path) => (
                std::fs::read(path).map_err(|e| {
                    format!(
                        "the controller cannot read its CA bundle {} for the sidecar's channel: {e}",
                        path.display()
                    )
                })?,
                path.display().to_string(),
            ),
            CaSource::Pem(pem) => (pem.as_bytes().to_vec(), "the CA bundle".to_owned()),
        };
        canonical_pem(&pem).map_err(|e| {
            format!(
                "{origin}: {e}; expected the PEM CA bundle of the controller's serving certificate"
            )
        })
    }
}

/// `pem`'s certificates, each as 64-column base64 between PEM markers.
pub fn canonical_pem(pem: &[u8]) -> Result<String, String> {
    use base64::Engine as _;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut out = String::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    if out.is_empty() {
        return Err("holds no certificate".to_owned());
    }
    Ok(out)
}

/// How pods are injected; from the controller's flags.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub image: String,
    /// Where app containers see the files.
    pub mount_path: String,
    /// `initContainers` with `restartPolicy: Always` (Kubernetes ≥ 1.29);
    /// otherwise an init container plus a sidecar container.
    pub native_sidecar: bool,
    /// The tmpfs `sizeLimit`.
    pub size_limit: String,
    pub admin_port: u16,
    /// How the sidecar reaches the controller; `None`: it only polls.
    pub channel: Option<ChannelInjection>,
    /// The sidecar's `imagePullPolicy`.
    pub pull_policy: String,
    /// The sidecar's resource requests and limits.
    pub resources: SidecarResources,
    /// A `rotor.dev/refresh` for pods that set none, added to the pod's
    /// annotations (which the sidecar reads); `None`: the sidecar's default.
    pub default_refresh: Option<String>,
}

/// The sidecar's resource requests and limits, as Kubernetes quantities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarResources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

/// Sized from the sidecar's measured use: about 6 MB RSS with 100 secrets.
impl Default for SidecarResources {
    fn default() -> Self {
        Self {
            cpu_request: "5m".to_owned(),
            memory_request: "16Mi".to_owned(),
            cpu_limit: "100m".to_owned(),
            memory_limit: "32Mi".to_owned(),
        }
    }
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            image: defaults::SIDECAR_IMAGE.to_owned(),
            mount_path: defaults::MOUNT_PATH.to_owned(),
            native_sidecar: true,
            size_limit: "1Mi".to_owned(),
            admin_port: defaults::ADMIN_PORT,
            channel: None,
            pull_policy: "Always".to_owned(),
            resources: SidecarResources::default(),
            default_refresh: None,
        }
    }
}

/// The sidecar's user when the app's is unknown: the image's user.
pub const FALLBACK_UID: i64 = 65532;

/// The injected pod and what the user should know about it.
pub struct Injected {
    pub pod: Pod,
    /// AdmissionReview warnings, which `kubectl` prints.
    pub warnings: Vec<String>,
}

/// The injected pod, or why the pod cannot be injected.
pub fn inject(
    pod: &Pod,
    contract: &PodSecrets,
    store: &Resolved,
    config: &InjectConfig,
) -> Result<Injected, String> {
    let mut pod = pod.clone();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.as_mut().ok_or("the pod has no spec")?;
    let user = SidecarUser::for_pod(spec, contract)?;
    let (mut store_args, mut store_env, mut store_volumes, mut store_mounts) =
        store_wiring(store, &namespace)?;
    if let Some(channel) = &config.channel {
        let (args, env, volume, mount) = channel_wiring(channel)?;
        store_args.extend(args);
        store_env.extend(env);
        store_volumes.push(volume);
        store_mounts.push(mount);
    }

    // No --push-addr: the push port stays on the sidecar's loopback; the
    // controller reaches the sidecar over the stream the sidecar dials.
    let mut args = vec![
        annotations_arg(),
        format!("--out-dir={}", config.mount_path),
        format!("--admin-addr=0.0.0.0:{}", config.admin_port),
    ];
    if let Some(mode) = user.default_file_mode() {
        args.push(format!("--default-file-mode={mode:04o}"));
    }
    args.extend(store_args);
    let mut mounts = vec![
        mount(SECRETS_VOLUME, &config.mount_path, false),
        mount(PODINFO_VOLUME, PODINFO_PATH, true),
        mount(SCRATCH_VOLUME, "/tmp", false),
    ];
    mounts.extend(store_mounts);
    let mut env = vec![EnvVar {
        name: "ROTOR_LOG_FORMAT".into(),
        value: Some("json".into()),
        ..EnvVar::default()
    }];
    env.extend(store_env);
    let sidecar = Container {
        name: SIDECAR.into(),
        image: Some(config.image.clone()),
        image_pull_policy: Some(config.pull_policy.clone()),
        args: Some(args.clone()),
        env: Some(env.clone()),
        ports: Some(vec![port("admin", config.admin_port)]),
        volume_mounts: Some(mounts.clone()),
        security_context: Some(hardened(user.uid(), user.gid())),
        resources: Some(resources(&config.resources)),
        startup_probe: Some(probe("/readyz", config.admin_port, 1, 120)),
        readiness_probe: Some(probe("/readyz", config.admin_port, 5, 3)),
        liveness_probe: Some(probe("/healthz", config.admin_port, 10, 3)),
        restart_policy: config.native_sidecar.then(|| "Always".to_owned()),
        ..Container::default()
    };

    // Rotor's containers: (the list they go in, the container). A pod
    // that already has one must have exactly what Rotor injects now (a
    // second pass); anything else under Rotor's names is refused.
    let mut wanted_init = Vec::new();
    let mut wanted_app = Vec::new();
    if config.native_sidecar {
        wanted_init.push(sidecar);
    } else {
        let mut once = sidecar.clone();
        once.name = INIT.into();
        once.args = Some(args.iter().cloned().chain(["--once".to_owned()]).collect());
        once.ports = None;
        once.startup_probe = None;
        once.readiness_probe = None;
        once.liveness_probe = None;
        wanted_init.push(once);
        wanted_app.push(sidecar);
    }
    place_containers(
        spec.init_containers.get_or_insert_with(Vec::new),
        wanted_init,
        "init container",
    )?;
    place_containers(&mut spec.containers, wanted_app, "container")?;

    // The app containers (and other init containers) read the files.
    let ours = |c: &Container| c.name == SIDECAR || c.name == INIT;
    let app_mount = mount(SECRETS_VOLUME, &config.mount_path, true);
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        if ours(c) {
            continue;
        }
        let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
        match mounts.iter().find(|m| m.name == SECRETS_VOLUME) {
            None => mounts.push(app_mount.clone()),
            Some(m) if same_as_injected(&app_mount, m) => {}
            Some(_) => {
                return Err(format!(
                    "container {:?} already mounts a volume named {SECRETS_VOLUME:?} differently from what Rotor injects (read-only at {}); Rotor's volume names are reserved: rename that mount",
                    c.name, config.mount_path
                ));
            }
        }
    }

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    let mut wanted = vec![
        Volume {
            name: SECRETS_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(quantity(&config.size_limit)),
            }),
            ..Volume::default()
        },
        Volume {
            name: SCRATCH_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(quantity("1Mi")),
            }),
            ..Volume::default()
        },
        Volume {
            name: PODINFO_VOLUME.into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: ANNOTATIONS_FILE.into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.annotations".into(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..DownwardAPIVolumeFile::default()
                }]),
                ..DownwardAPIVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    wanted.extend(store_volumes);
    for v in wanted {
        match volumes.iter().find(|x| x.name == v.name) {
            None => volumes.push(v),
            Some(existing) if same_as_injected(&v, &canonical_volume(existing)) => {}
            Some(_) => {
                return Err(format!(
                    "the pod already has a volume named {:?} that is not the one Rotor injects; Rotor's volume names are reserved: rename that volume",
                    v.name
                ));
            }
        }
    }
    if contract.needs_shared_pid_namespace() {
        spec.share_process_namespace = Some(true);
    }
    let pod_annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    if let Some(refresh) = &config.default_refresh {
        pod_annotations
            .entry(annotations::REFRESH.to_owned())
            .or_insert_with(|| canonical_duration(refresh));
    }
    pod_annotations.insert(annotations::STATUS.to_owned(), "injected".to_owned());
    let warnings = user.warning().into_iter().collect();
    Ok(Injected { pod, warnings })
}

/// Puts each wanted container first in `list` unless an identical one is
/// there; a different container under a Rotor name, in this list or the
/// other, is refused.
fn place_containers(
    list: &mut Vec<Container>,
    wanted: Vec<Container>,
    what: &str,
) -> Result<(), String> {
    for c in list.iter() {
        if (c.name == SIDECAR || c.name == INIT) && !wanted.iter().any(|w| w.name == c.name) {
            return Err(format!(
                "the pod already has an {what} named {:?}, a name Rotor reserves for its own; rename it",
                c.name
            ));
        }
    }
    for w in wanted.into_iter().rev() {
        match list.iter().find(|c| c.name == w.name) {
            None => list.insert(0, w),
            Some(existing) if same_as_injected(&w, &canonical_quantities(existing)) => {}
            Some(_) => {
                return Err(format!(
                    "the pod already has an {what} named {:?} that differs from the one Rotor injects (image, args, env, securityContext, mounts); Rotor's container names are reserved: rename it",
                    w.name
                ));
            }
        }
    }
    Ok(())
}

/// True when `existing` is `ours` as the API server stores it: every field
/// Rotor sets has the same value, and the only other fields are those the
/// API server fills in by default.
pub fn same_as_injected<T: serde::Serialize>(ours: &T, existing: &T) -> bool {
    match (serde_json::to_value(ours), serde_json::to_value(existing)) {
        (Ok(a), Ok(b)) => json_same_as_injected(&a, &b),
        _ => false,
    }
}

/// Fields the API server defaults on containers, probes, env and volumes.
const DEFAULTED: &[&str] = &[
    "terminationMessagePath",
    "terminationMessagePolicy",
    "successThreshold",
    "scheme",
    "apiVersion",
    "defaultMode",
    "protocol",
];

fn is_empty(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn json_same_as_injected(ours: &serde_json::Value, existing: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (ours, existing) {
        (Value::Object(a), Value::Object(b)) => {
            // The API server omits empty values (`readOnly: false`).
            a.iter().all(|(k, v)| match b.get(k) {
                Some(w) => json_same_as_injected(v, w),
                None => is_empty(v),
            }) && b
                .keys()
                .all(|k| a.contains_key(k) || DEFAULTED.contains(&k.as_str()))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(v, w)| json_same_as_injected(v, w))
        }
        _ => ours == existing,
    }
}

/// Who the sidecar runs as, which decides who may read the files. The
/// sidecar holds no capability to chown, so running as the files' owner is
/// how they come to belong to it. The pod's own securityContext is never
/// changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarUser {
    /// The app's user (or `rotor.dev/file-owner`): files `0400`, owned by it.
    App { uid: i64, gid: Option<i64> },
    /// The app's user is unknown (it runs as its image's `USER`), but the
    /// pod has an fsGroup: a fixed non-root user in that group, files
    /// `0440`, readable by the group.
    FsGroup { gid: i64 },
    /// Neither is known: a fixed non-root user, files `0444`, readable by
    /// every container of this pod that mounts the volume (no one else
    /// can reach a pod's memory-backed emptyDir).
    Unknown,
}

impl SidecarUser {
    pub fn for_pod(
        spec: &k8s_openapi::api::core::v1::PodSpec,
        contract: &PodSecrets,
    ) -> Result<Self, String> {
        if let Some((uid, gid)) = contract.file_owner {
            if uid == 0 {
                return Err(
                    "annotation rotor.dev/file-owner: uid 0 is root; expected a non-root uid"
                        .to_owned(),
                );
            }
            return Ok(Self::App {
                uid: i64::from(uid),
                gid: Some(i64::from(gid)),
            });
        }
        let pod_sc = spec.security_context.as_ref();
        let app_sc = spec
            .containers
            .iter()
            .find(|c| c.name != SIDECAR)
            .and_then(|c| c.security_context.as_ref());
        let uid = app_sc
            .and_then(|s| s.run_as_user)
            .or(pod_sc.and_then(|s| s.run_as_user));
        let gid = app_sc
            .and_then(|s| s.run_as_group)
            .or(pod_sc.and_then(|s| s.run_as_group));
        match (uid, pod_sc.and_then(|s| s.fs_group)) {
            (Some(0), _) => Err("the app runs as root (runAsUser: 0) and Rotor's sidecar never does; run the app as a non-root user, or set rotor.dev/file-owner to a non-root uid:gid".to_owned()),
            (Some(uid), _) => Ok(Self::App { uid, gid }),
            (None, Some(fs_group)) => Ok(Self::FsGroup { gid: fs_group }),
            (None, None) => Ok(Self::Unknown),
        }
    }

    pub fn uid(self) -> i64 {
        match self {
            Self::App { uid, .. } => uid,
            Self::FsGroup { .. } | Self::Unknown => FALLBACK_UID,
        }
    }

    pub fn gid(self) -> Option<i64> {
        match self {
            Self::App { gid, .. } => gid,
            Self::FsGroup { gid } => Some(gid),
            Self::Unknown => Some(FALLBACK_UID),
        }
    }

    /// The sidecar's `--default-file-mode`, when not its own `0400`.
    pub fn default_file_mode(self) -> Option<u32> {
        match self {
            Self::App { .. } => None,
            Self::FsGroup { .. } => Some(0o440),
            Self::Unknown => Some(0o444),
        }
    }

    /// What the user is told about the choice, when it is not `0400`.
    pub fn warning(self) -> Option<String> {
        match self {
            Self::App { .. } => None,
            Self::FsGroup { gid } => Some(format!(
                "rotor: the pod sets no runAsUser, so Rotor's sidecar runs as uid {FALLBACK_UID} in the pod's fsGroup {gid} and writes the secret files with mode 0440 (readable by that group); for mode 0400 owned by the app, set securityContext.runAsUser on the pod or its first container, or set rotor.dev/file-owner"
            )),
            Self::Unknown => Some(format!(
                "rotor: the pod sets no runAsUser and no fsGroup, so Rotor's sidecar runs as uid {FALLBACK_UID} and writes the secret files with mode 0444 (readable by every container of this pod that mounts them); for mode 0400 owned by the app, set securityContext.runAsUser on the pod or its first container, or set fsGroup for mode 0440"
            )),
        }
    }
}

type Wiring = (Vec<String>, Vec<EnvVar>, Vec<Volume>, Vec<VolumeMount>);

/// Sidecar flags, env, volumes and mounts for the store's provider.
fn store_wiring(store: &Resolved, namespace: &str) -> Result<Wiring, String> {
    let provider = store
        .provider
        .view()
        .map_err(|e| format!("{} {:?}: {e}", store.kind, store.name))?;
    let mut args = Vec::new();
    let mut env = Vec::new();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    match provider {
        ProviderKind::Vault(v) => {
            args.extend([
                "--store-kind=vault".to_owned(),
                format!("--vault-addr={}", v.server),
                format!("--vault-mount={}", v.mount),
            ]);
            if let Some(ca) = &v.ca_bundle {
                env.push(plain_env("ROTOR_VAULT_CA_PEM", ca));
            }
            if let Some(k) = &v.auth.kubernetes {
                args.extend([
                    "--vault-auth=kubernetes".to_owned(),
                    format!("--vault-role={}", k.role),
                    format!("--vault-auth-mount={}", k.mount_path),
                    format!("--vault-jwt-file={CREDS_PATH}/sa/token"),
                ]);
                volumes.push(token_volume("rotor-sa-token", k.audience(), 3600));
                mounts.push(mount("rotor-sa-token", &format!("{CREDS_PATH}/sa"), true));
            } else if let Some(a) = &v.auth.app_role {
                args.extend([
                    "--vault-auth=approle".to_owned(),
                    format!("--vault-role-id={}", a.role_id),
                    format!("--vault-auth-mount={}", a.mount_path),
                    format!("--vault-secret-id-file={CREDS_PATH}/approle/secret-id"),
                ]);
                volumes.push(secret_volume(
                    "rotor-approle",
                    &a.secret_ref.name,
                    &a.secret_ref.key,
                    "secret-id",
                ));
                mounts.push(mount(
                    "rotor-approle",
                    &format!("{CREDS_PATH}/approle"),
                    true,
                ));
            } else if let Some(t) = &v.auth.token_secret_ref {
                args.extend([
                    "--vault-auth=token".to_owned(),
                    format!("--vault-token-file={CREDS_PATH}/vault-token/token"),
                ]);
                volumes.push(secret_volume("rotor-vault-token", &t.name, &t.key, "token"));
                mounts.push(mount(
                    "rotor-vault-token",
                    &format!("{CREDS_PATH}/vault-token"),
                    true,
                ));
            } else {
                return Err(format!("{} {:?} has no Vault auth", store.kind, store.name));
            }
        }
        ProviderKind::Aws(a) => {
            args.extend([
                "--store-kind=aws".to_owned(),
                format!("--aws-region={}", a.region),
            ]);
            if let Some(e) = &a.endpoint {
                args.push(format!("--aws-endpoint={e}"));
            }
            if let Some(role) = &a.role_arn {
                env.push(plain_env("AWS_ROLE_ARN", role));
                env.push(plain_env(
                    "AWS_WEB_IDENTITY_TOKEN_FILE",
                    &format!("{CREDS_PATH}/aws/token"),
                ));
                volumes.push(token_volume("rotor-aws-token", "sts.amazonaws.com", 3600));
                mounts.push(mount("rotor-aws-token", &format!("{CREDS_PATH}/aws"), true));
            }
        }
        ProviderKind::Kubernetes(_) => {
            args.extend([
                "--store-kind=kubernetes".to_owned(),
                format!("--kubernetes-namespace={namespace}"),
            ]);
            // Injected after the ServiceAccount admission plugin ran, so the
            // sidecar gets its own API credentials, where kube looks for them.
            volumes.push(Volume {
                name: "rotor-kube-api".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![
                        VolumeProjection {
                            service_account_token: Some(ServiceAccountTokenProjection {
                                path: "token".into(),
                                expiration_seconds: Some(3600),
                                ..ServiceAccountTokenProjection::default()
                            }),
                            ..VolumeProjection::default()
                        },
                        VolumeProjection {
                            config_map: Some(ConfigMapProjection {
                                name: "kube-root-ca.crt".into(),
                                items: Some(vec![KeyToPath {
                                    key: "ca.crt".into(),
                                    path: "ca.crt".into(),
                                    mode: None,
                                }]),
                                optional: None,
                            }),
                            ..VolumeProjection::default()
                        },
                        VolumeProjection {
                            downward_api: Some(DownwardAPIProjection {
                                items: Some(vec![DownwardAPIVolumeFile {
                                    path: "namespace".into(),
                                    field_ref: Some(ObjectFieldSelector {
                                        field_path: "metadata.namespace".into(),
                                        ..ObjectFieldSelector::default()
                                    }),
                                    ..DownwardAPIVolumeFile::default()
                                }]),
                            }),
                            ..VolumeProjection::default()
                        },
                    ]),
                    ..ProjectedVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(mount(
                "rotor-kube-api",
                "/var/run/secrets/kubernetes.io/serviceaccount",
                true,
            ));
        }
        ProviderKind::Local(l) => {
            args.extend([
                format!("--local-store={}", l.path),
                format!("--key={}", l.key_path),
            ]);
            if let Some(v) = &l.volume {
                let mut volume = Volume {
                    name: "rotor-local-store".into(),
                    ..Volume::default()
                };
                if let Some(claim) = &v.persistent_volume_claim {
                    volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.clone(),
                        read_only: Some(true),
                    });
                } else if let Some(secret) = &v.secret {
                    volume.secret = Some(SecretVolumeSource {
                        secret_name: Some(secret.clone()),
                        default_mode: Some(0o400),
                        ..SecretVolumeSource::default()
                    });
                }
                volumes.push(volume);
                mounts.push(mount("rotor-local-store", &v.mount_path, true));
            }
        }
    }
    Ok((args, env, volumes, mounts))
}

/// The channel's flags, env, token volume and its mount: the controller's
/// address and CA bundle, the pod's name, namespace and uid from the
/// downward API (claims the controller checks against the token's
/// review), and a projected ServiceAccount token for Rotor's audience.
fn channel_wiring(
    channel: &ChannelInjection,
) -> Result<(Vec<String>, Vec<EnvVar>, Volume, VolumeMount), String> {
    let ca = channel.ca.canonical()?;
    let args = vec![
        format!("--controller-addr={}", channel.controller_addr),
        format!("--channel-token={CHANNEL_TOKEN_PATH}/token"),
    ];
    let env = vec![
        plain_env(CONTROLLER_CA_ENV, &ca),
        field_env("ROTOR_POD_NAME", "metadata.name"),
        field_env("ROTOR_POD_NAMESPACE", "metadata.namespace"),
        field_env("ROTOR_POD_UID", "metadata.uid"),
    ];
    let volume = token_volume(
        CHANNEL_TOKEN_VOLUME,
        rotor_channel::AUDIENCE,
        CHANNEL_TOKEN_SECONDS,
    );
    Ok((
        args,
        env,
        volume,
        mount(CHANNEL_TOKEN_VOLUME, CHANNEL_TOKEN_PATH, true),
    ))
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn token_volume(name: &str, audience: &str, seconds: i64) -> Volume {
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(audience.into()),
                    expiration_seconds: Some(seconds),
                    path: "token".into(),
                }),
                ..VolumeProjection::default()
            }]),
            default_mode: Some(0o400),
        }),
        ..Volume::default()
    }
}

fn secret_volume(name: &str, secret: &str, key: &str, path: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: path.into(),
                mode: None,
            }]),
            default_mode: Some(0o400),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn probe(path: &str, port: u16, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(port)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

fn hardened(uid: i64, gid: Option<i64>) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: gid,
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

// Rendering: every quantity and duration the webhook writes is in the
// form the API server stores, and what a pod holds is compared by meaning
// (see `quantity`), so a second pass over a stored pod changes nothing.

/// `text` as the API server stores it; text that is no quantity (the
/// flags refuse it) is written as given, for the API server to refuse.
fn quantity(text: &str) -> Quantity {
    Quantity(super::quantity::canonical(text).unwrap_or_else(|_| text.to_owned()))
}

/// A refresh interval in Rotor's one form (`90s` is written `1m30s`).
fn canonical_duration(text: &str) -> String {
    humantime::parse_duration(text).map_or_else(|_| text.to_owned(), super::quantity::duration)
}

/// `c` with its resource quantities in canonical form, so that a stored
/// sidecar compares equal to the one Rotor would write by meaning.
fn canonical_quantities(c: &Container) -> Container {
    let mut c = c.clone();
    if let Some(r) = c.resources.as_mut() {
        for list in [r.requests.as_mut(), r.limits.as_mut()]
            .into_iter()
            .flatten()
        {
            for q in list.values_mut() {
                *q = quantity(&q.0);
            }
        }
    }
    c
}

/// `v` with its emptyDir `sizeLimit` in canonical form.
fn canonical_volume(v: &Volume) -> Volume {
    let mut v = v.clone();
    if let Some(limit) = v.empty_dir.as_mut().and_then(|e| e.size_limit.as_mut()) {
        *limit = quantity(&limit.0);
    }
    v
}

fn resources(r: &SidecarResources) -> ResourceRequirements {
    let q = quantity;
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), q(&r.cpu_request)),
            ("memory".into(), q(&r.memory_request)),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".into(), q(&r.cpu_limit)),
            ("memory".into(), q(&r.memory_limit)),
        ])),
        ..ResourceRequirements::default()
    }
}
