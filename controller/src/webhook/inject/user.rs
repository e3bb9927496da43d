//! Who the sidecar runs as, which decides who may read the files, and
//! what the user is told about it.

use rotor_contract::annotations::PodSecrets;

use super::SIDECAR;
use super::error::InjectError;

/// The sidecar's user when the app's is unknown: the image's user.
pub const FALLBACK_UID: i64 = 65532;

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
    /// Who the sidecar of `spec` runs as under `contract`.
    pub fn for_pod(
        spec: &k8s_openapi::api::core::v1::PodSpec,
        contract: &PodSecrets,
    ) -> Result<Self, InjectError> {
        if let Some((uid, gid)) = contract.file_owner {
            if uid == 0 {
                return Err(InjectError::RootFileOwner);
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
            (Some(0), _) => Err(InjectError::AppRunsAsRoot),
            (Some(uid), _) => Ok(Self::App { uid, gid }),
            (None, Some(fs_group)) => Ok(Self::FsGroup { gid: fs_group }),
            (None, None) => Ok(Self::Unknown),
        }
    }

    /// The sidecar's `runAsUser`.
    pub fn uid(self) -> i64 {
        match self {
            Self::App { uid, .. } => uid,
            Self::FsGroup { .. } | Self::Unknown => FALLBACK_UID,
        }
    }

    /// The sidecar's `runAsGroup`.
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
