//! The sidecar's command line as a typed value: what the controller's
//! webhook injects, rendered into argv with the flag names that [`Args`]
//! declares (read from its clap definition), so a flag is named once, here
//! by clap, and a renamed flag fails the round-trip test rather than a pod.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::OnceLock;

use clap::{CommandFactory, ValueEnum};

use crate::Args;
use crate::store_args::{Backend, VaultAuthMethod};

/// The flags an injected sidecar runs with, in the order they are given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarFlags {
    /// `--annotations`: the downward-API file of the pod's annotations.
    pub annotations: String,
    /// `--out-dir`: where the files are written.
    pub out_dir: String,
    /// `--admin-addr`: the health and metrics listener.
    pub admin_addr: SocketAddr,
    /// `--default-file-mode`, when not the sidecar's own `0400`.
    pub default_file_mode: Option<u32>,
    /// Which store, and how to reach it.
    pub store: StoreFlags,
    /// How to reach the controller's channel; `None`: poll only.
    pub channel: Option<ChannelFlags>,
    /// `--once`: fetch, write and exit (the classic layout's init container).
    pub once: bool,
}

/// The store flags of one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreFlags {
    /// The embedded store file (the default kind, so no `--store-kind`).
    Local { path: String, key: String },
    /// Vault or OpenBao KV v2.
    Vault {
        addr: String,
        mount: String,
        auth: VaultAuthFlags,
    },
    /// AWS Secrets Manager.
    Aws {
        region: String,
        endpoint: Option<String>,
    },
    /// Kubernetes Secrets in `namespace`.
    Kubernetes { namespace: String },
}

/// How the sidecar logs in to Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuthFlags {
    Kubernetes {
        role: String,
        mount: String,
        jwt_file: String,
    },
    AppRole {
        role_id: String,
        mount: String,
        secret_id_file: String,
    },
    Token {
        token_file: String,
    },
}

/// The channel's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelFlags {
    /// `--controller-addr`: `host:port` of the controller's channel.
    pub controller_addr: String,
    /// `--channel-token`: the projected token file.
    pub token_file: String,
}

impl SidecarFlags {
    /// The argv after the program name.
    pub fn to_args(&self) -> Vec<String> {
        let Self {
            annotations,
            out_dir,
            admin_addr,
            default_file_mode,
            store,
            channel,
            once,
        } = self;
        let mut args = Argv::default();
        args.flag("annotations", annotations)
            .flag("out_dir", out_dir)
            .flag("admin_addr", admin_addr);
        if let Some(mode) = default_file_mode {
            args.flag("default_file_mode", format!("{mode:04o}"));
        }
        match store {
            StoreFlags::Local { path, key } => {
                args.flag("local_store", path).flag("key", key);
            }
            StoreFlags::Vault { addr, mount, auth } => {
                args.flag("store_kind", value(Backend::Vault))
                    .flag("vault_addr", addr)
                    .flag("vault_mount", mount);
                match auth {
                    VaultAuthFlags::Kubernetes {
                        role,
                        mount,
                        jwt_file,
                    } => {
                        args.flag("vault_auth", value(VaultAuthMethod::Kubernetes))
                            .flag("vault_role", role)
                            .flag("vault_auth_mount", mount)
                            .flag("vault_jwt_file", jwt_file);
                    }
                    VaultAuthFlags::AppRole {
                        role_id,
                        mount,
                        secret_id_file,
                    } => {
                        args.flag("vault_auth", value(VaultAuthMethod::Approle))
                            .flag("vault_role_id", role_id)
                            .flag("vault_auth_mount", mount)
                            .flag("vault_secret_id_file", secret_id_file);
                    }
                    VaultAuthFlags::Token { token_file } => {
                        args.flag("vault_auth", value(VaultAuthMethod::Token))
                            .flag("vault_token_file", token_file);
                    }
                }
            }
            StoreFlags::Aws { region, endpoint } => {
                args.flag("store_kind", value(Backend::Aws))
                    .flag("aws_region", region);
                if let Some(endpoint) = endpoint {
                    args.flag("aws_endpoint", endpoint);
                }
            }
            StoreFlags::Kubernetes { namespace } => {
                args.flag("store_kind", value(Backend::Kubernetes))
                    .flag("namespace", namespace);
            }
        }
        if let Some(ChannelFlags {
            controller_addr,
            token_file,
        }) = channel
        {
            args.flag("controller_addr", controller_addr)
                .flag("channel_token", token_file);
        }
        if *once {
            args.switch("once");
        }
        args.0
    }
}

