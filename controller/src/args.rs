//! The controller's command line: its flags and subcommands (`run`, `webhook`,
//! `certs`, standalone), and how each starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use clap::{Parser, Subcommand};
use rotor_telemetry::LogArgs;

use crate::Error;
use crate::store_index::{SharedStoreIndex, StoreIndex};
use crate::webhook::InjectConfig;
use crate::webhook::server::{WebhookState, router, serve_tls};

/// Rotor's controller: the sidecar-injection webhook and its certificates.
#[derive(Debug, Parser)]
#[command(name = "rotor-controller", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    log: LogArgs,

    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the `run` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the injection webhook with stores read from YAML files
    /// instead of the API: try it without a cluster.
    Webhook {
        /// A directory of YAML files with RotorStore, ClusterRotorStore and
        /// Namespace objects (namespace labels, for ClusterRotorStores).
        #[arg(long, env = "ROTOR_STORES")]
        stores: PathBuf,
        #[command(flatten)]
        serve: ServeArgs,
        /// Plain-HTTP address of /metrics (the admission, build and process
        /// metrics); none by default.
        #[arg(long, env = "ROTOR_METRICS_ADDR")]
        metrics_addr: Option<SocketAddr>,
    },
    /// Run in a cluster: stores from watches, the webhook over HTTPS.
    Run {
        #[command(flatten)]
        serve: ServeArgs,
        /// Create (or reuse) the serving certificate in a Secret and set the
        /// webhook configuration's caBundle; without it, mount one (e.g.
        /// from cert-manager) at --tls-cert / --tls-key.
        #[arg(long, env = "ROTOR_SELF_MANAGED_CERTS")]
        self_managed_certs: bool,
        /// The controller's namespace.
        #[arg(long, env = "ROTOR_NAMESPACE", default_value = "rotor-system")]
        namespace: String,
        /// The webhook Service.
        #[arg(long, env = "ROTOR_SERVICE", default_value = "rotor-webhook")]
        service: String,
        /// The Secret holding the self-managed certificate.
        #[arg(long, env = "ROTOR_TLS_SECRET", default_value = "rotor-webhook-tls")]
        tls_secret: String,
        /// The MutatingWebhookConfiguration to put the CA into.
        #[arg(
            long,
            env = "ROTOR_WEBHOOK_CONFIGURATION",
            default_value = "rotor-webhook"
        )]
        webhook_configuration: String,
        /// The controller's ServiceAccount, the owner of the Secret and
        /// Lease it creates, so that they go when it is deleted.
        #[arg(
            long,
            env = "ROTOR_SERVICE_ACCOUNT",
            default_value = "rotor-controller"
        )]
        service_account: String,
        /// Plain-HTTP address of /metrics.
        #[arg(long, env = "ROTOR_METRICS_ADDR", default_value = "0.0.0.0:9090")]
        metrics_addr: SocketAddr,
        /// The address sidecars' streams come in on (TLS with the serving
        /// certificate, HTTP/2). `[::]` takes IPv4 and IPv6 connections;
        /// on a node without IPv6 use `0.0.0.0:9466`.
        #[arg(
            long,
            env = "ROTOR_CHANNEL_ADDR",
            default_value_t = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, rotor_contract::defaults::CHANNEL_PORT))
        )]
        channel_addr: SocketAddr,
        /// This replica's name in the leader Lease (the pod name).
        #[arg(long, env = "ROTOR_IDENTITY", default_value = "rotor-controller")]
        identity: String,
        /// How long the leader Lease lasts without renewal; the holder
        /// renews it every third of that.
        #[arg(long, env = "ROTOR_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
        lease_duration: std::time::Duration,
        /// How long a self-managed serving certificate is valid; the
        /// leader renews it at two-thirds of that.
        #[arg(long, env = "ROTOR_CERT_LIFETIME", default_value = "365d", value_parser = humantime::parse_duration)]
        cert_lifetime: std::time::Duration,
        /// How long a self-managed CA is valid; the leader replaces it at
        /// two-thirds of that.
        #[arg(long, env = "ROTOR_CA_LIFETIME", default_value = "3650d", value_parser = humantime::parse_duration)]
        ca_lifetime: std::time::Duration,
        /// How long a new CA is in the webhook configuration's caBundle
        /// before it signs, and an old one after: longer than a replica
        /// takes to see the Secret change (a tenth of this, at most 30s).
        #[arg(long, env = "ROTOR_CERT_OVERLAP", default_value = "10m", value_parser = humantime::parse_duration)]
        cert_overlap: std::time::Duration,
        /// Extra names or IP addresses for the self-managed serving
        /// certificate (when the API server calls the webhook by URL).
        #[arg(long = "cert-host")]
        cert_hosts: Vec<String>,
        /// A kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or the
        /// in-cluster service account.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// The ServiceAccount rotation acts as in each policy's namespace:
        /// it logs in to the policy's store with a short-lived token of
        /// that account (TokenRequest), never with its own. A namespace
        /// opts in to rotation by creating it.
        #[arg(
            long,
            env = "ROTOR_ROTATOR_SERVICE_ACCOUNT",
            default_value = rotor_contract::defaults::ROTATOR_SERVICE_ACCOUNT
        )]
        rotator_service_account: String,
    },
    /// Rotate without Kubernetes: SecretRotationPolicy and RotorStore
    /// objects from YAML files, status in JSON files, and the sidecars
    /// connected over the channel (TLS, a token file shared with them) as
    /// the consumers.
    Standalone {
        /// A directory of YAML files with SecretRotationPolicy and
        /// RotorStore objects.
        #[arg(long, env = "ROTOR_POLICIES")]
        policies: PathBuf,
        /// Where each policy's status is kept (default: <policies>/.state).
        #[arg(long, env = "ROTOR_STATE")]
        state: Option<PathBuf>,
        /// A Vault token file for Vault stores.
        #[arg(long, env = "ROTOR_VAULT_TOKEN_FILE")]
        vault_token_file: Option<PathBuf>,
        /// Plain-HTTP address of /metrics (finished rotations by result,
        /// failed steps, build and process metrics); none by default.
        #[arg(long, env = "ROTOR_METRICS_ADDR")]
        metrics_addr: Option<SocketAddr>,
        #[command(flatten)]
        channel: StandaloneChannelArgs,
        /// The bearer token https rotation targets receive: a file re-read
        /// for every call (e.g. a projected ServiceAccount token whose
        /// audience is the receiver's URL). Without it, https targets fail
        /// with TargetNoIdentity.
        #[arg(long, env = "ROTOR_HTTPS_TARGET_TOKEN_FILE")]
        https_target_token_file: Option<PathBuf>,
    },
    /// Write a self-signed CA and a serving certificate for the webhook's
    /// Service into a directory (ca.crt, tls.crt, tls.key).
    Certs {
        /// The directory to write ca.crt, tls.crt and tls.key into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The webhook Service's name.
        #[arg(long, default_value = "rotor-webhook")]
        service: String,
        /// The webhook Service's namespace.
        #[arg(long, default_value = "rotor-system")]
        namespace: String,
        /// Extra DNS names (e.g. localhost for local tests).
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
        /// Replace certificates already in --out. Clients that trust the old
        /// CA (the webhook configuration's caBundle) then refuse the webhook
        /// until they get the new ca.crt.
        #[arg(long)]
        force: bool,
    },
}

