//! Builds the injected pod: the sidecar (a native sidecar, or an init
//! container plus a sidecar container on clusters before 1.29), its
//! volumes, and the read-only mount in every app container. Every step adds
//! only what is missing, so a second pass changes nothing.
//!
//! - `error`: why a pod is refused ([`InjectError`]), counted by reason.
//! - `ca`: the controller's CA bundle the sidecar trusts on the channel.
//! - `user`: who the sidecar runs as, and so who may read the files.
//! - `wiring`: the store's and the channel's flags, env and volumes.
//! - `objects`: the Kubernetes objects (env, volumes, probes) built here.
//! - `compare`: whether what a pod holds is what Rotor injects.

mod ca;
mod compare;
mod error;
mod objects;
mod user;
mod wiring;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar,
    ObjectFieldSelector, Pod, Volume,
};
use rotor_contract::annotations::{self, PodSecrets};
use rotor_contract::defaults;
use rotor_sidecar::flags::SidecarFlags;

use crate::pod_injection::{ANNOTATIONS_FILE, annotations_path};
pub use crate::pod_injection::{
    INIT, PODINFO_PATH, PODINFO_VOLUME, SCRATCH_VOLUME, SECRETS_VOLUME, SIDECAR,
};
use crate::store_index::Resolved;
pub use ca::{CaSource, ChannelInjection, canonical_pem};
pub use compare::same_as_injected;
use compare::{canonical_duration, canonical_quantities, canonical_volume, quantity};
pub use error::{InjectError, InjectReason, PemProblem};
use objects::{hardened, mount, port, probe, resources};
pub use user::{FALLBACK_UID, SidecarUser};
use wiring::{channel_wiring, store_wiring};

/// Where the sidecar's store credentials are mounted.
const CREDS_PATH: &str = "/var/run/secrets/rotor";
/// The projected token the sidecar presents on the channel.
pub const CHANNEL_TOKEN_VOLUME: &str = "rotor-channel-token";
/// Where the sidecar mounts [`CHANNEL_TOKEN_VOLUME`].
pub const CHANNEL_TOKEN_PATH: &str = defaults::CHANNEL_DIR;
/// The channel token's lifetime: the API server's minimum, so a token
/// that leaves the pod is of use for minutes at most (the kubelet renews
/// it at 80 %).
pub const CHANNEL_TOKEN_SECONDS: i64 = 600;
/// The sidecar's env var with the controller's CA bundle (PEM).
pub const CONTROLLER_CA_ENV: &str = "ROTOR_CONTROLLER_CA_PEM";

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
            cpu_request: defaults::SIDECAR_CPU_REQUEST.to_owned(),
            memory_request: defaults::SIDECAR_MEMORY_REQUEST.to_owned(),
            cpu_limit: defaults::SIDECAR_CPU_LIMIT.to_owned(),
            memory_limit: defaults::SIDECAR_MEMORY_LIMIT.to_owned(),
        }
    }
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            image: defaults::SIDECAR_IMAGE.to_owned(),
            mount_path: defaults::MOUNT_PATH.to_owned(),
            native_sidecar: true,
            size_limit: defaults::SIZE_LIMIT.to_owned(),
            admin_port: defaults::ADMIN_PORT,
            channel: None,
            pull_policy: "Always".to_owned(),
            resources: SidecarResources::default(),
            default_refresh: None,
        }
    }
}

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
) -> Result<Injected, InjectError> {
    let mut pod = pod.clone();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.as_mut().ok_or(InjectError::NoSpec)?;
    let user = SidecarUser::for_pod(spec, contract)?;
    let (store_flags, mut store_env, mut store_volumes, mut store_mounts) =
        store_wiring(store, &namespace)?;
    let mut channel_flags = None;
    if let Some(channel) = &config.channel {
        let (flags, env, volume, mount) = channel_wiring(channel)?;
        channel_flags = Some(flags);
        store_env.extend(env);
        store_volumes.push(volume);
        store_mounts.push(mount);
    }

    // No --push-addr: the push port stays on the sidecar's loopback; the
    // controller reaches the sidecar over the stream the sidecar dials.
    let flags = SidecarFlags {
        annotations: annotations_path(),
        out_dir: config.mount_path.clone(),
        admin_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.admin_port)),
        default_file_mode: user.default_file_mode(),
        store: store_flags,
        channel: channel_flags,
        once: false,
    };
    let args = flags.to_args();
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
        once.args = Some(
            SidecarFlags {
                once: true,
                ..flags
            }
            .to_args(),
        );
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
                return Err(InjectError::MountConflict {
                    container: c.name.clone(),
                    mount_path: config.mount_path.clone(),
                });
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
                return Err(InjectError::VolumeConflict { volume: v.name });
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
    what: &'static str,
) -> Result<(), InjectError> {
    for c in list.iter() {
        if (c.name == SIDECAR || c.name == INIT) && !wanted.iter().any(|w| w.name == c.name) {
            return Err(InjectError::ReservedContainer {
                what,
                name: c.name.clone(),
            });
        }
    }
    for w in wanted.into_iter().rev() {
        match list.iter().find(|c| c.name == w.name) {
            None => list.insert(0, w),
            Some(existing) if same_as_injected(&w, &canonical_quantities(existing)) => {}
            Some(_) => {
                return Err(InjectError::ContainerDiffers { what, name: w.name });
            }
        }
    }
    Ok(())
}
