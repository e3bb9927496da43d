//! The defaults the webhook and the sidecar must agree on, declared once:
//! the sidecar image the webhook injects, where the files appear, where the
//! sidecar reads the pod's annotations, and the sidecar's two ports. The
//! controller's flags and the sidecar's flags both default to these.

/// The sidecar image the webhook injects (`--sidecar-image`).
pub const SIDECAR_IMAGE: &str = "ghcr.io/rotor-dev/rotor-sidecar:0.1.0";

/// Where the secret files appear: the sidecar's `--out-dir` and the
/// webhook's `--mount-path` in app containers.
pub const MOUNT_PATH: &str = "/run/secrets/rotor";

/// The sidecar's admin port: `/healthz`, `/readyz`, `/metrics`.
pub const ADMIN_PORT: u16 = 9464;

/// The sidecar's push port: `POST /v1/refresh`, which the rotation
/// controller calls.
pub const PUSH_PORT: u16 = 9465;

/// The audience of the service-account tokens presented to Vault's
/// Kubernetes auth when a store names none.
pub const VAULT_AUDIENCE: &str = "vault";

/// The audience of the web identity tokens presented to AWS STS.
pub const STS_AUDIENCE: &str = "sts.amazonaws.com";

/// The ServiceAccount rotation acts as in a policy's namespace
/// (`rotor-controller run --rotator-service-account`, the chart's
/// `rotation.serviceAccount`): a namespace opts in by creating it.
pub const ROTATOR_SERVICE_ACCOUNT: &str = "rotor-rotator";