/// Standalone's channel: where sidecars dial, and what they must hold.
#[derive(Debug, clap::Args)]
struct StandaloneChannelArgs {
    /// Where sidecars dial the controller (TLS and HTTP/2, the token
    /// required): loopback by default; another address needs its name in
    /// the certificate (it is added for a specific IP, --channel-name for
    /// DNS names).
    #[arg(
        long,
        env = "ROTOR_CHANNEL_ADDR",
        default_value_t = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, rotor_contract::defaults::CHANNEL_PORT))
    )]
    channel_addr: SocketAddr,
    /// Where the channel's CA (`ca.crt`, what sidecars pass as
    /// --controller-ca), serving certificate and key are kept, made at the
    /// first start (default: <state>/channel).
    #[arg(long, env = "ROTOR_CHANNEL_DIR", value_name = "DIR")]
    channel_dir: Option<PathBuf>,
    /// The token file shared with the sidecars (their --channel-token):
    /// whoever holds it may stream as any pod. Made (mode 0640) when
    /// missing; refused when others may read it (default:
    /// <channel-dir>/token).
    #[arg(long, value_name = "FILE")]
    channel_token: Option<PathBuf>,
    /// Another DNS name or IP address sidecars dial the channel by (for
    /// the serving certificate); repeatable.
    #[arg(long = "channel-name", value_name = "NAME")]
    channel_names: Vec<String>,
    /// Channel connections open at once, admitted or not; more are closed
    /// at once and counted (rotor_channel_refused{reason="tooManyStreams"}).
    #[arg(long, env = "ROTOR_CHANNEL_MAX_CONNECTIONS", default_value_t = 10_000)]
    channel_max_connections: usize,
    /// Longest time from a frame's first byte to its last: a sidecar that
    /// trickles bytes is cut off after it.
    #[arg(long, env = "ROTOR_CHANNEL_FRAME_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    channel_frame_timeout: std::time::Duration,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The HTTPS address of /mutate.
    #[arg(long, env = "ROTOR_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// The serving certificate (PEM); reloaded when it changes.
    #[arg(long, env = "ROTOR_TLS_CERT", default_value = "/etc/rotor/tls/tls.crt")]
    tls_cert: PathBuf,
    /// The serving key (PEM).
    #[arg(long, env = "ROTOR_TLS_KEY", default_value = "/etc/rotor/tls/tls.key")]
    tls_key: PathBuf,
    /// The CA bundle of the serving certificate (PEM), which injected
    /// sidecars verify the controller's stream port with; re-read at each
    /// injection. Default: ca.crt beside --tls-cert.
    #[arg(long, env = "ROTOR_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// The address injected sidecars dial for their stream to the
    /// controller, `host:port`. Default (`run`): the Service's DNS name,
    /// `<--service>.<--namespace>.svc`, and the port of --channel-addr;
    /// (`webhook`): rotor-webhook.rotor-system.svc:9466.
    #[arg(long, env = "ROTOR_SIDECAR_CONTROLLER_ADDR")]
    sidecar_controller_addr: Option<String>,
    /// The sidecar image to inject.
    #[arg(
        long,
        env = "ROTOR_SIDECAR_IMAGE",
        default_value = rotor_contract::defaults::SIDECAR_IMAGE
    )]
    sidecar_image: String,
    /// Where app containers see the files.
    #[arg(long, env = "ROTOR_MOUNT_PATH", default_value = rotor_contract::defaults::MOUNT_PATH)]
    mount_path: String,
    /// Inject an init container plus a sidecar container instead of a
    /// native sidecar (clusters before Kubernetes 1.29).
    #[arg(long, env = "ROTOR_CLASSIC_SIDECAR")]
    classic_sidecar: bool,
    /// The tmpfs size limit of the secrets volume.
    #[arg(long, env = "ROTOR_SIZE_LIMIT", default_value = rotor_contract::defaults::SIZE_LIMIT, value_parser = quantity)]
    size_limit: String,
    /// The injected sidecar's imagePullPolicy.
    #[arg(
        long,
        env = "ROTOR_SIDECAR_PULL_POLICY",
        default_value = "Always",
        value_parser = ["Always", "IfNotPresent", "Never"]
    )]
    sidecar_pull_policy: String,
    /// The injected sidecar's CPU request.
    #[arg(long, env = "ROTOR_SIDECAR_CPU_REQUEST", default_value = rotor_contract::defaults::SIDECAR_CPU_REQUEST, value_parser = quantity)]
    sidecar_cpu_request: String,
    /// The injected sidecar's memory request.
    #[arg(long, env = "ROTOR_SIDECAR_MEMORY_REQUEST", default_value = rotor_contract::defaults::SIDECAR_MEMORY_REQUEST, value_parser = quantity)]
    sidecar_memory_request: String,
    /// The injected sidecar's CPU limit.
    #[arg(long, env = "ROTOR_SIDECAR_CPU_LIMIT", default_value = rotor_contract::defaults::SIDECAR_CPU_LIMIT, value_parser = quantity)]
    sidecar_cpu_limit: String,
    /// The injected sidecar's memory limit.
    #[arg(long, env = "ROTOR_SIDECAR_MEMORY_LIMIT", default_value = rotor_contract::defaults::SIDECAR_MEMORY_LIMIT, value_parser = quantity)]
    sidecar_memory_limit: String,
    /// The refresh interval of pods that set no rotor.dev/refresh: the
    /// webhook adds that annotation (100ms to 24h). Default: the
    /// sidecar's own, 30s.
    #[arg(long, env = "ROTOR_SIDECAR_REFRESH", value_parser = refresh)]
    sidecar_refresh: Option<String>,
}

