//! Every default more than one part must agree on, declared once: the
//! sidecar image the webhook injects, where the files appear, the
//! sidecar's ports, resources and volume size, the channel's port and
//! files, the service-account token path, Vault's mounts and audiences.
//! The controller's flags, the sidecar's flags and the CRDs' serde
//! defaults refer to these.

/// The sidecar image the webhook injects (`--sidecar-image`).
pub const SIDECAR_IMAGE: &str = "ghcr.io/rotor-dev/rotor-sidecar:0.1.0";

/// Where the secret files appear: the sidecar's `--out-dir` and the
/// webhook's `--mount-path` in app containers.
pub const MOUNT_PATH: &str = "/run/secrets/rotor";

/// The tmpfs `sizeLimit` of the injected secrets volume
/// (`--size-limit`).
pub const SIZE_LIMIT: &str = "1Mi";

/// The injected sidecar's requests and limits (`--sidecar-cpu-request`
/// and the like), sized from its measured use: about 6 MB RSS with 100
/// secrets.
pub const SIDECAR_CPU_REQUEST: &str = "5m";
/// See [`SIDECAR_CPU_REQUEST`].
pub const SIDECAR_MEMORY_REQUEST: &str = "16Mi";
/// See [`SIDECAR_CPU_REQUEST`].
pub const SIDECAR_CPU_LIMIT: &str = "100m";
/// See [`SIDECAR_CPU_REQUEST`].
pub const SIDECAR_MEMORY_LIMIT: &str = "32Mi";

/// The sidecar's admin port: `/healthz`, `/readyz`, `/metrics`.
pub const ADMIN_PORT: u16 = 9464;

/// The sidecar's push port: `POST /v1/refresh`, which the rotation
/// controller calls.
pub const PUSH_PORT: u16 = 9465;

/// The controller's channel port, which the sidecars dial
/// (`rotor-controller run|standalone --channel-addr`).
pub const CHANNEL_PORT: u16 = 9466;

// One literal for the directory and the two files in it (`concat!` takes
// literals only).
macro_rules! channel_dir {
    () => {
        "/var/run/rotor/channel"
    };
}

/// Where the injected sidecar finds the channel's projected token.
pub const CHANNEL_DIR: &str = channel_dir!();
/// The token the sidecar presents on the channel (`--channel-token`).
pub const CHANNEL_TOKEN_FILE: &str = concat!(channel_dir!(), "/token");
/// The controller's CA bundle (`--controller-ca`).
pub const CHANNEL_CA_FILE: &str = concat!(channel_dir!(), "/ca.crt");

/// The audience of the service-account tokens presented to Vault's
/// Kubernetes auth when a store names none.
pub const VAULT_AUDIENCE: &str = "vault";

/// The audience of the web identity tokens presented to AWS STS.
pub const STS_AUDIENCE: &str = "sts.amazonaws.com";

/// The pod's own service-account token, where the kubelet mounts it: the
/// sidecar's `--vault-jwt-file`, and Vault Kubernetes auth in standalone
/// mode run inside a pod.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Vault's KV v2 mount when a store or `--vault-mount` names none.
pub const VAULT_KV_MOUNT: &str = "secret";

/// Vault's Kubernetes auth mount when a store or `--vault-auth-mount`
/// names none.
pub const VAULT_KUBERNETES_MOUNT: &str = "kubernetes";

/// Vault's AppRole auth mount when a store or `--vault-auth-mount` names
/// none.
pub const VAULT_APPROLE_MOUNT: &str = "approle";

/// The ServiceAccount rotation acts as in a policy's namespace
/// (`rotor-controller run --rotator-service-account`, the chart's
/// `rotation.serviceAccount`): a namespace opts in by creating it.
pub const ROTATOR_SERVICE_ACCOUNT: &str = "rotor-rotator";
