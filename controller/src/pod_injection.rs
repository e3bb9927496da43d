//! What a pod Rotor injected holds: the names Rotor reserves for its
//! containers and volumes, and the one test ([`injected`]) of whether a
//! pod's spec holds the sidecar as the webhook injects it.
//!
//! A pod's containers and volumes cannot change after creation, and the
//! webhook refuses `rotor.dev/inject` and `rotor.dev/store` being added,
//! removed or changed on UPDATE. So a pod that passes this test and says
//! `rotor.dev/inject: "true"` was created through the webhook with both,
//! and annotating a plain pod later never makes it one. The consumer index
//! counts only such pods; the webhook uses the same test for its UPDATE
//! rules (secrets may be added only to a pod that has the sidecar).

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};

/// The sidecar container (native: an init container with
/// `restartPolicy: Always`; classic: an app container).
pub const SIDECAR: &str = "rotor-sidecar";
/// The classic layout's init container (`--once`).
pub const INIT: &str = "rotor-init";
/// The tmpfs the sidecar writes and app containers read.
pub const SECRETS_VOLUME: &str = "rotor-secrets";
/// The downward-API volume with the pod's annotations.
pub const PODINFO_VOLUME: &str = "rotor-podinfo";
/// The sidecar's own scratch space (its root filesystem is read-only).
pub const SCRATCH_VOLUME: &str = "rotor-sidecar-tmp";
/// Where the sidecar mounts [`PODINFO_VOLUME`].
pub const PODINFO_PATH: &str = "/etc/rotor/pod";
/// The file in [`PODINFO_VOLUME`] holding `metadata.annotations`.
pub const ANNOTATIONS_FILE: &str = "annotations";
/// Every container and volume Rotor injects is named with this prefix.
pub const RESERVED_PREFIX: &str = "rotor-";

/// The downward-API file the sidecar reads the pod's annotations from.
pub fn annotations_path() -> String {
    format!("{PODINFO_PATH}/{ANNOTATIONS_FILE}")
}

/// The sidecar's `--annotations` flag for [`annotations_path`].
pub fn annotations_arg() -> String {
    rotor_sidecar::flags::annotations_flag(&annotations_path())
}

/// How the sidecar sits in an injected pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `initContainers` with `restartPolicy: Always` (Kubernetes ≥ 1.29).
    Native,
    /// An init container (`--once`) plus a sidecar container.
    Classic,
}

/// The layout of Rotor's sidecar when `pod`'s spec holds it as the webhook
/// injects it; `None` for any other pod. What is checked is what makes it
/// Rotor's sidecar for the pod's annotations, not the details a controller
/// upgrade may change (image, resources, store flags):
///
/// - a container named [`SIDECAR`]: an init container with
///   `restartPolicy: Always`, or an app container after an init container
///   [`INIT`] that reads the same annotations file;
/// - the sidecar reads [`annotations_arg`] from [`PODINFO_VOLUME`] mounted
///   read-only at [`PODINFO_PATH`], a downward-API volume of the pod's
///   `metadata.annotations`;
/// - it mounts [`SECRETS_VOLUME`] writable, a memory-backed `emptyDir`.
pub fn injected(pod: &Pod) -> Option<Layout> {
    let spec = pod.spec.as_ref()?;
    let layout = layout(spec)?;
    let sidecar = find(&spec.containers, spec.init_containers.as_deref(), layout)?;
    (reads_annotations(sidecar) && writes_secrets(sidecar) && has_volumes(spec)).then_some(layout)
}

fn layout(spec: &PodSpec) -> Option<Layout> {
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let native = init
        .iter()
        .any(|c| c.name == SIDECAR && c.restart_policy.as_deref() == Some("Always"));
    if native {
        return Some(Layout::Native);
    }
    let classic = spec.containers.iter().any(|c| c.name == SIDECAR)
        && init.iter().any(|c| c.name == INIT && reads_annotations(c));
    classic.then_some(Layout::Classic)
}

fn find<'a>(
    containers: &'a [Container],
    init: Option<&'a [Container]>,
    layout: Layout,
) -> Option<&'a Container> {
    let list = match layout {
        Layout::Native => init.unwrap_or_default(),
        Layout::Classic => containers,
    };
    list.iter().find(|c| c.name == SIDECAR)
}

fn mounts<'a>(c: &'a Container, volume: &'a str) -> impl Iterator<Item = (&'a str, bool)> + 'a {
    c.volume_mounts
        .iter()
        .flatten()
        .filter(move |m| m.name == volume)
        .map(|m| (m.mount_path.as_str(), m.read_only.unwrap_or(false)))
}

fn reads_annotations(c: &Container) -> bool {
    let arg = annotations_arg();
    c.args.iter().flatten().any(|a| *a == arg)
        && mounts(c, PODINFO_VOLUME).any(|(path, read_only)| path == PODINFO_PATH && read_only)
}

fn writes_secrets(c: &Container) -> bool {
    mounts(c, SECRETS_VOLUME).any(|(_, read_only)| !read_only)
}

fn has_volumes(spec: &PodSpec) -> bool {
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let podinfo = volumes
        .iter()
        .filter(|v| v.name == PODINFO_VOLUME)
        .filter_map(|v| v.downward_api.as_ref())
        .flat_map(|d| d.items.iter().flatten())
        .any(|item| {
            item.path == ANNOTATIONS_FILE
                && item
                    .field_ref
                    .as_ref()
                    .is_some_and(|f| f.field_path == "metadata.annotations")
        });
    let secrets = volumes
        .iter()
        .filter(|v| v.name == SECRETS_VOLUME)
        .filter_map(|v| v.empty_dir.as_ref())
        .any(|e| e.medium.as_deref() == Some("Memory"));
    podinfo && secrets
}

#[cfg(test)]
pub(crate) mod tests;