/// A refresh interval the annotation contract accepts.
fn refresh(text: &str) -> Result<String, String> {
    use rotor_contract::annotations::{MAX_REFRESH, MIN_REFRESH};
    match humantime::parse_duration(text) {
        Ok(d) if (MIN_REFRESH..=MAX_REFRESH).contains(&d) => Ok(text.to_owned()),
        _ => Err(format!(
            "{text:?} is not a refresh interval; expected a duration from 100ms to 24h, such as \"30s\" or \"5m\""
        )),
    }
}

/// A Kubernetes quantity (`100m`, `16Mi`, `1.5`, `2G`), checked here so a
/// typo is a startup error rather than every injected pod's rejection.
fn quantity(text: &str) -> Result<String, String> {
    crate::webhook::quantity::canonical(text).map(|_| text.to_owned())
}

impl ServeArgs {
    /// The injection settings; `controller_addr` is what sidecars dial
    /// unless --sidecar-controller-addr says otherwise.
    fn inject_config(&self, controller_addr: String) -> InjectConfig {
        let ca = self.tls_ca.clone().unwrap_or_else(|| {
            self.tls_cert
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("ca.crt")
        });
        InjectConfig {
            channel: Some(crate::webhook::inject::ChannelInjection {
                controller_addr: self
                    .sidecar_controller_addr
                    .clone()
                    .unwrap_or(controller_addr),
                ca: crate::webhook::inject::CaSource::File(ca),
            }),
            image: self.sidecar_image.clone(),
            mount_path: self.mount_path.clone(),
            native_sidecar: !self.classic_sidecar,
            size_limit: self.size_limit.clone(),
            pull_policy: self.sidecar_pull_policy.clone(),
            resources: crate::webhook::inject::SidecarResources {
                cpu_request: self.sidecar_cpu_request.clone(),
                memory_request: self.sidecar_memory_request.clone(),
                cpu_limit: self.sidecar_cpu_limit.clone(),
                memory_limit: self.sidecar_memory_limit.clone(),
            },
            default_refresh: self.sidecar_refresh.clone(),
            ..InjectConfig::default()
        }
    }
}