/// The `--annotations` flag alone, as [`SidecarFlags::to_args`] renders it
/// (for checks of a pod's sidecar that look for it).
pub fn annotations_flag(path: &str) -> String {
    let mut args = Argv::default();
    args.flag("annotations", path);
    args.0.remove(0)
}

/// The argv being built.
#[derive(Default)]
struct Argv(Vec<String>);

impl Argv {
    fn flag(&mut self, id: &str, value: impl std::fmt::Display) -> &mut Self {
        self.0.push(format!("--{}={value}", long(id)));
        self
    }

    fn switch(&mut self, id: &str) -> &mut Self {
        self.0.push(format!("--{}", long(id)));
        self
    }
}

/// The long name [`Args`] gives the argument whose field is `id`.
fn long(id: &str) -> &'static str {
    static LONGS: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    let longs = LONGS.get_or_init(|| {
        Args::command()
            .get_arguments()
            .filter_map(|a| Some((a.get_id().to_string(), a.get_long()?.to_owned())))
            .collect()
    });
    longs
        .get(id)
        .unwrap_or_else(|| panic!("the sidecar's Args has no long flag for the field {id:?}"))
}

/// A value enum as its flag value.
fn value(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .expect("no value of the sidecar's enums is skipped")
        .get_name()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(flags: &SidecarFlags) -> Args {
        let argv = std::iter::once("rotor-sidecar".to_owned()).chain(flags.to_args());
        Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{flags:?}: {e}"))
    }

    fn base(store: StoreFlags) -> SidecarFlags {
        SidecarFlags {
            annotations: "/etc/rotor/pod/annotations".into(),
            out_dir: "/run/secrets/rotor".into(),
            admin_addr: "0.0.0.0:9090".parse().unwrap(),
            default_file_mode: Some(0o440),
            store,
            channel: Some(ChannelFlags {
                controller_addr: "rotor.rotor-system.svc:8443".into(),
                token_file: "/var/run/rotor/channel/token".into(),
            }),
            once: true,
        }
    }

    /// Every provider's flags parse back as the sidecar's own `Args`, so
    /// each name the renderer looks up exists and takes its value.
    #[test]
    fn every_rendering_parses_as_args() {
        let auths = [
            VaultAuthFlags::Kubernetes {
                role: "app".into(),
                mount: "kubernetes".into(),
                jwt_file: "/var/run/secrets/rotor/sa/token".into(),
            },
            VaultAuthFlags::AppRole {
                role_id: "id".into(),
                mount: "approle".into(),
                secret_id_file: "/s".into(),
            },
            VaultAuthFlags::Token {
                token_file: "/t".into(),
            },
        ];
        let mut stores: Vec<StoreFlags> = auths
            .into_iter()
            .map(|auth| StoreFlags::Vault {
                addr: "https://vault:8200".into(),
                mount: "secret".into(),
                auth,
            })
            .collect();
        stores.extend([
            StoreFlags::Local {
                path: "/store".into(),
                key: "/key".into(),
            },
            StoreFlags::Aws {
                region: "eu-west-1".into(),
                endpoint: Some("http://127.0.0.1:5000".into()),
            },
            StoreFlags::Kubernetes {
                namespace: "app".into(),
            },
        ]);
        for store in stores {
            let flags = base(store);
            let args = parse(&flags);
            assert!(args.once());
            assert_eq!(args.admin_addr(), flags.admin_addr);
            assert_eq!(args.out_dir().to_str(), Some(flags.out_dir.as_str()));
        }
    }

    #[test]
    fn local_flags_render_in_order() {
        let mut flags = base(StoreFlags::Local {
            path: "/store".into(),
            key: "/key".into(),
        });
        flags.channel = None;
        flags.once = false;
        assert_eq!(
            flags.to_args(),
            [
                "--annotations=/etc/rotor/pod/annotations",
                "--out-dir=/run/secrets/rotor",
                "--admin-addr=0.0.0.0:9090",
                "--default-file-mode=0440",
                "--local-store=/store",
                "--key=/key",
            ]
        );
    }
}