impl Args {
    pub fn parse_and_run() -> ExitCode {
        Self::run_from(std::env::args_os())
    }

    /// Parses `argv` (program name first) and runs; `rotor controller` uses it.
    pub fn run_from<I, T>(argv: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let Self { log, command } = Self::parse_from(argv);
        log.init("info");
        let result = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(run(command)),
            Err(source) => Err(Error::Runtime(source)),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", rotor_telemetry::Chain(&e));
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(command: Command) -> crate::Result<()> {
    match command {
        Command::Webhook {
            stores,
            serve,
            metrics_addr,
        } => {
            let index = StoreIndex::from_dir(&stores)?;
            tracing::info!(stores = index.len(), dir = %stores.display(), "stores loaded from files");
            let controller_addr = format!("rotor-webhook.rotor-system.svc:{}", rotor_channel::PORT);
            let state = Arc::new(WebhookState::new(
                Arc::new(RwLock::new(index)),
                serve.inject_config(controller_addr),
            ));
            let metrics = state.metrics.clone();
            let metrics_served = async move {
                match metrics_addr {
                    Some(addr) => {
                        let listener = crate::cluster::metrics_server::bind(addr).await?;
                        crate::cluster::metrics_server::serve_with(listener, addr, move || {
                            metrics.encode_alone()
                        })
                        .await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                served = serve_tls(serve.listen, serve.tls_cert, serve.tls_key, router(state)) => served?,
                served = metrics_served => served?,
                () = shutdown_signal() => {}
            }
        }
        Command::Run {
            serve,
            self_managed_certs,
            namespace,
            service,
            tls_secret,
            webhook_configuration,
            service_account,
            metrics_addr,
            channel_addr,
            identity,
            lease_duration,
            cert_lifetime,
            ca_lifetime,
            cert_overlap,
            cert_hosts,
            kubeconfig,
            rotator_service_account,
        } => {
            let client = match kubeconfig {
                None => kube::Client::try_default().await?,
                Some(path) => {
                    let config = kube::config::Kubeconfig::read_from(&path).map_err(|source| {
                        Error::Kubeconfig {
                            path: path.clone(),
                            source,
                        }
                    })?;
                    let options = kube::config::KubeConfigOptions::default();
                    let config = kube::Config::from_custom_kubeconfig(config, &options)
                        .await
                        .map_err(|source| Error::Kubeconfig {
                            path: path.clone(),
                            source,
                        })?;
                    kube::Client::try_from(config)?
                }
            };
            // Bound first: an address in use is an error before anything runs.
            let metrics_listener = crate::cluster::metrics_server::bind(metrics_addr).await?;
            let channel_listener =
                tokio::net::TcpListener::bind(channel_addr)
                    .await
                    .map_err(|source| Error::Listen {
                        addr: channel_addr,
                        flag: "--channel-addr",
                        source,
                    })?;
            let owner = crate::cluster::owner::owner_reference(
                client.clone(),
                &namespace,
                &service_account,
            )
            .await;
            let admission = crate::webhook::metrics::AdmissionMetrics::default();
            let channel_metrics = crate::channel::ChannelMetrics::default();
            let metrics = Arc::new(
                crate::rotation::metrics::RotationMetrics::default()
                    .with_admission(&admission)
                    .with(&channel_metrics)
                    .with_reconcilers(&crate::rotation::metrics::Reconciler::CLUSTER),
            );
            let leader = Arc::new(std::sync::atomic::AtomicBool::new(false));
            if self_managed_certs {
                let dir = serve
                    .tls_cert
                    .parent()
                    .ok_or_else(|| Error::Channel {
                        flag: "--tls-cert",
                        problem: format!("{} has no directory", serve.tls_cert.display()),
                    })?
                    .to_owned();
                let mut names = crate::certs::service_names(&service, &namespace);
                names.extend(cert_hosts);
                let cfg = Arc::new(crate::cluster::certificate::CertConfig {
                    namespace: namespace.clone(),
                    secret: tls_secret,
                    names,
                    webhook: webhook_configuration,
                    dir,
                    owner: owner.clone(),
                    lifetimes: crate::certs::Lifetimes {
                        serving: cert_lifetime,
                        ca: ca_lifetime,
                    },
                    overlap: cert_overlap,
                });
                crate::cluster::certificate::self_managed_certs(client.clone(), &cfg, &metrics)
                    .await?;
                tokio::spawn(crate::cluster::certificate::keep_fresh(
                    client.clone(),
                    cfg,
                    leader.clone(),
                    metrics.clone(),
                ));
            }
            let stores: SharedStoreIndex = Arc::default();
            let changes = crate::cluster::watch::IndexChanges::new(stores.clone());
            tokio::spawn(crate::cluster::watch::keep_index_fresh(
                client.clone(),
                changes.clone(),
            ));
            tokio::spawn(crate::store_status::run(Arc::new(
                crate::store_status::Context {
                    client: client.clone(),
                    metrics: metrics.clone(),
                },
            )));
            tokio::spawn(crate::rotation::lease::run(
                client.clone(),
                namespace.clone(),
                "rotor-controller-leader".to_owned(),
                identity,
                lease_duration,
                leader.clone(),
                owner,
            ));
            let inject =
                serve.inject_config(format!("{service}.{namespace}.svc:{}", channel_addr.port()));
            let consumers = Arc::new(RwLock::new(
                crate::rotation::consumers::ConsumerIndex::default(),
            ));
            let channel = crate::channel::cluster::server(
                client.clone(),
                stores.clone(),
                leader.clone(),
                channel_metrics.clone(),
            );
            let channel_tls = crate::channel::tls::Reloading::load(&serve.tls_cert, &serve.tls_key)
                .map_err(|problem| Error::Channel {
                    flag: "--tls-cert",
                    problem: format!("the channel's TLS certificate: {problem}"),
                })?;
            channel_tls.spawn_reloader(serve.tls_cert.clone(), serve.tls_key.clone())?;
            let acceptor = channel_tls.acceptor().map_err(|problem| Error::Channel {
                flag: "--tls-cert",
                problem: format!("the channel's TLS: {problem}"),
            })?;
            tracing::info!(addr = %channel_addr, "channel listening (TLS, HTTP/2)");
            tokio::spawn(
                channel
                    .clone()
                    .serve(channel_listener, acceptor, std::future::pending()),
            );
            tokio::spawn(crate::cluster::watch::keep_consumers_fresh(
                client.clone(),
                consumers.clone(),
            ));
            let rotators = crate::identity::Rotators::new(client.clone(), rotator_service_account);
            // One set of stores (and limiters) for rotation and detection.
            let cluster_stores = Arc::new(
                crate::cluster::stores::ClusterStores::new(stores.clone(), rotators.clone())
                    .with_metrics(metrics.stores.clone()),
            );
            // Only the leader admits streams, so only it has subscriptions
            // to check and streams to tell.
            tokio::spawn(
                crate::channel::fanout::Fanout::new(
                    channel.hub.clone(),
                    cluster_stores.clone(),
                    channel_metrics,
                )
                .run(),
            );
            let ctx = Arc::new(crate::rotation::reconciler::RotationContext {
                recorder: kube::runtime::events::Recorder::new(
                    client.clone(),
                    kube::runtime::events::Reporter {
                        controller: "rotor-controller".into(),
                        instance: None,
                    },
                ),
                client,
                stores: cluster_stores,
                consumers,
                hub: channel.hub.clone(),
                ack_deadline: std::time::Duration::from_secs(5),
                rotators: Some(Arc::new(rotators)),
                leader,
                metrics: metrics.clone(),
            });
            tokio::spawn(crate::cluster::rotation::run_rotation(ctx, changes));
            let mut state = WebhookState::new(stores, inject);
            state.metrics = admission;
            let state = Arc::new(state);
            // SIGTERM ends the process: the controllers' own signal
            // handlers replace the default action, so it must be awaited.
            tokio::select! {
                served = serve_tls(serve.listen, serve.tls_cert, serve.tls_key, router(state)) => served?,
                served = crate::cluster::metrics_server::serve(metrics_listener, metrics_addr, metrics) => served?,
                () = shutdown_signal() => {}
            }
        }
        Command::Standalone {
            policies,
            state,
            vault_token_file,
            metrics_addr,
            channel,
            https_target_token_file,
        } => {
            let StandaloneChannelArgs {
                channel_addr,
                channel_dir,
                channel_token,
                channel_names,
                channel_max_connections,
                channel_frame_timeout,
            } = channel;
            let state = state.unwrap_or_else(|| policies.join(".state"));
            let channel_dir = channel_dir.unwrap_or_else(|| state.join("channel"));
            let channel_metrics = crate::channel::ChannelMetrics::default();
            let metrics = Arc::new(
                crate::rotation::metrics::RotationMetrics::default()
                    .with(&channel_metrics)
                    .with_reconcilers(&[crate::rotation::metrics::Reconciler::Standalone]),
            );
            if let Some(addr) = metrics_addr {
                // Bound before anything starts: an address in use fails at once.
                let listener = crate::cluster::metrics_server::bind(addr).await?;
                tracing::info!(%addr, "serving /metrics");
                tokio::spawn(crate::cluster::metrics_server::serve(
                    listener,
                    addr,
                    metrics.clone(),
                ));
            }
            let options = crate::standalone::Options {
                policies,
                state,
                vault_token_file,
                metrics,
                channel: crate::standalone::channel::ChannelOptions {
                    addr: channel_addr,
                    token: channel_token.unwrap_or_else(|| channel_dir.join("token")),
                    dir: channel_dir,
                    names: channel_names,
                    limits: crate::channel::Limits {
                        max_connections: channel_max_connections,
                        frame: channel_frame_timeout,
                        ..crate::channel::Limits::default()
                    },
                },
                channel_metrics,
                https_target_token: https_target_token_file.map(rotor_store::TokenFile::new),
            };
            crate::standalone::run(options, shutdown_signal()).await?;
        }
        Command::Certs {
            out,
            service,
            namespace,
            dns_names,
            force,
        } => {
            if !force && let Some(existing) = crate::certs::existing(&out) {
                return Err(Error::CertsExist { path: existing });
            }
            let mut names = crate::certs::service_names(&service, &namespace);
            names.extend(dns_names);
            let generated = crate::certs::generate(
                &names,
                crate::certs::Lifetimes::default(),
                crate::certs::now(),
            )?;
            std::fs::create_dir_all(&out).map_err(|source| Error::File {
                what: "certificate directory",
                path: out.clone(),
                source,
            })?;
            crate::certs::write(&out, &generated)?;
            println!(
                "wrote ca.crt, tls.crt and tls.key to {} for {}",
                out.display(),
                names.join(", ")
            );
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        #[derive(Debug, Parser)]
        struct Wrap {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Wrap::try_parse_from(std::iter::once("rotor-controller").chain(args.iter().copied()))
            .map(|w| w.serve)
    }

    #[test]
    fn the_defaults_inject_what_inject_config_defaults_to() {
        let config = serve(&[]).unwrap().inject_config("c.ns.svc:9466".into());
        let default = InjectConfig::default();
        assert_eq!(config.pull_policy, default.pull_policy);
        assert_eq!(config.resources, default.resources);
        assert_eq!(config.size_limit, default.size_limit);
        assert_eq!(config.mount_path, default.mount_path);
        assert_eq!(config.image, default.image);
        assert_eq!(config.default_refresh, None);
    }

    #[test]
    fn sidecar_flags_reach_the_inject_config() {
        let config = serve(&[
            "--sidecar-pull-policy=IfNotPresent",
            "--sidecar-cpu-request=10m",
            "--sidecar-memory-request=20Mi",
            "--sidecar-cpu-limit=0.5",
            "--sidecar-memory-limit=64Mi",
            "--size-limit=2Mi",
            "--classic-sidecar",
            "--sidecar-refresh=5m",
        ])
        .unwrap()
        .inject_config("c.ns.svc:9466".into());
        assert_eq!(config.pull_policy, "IfNotPresent");
        assert_eq!(config.resources.cpu_request, "10m");
        assert_eq!(config.resources.memory_request, "20Mi");
        assert_eq!(config.resources.cpu_limit, "0.5");
        assert_eq!(config.resources.memory_limit, "64Mi");
        assert_eq!(config.size_limit, "2Mi");
        assert!(!config.native_sidecar);
        assert_eq!(config.default_refresh.as_deref(), Some("5m"));
    }

    #[test]
    fn typos_in_quantities_and_pull_policies_are_startup_errors() {
        for bad in [
            "--sidecar-memory-limit=32MB",
            "--sidecar-cpu-request=m",
            "--sidecar-cpu-limit=1..5",
            "--size-limit=",
            "--sidecar-pull-policy=always",
            "--sidecar-refresh=10ms",
            "--sidecar-refresh=2d",
            "--sidecar-refresh=often",
        ] {
            let err = serve(&[bad]).expect_err(bad).to_string();
            assert!(err.contains("invalid value"), "{bad}: {err}");
        }
        let err = serve(&["--sidecar-memory-limit=32MB"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a Kubernetes quantity"), "{err}");
    }
}
