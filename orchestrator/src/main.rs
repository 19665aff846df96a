//! The `orchestrator` command: parses arguments, sets up logging, calls the
//! library, and maps outcomes to exit codes (0 ok, 1 runtime failure, 64 bad
//! usage, 78 invalid topology).

#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use orchestrator::plugins::Registry;
use orchestrator::runtime::{self, RunOptions};
use orchestrator::serve::workers::{PINNING_SHARED, WorkerThreads};
use orchestrator::topology::{self, graph};

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 64;
const EXIT_CONFIG: u8 = 78;

/// Run a multi-tier application declared in one YAML file.
#[derive(Debug, Parser)]
#[command(name = "orchestrator", version, about)]
struct Cli {
    /// How log lines are written: `text`, or `json` (one object per line:
    /// timestamp, level, message, tier, replica, trace_id…). Also: ORCH_LOG_FORMAT.
    #[arg(long, global = true, value_enum, env = "ORCH_LOG_FORMAT", default_value = "text")]
    log_format: orchestrator::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

// Parsed once: the size of `run`'s options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Start every tier of a topology and serve until SIGINT or SIGTERM.
    Run {
        /// The topology file.
        file: PathBuf,
        /// Address of the admin API (status, readiness). Port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:9900")]
        admin: SocketAddr,
        /// How long in-flight requests may take to finish at shutdown, e.g. `30s`.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        drain_timeout: Duration,
        /// Do not reload when the topology file or a plugin library changes
        /// (SIGHUP and `orchestrator reload` still do).
        #[arg(long)]
        no_watch: bool,
        /// Threads serving connections: `auto` (one per core but one, which is
        /// left to process tiers' programs and the rest of the machine), a
        /// number, or `shared`. Each connection stays on one thread, which
        /// costs the least CPU per request; `shared` serves them on the
        /// work-stealing runtime, where an idle thread takes over another's
        /// requests.
        #[arg(long, default_value = "auto", value_name = "auto|N|shared")]
        workers: WorkerThreads,
        /// Bind each worker thread to a CPU of its own, among those this
        /// process may use (like nginx's `worker_cpu_affinity`): steadier
        /// latency with several workers on a busy machine, but a worker can
        /// no longer move off a core that something else keeps busy.
        #[arg(long)]
        pin_workers: bool,
        /// Connections served at once across every tier and link listener;
        /// past it a new connection is closed at once. Default: half the
        /// limit of open files (raised to its hard limit at start), less 256.
        #[arg(long, value_name = "N")]
        max_connections: Option<usize>,
        /// How long a client may take to send a request's head (and a new
        /// connection its first byte) on every tier, link and peer listener.
        #[arg(long, default_value = "30s", value_parser = timeout, value_name = "DURATION")]
        header_timeout: Duration,
        /// A connection with no request in flight and no byte either way for
        /// this long is closed (an HTTP/2 one told so first, with GOAWAY).
        #[arg(long, default_value = "60s", value_parser = timeout, value_name = "DURATION")]
        idle_timeout: Duration,
        /// Bytes of request bodies held at once across every listener; a
        /// request whose body would cross it is answered 503 (`Retry-After`).
        #[arg(long, default_value = "256MiB", value_parser = byte_size, value_name = "SIZE")]
        max_body_memory: u64,
        /// A client that reads nothing of its answer for this long is dropped.
        #[arg(long, default_value = "30s", value_parser = timeout, value_name = "DURATION")]
        send_timeout: Duration,
        #[command(flatten)]
        token: AdminToken,
        /// Serve the admin API on an address other than loopback without a
        /// token: anyone who reaches it can read the topology and reload it.
        #[arg(long)]
        admin_no_auth: bool,
        /// Record no request metrics (links, listeners): their series stay at
        /// zero. For measuring what recording costs.
        #[arg(long)]
        no_metrics: bool,
        /// Export traces over OTLP/HTTP (protobuf) to this collector: a base
        /// URL (`http://127.0.0.1:4318`, `/v1/traces` is added) or the full
        /// traces URL. Also: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (as it is),
        /// OTEL_EXPORTER_OTLP_ENDPOINT (a base). Without one, no trace is recorded.
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
        /// The fraction of new traces recorded, 0 to 1 (a request that comes
        /// with a sampled `traceparent` is recorded whatever this is).
        #[arg(long, default_value = "1", value_name = "RATIO", value_parser = sample_ratio)]
        trace_sample: f64,
        /// Run this host's share of a topology placed on several hosts (a
        /// name under its `hosts:`); the tiers of the others are reached
        /// through their peer listeners.
        #[arg(long, value_name = "NAME", conflicts_with = "only")]
        host: Option<String>,
        /// Run only these tiers (comma-separated), one replica each, and
        /// reach every other tier at --peer-address: what each Kubernetes
        /// pod runs (`orchestrator export kubernetes`). The topology's
        /// `hosts:`, if any, is not used.
        #[arg(long, value_name = "TIER,...", value_delimiter = ',', requires = "peer_address")]
        only: Vec<String>,
        /// With --only: where the other tiers' peer listeners are, `{tier}`
        /// standing for a tier's name, e.g. `{tier}-peer:7700` (a DNS name
        /// stands for every address it resolves to: a headless Service).
        #[arg(long, value_name = "ADDR", requires = "only", value_parser = peer_address)]
        peer_address: Option<String>,
        /// With --only: serve the tiers' `listen` addresses on this IP
        /// instead, their ports unchanged (`0.0.0.0` in a container, whose
        /// loopback nobody else reaches).
        #[arg(long, value_name = "IP", requires = "only")]
        listen_ip: Option<std::net::IpAddr>,
        /// Where durable state is kept — a store tier's data (`<DIR>/<tier>/`),
        /// a durable queue tier's messages — instead of `.orchestrator/`
        /// beside the topology file.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// With --only: a process tier's program is not started here; it
        /// runs beside this orchestrator (another container of the pod, which
        /// the kubelet starts and restarts) and serves on 127.0.0.1:PORT,
        /// where it is probed and routed to.
        #[arg(long, value_name = "PORT", requires = "only")]
        program_port: Option<u16>,
        /// With --only: open link NAME's local listener (the program's
        /// ORCH_LINK_<NAME>_URL or _ADDR) on 127.0.0.1:PORT (repeatable).
        #[arg(long, value_name = "NAME=PORT", requires = "only", value_parser = link_port)]
        link_port: Vec<(String, u16)>,
        /// Serve the tiers that run here to the other hosts on this address
        /// (HTTP/1.1 and HTTP/2), e.g. `0.0.0.0:7700`. Beyond loopback it
        /// needs --peer-token-file or mutual TLS (--peer-tls-*).
        #[arg(long, value_name = "ADDR")]
        peer_listen: Option<SocketAddr>,
        /// A file whose first line is the token hosts present to each
        /// other's peer listeners (16 characters or more); the same on every host.
        #[arg(long, value_name = "FILE")]
        peer_token_file: Option<PathBuf>,
        /// Mutual TLS between hosts: this host's certificate (PEM, its
        /// chain), presented to the hosts it calls and by its peer listener.
        #[arg(long, value_name = "FILE", requires_all = ["peer_tls_key", "peer_tls_ca"])]
        peer_tls_cert: Option<PathBuf>,
        /// The key of --peer-tls-cert (PEM).
        #[arg(long, value_name = "FILE", requires_all = ["peer_tls_cert", "peer_tls_ca"])]
        peer_tls_key: Option<PathBuf>,
        /// The certificate authority every host's certificate is signed by
        /// (PEM); a peer without such a certificate is refused.
        #[arg(long, value_name = "FILE", requires_all = ["peer_tls_cert", "peer_tls_key"])]
        peer_tls_ca: Option<PathBuf>,
        /// Log lines kept per replica for the dashboard and `orchestrator
        /// logs` (also at most 1 MiB of them per replica).
        #[arg(long, default_value_t = orchestrator::logging::ring::DEFAULT_LINES, value_name = "N")]
        log_lines: usize,
        #[command(flatten)]
        plugins: PluginDirs,
    },
    /// Ask a running orchestrator to reread its topology and apply what changed.
    Reload {
        /// The topology file whose orchestrator to reload (found by the state
        /// file each `run` keeps). Without it: the one orchestrator running,
        /// or the one on 127.0.0.1:9900 when none says it runs.
        file: Option<PathBuf>,
        /// Address of its admin API (instead of finding it).
        #[arg(long)]
        admin: Option<SocketAddr>,
        #[command(flatten)]
        token: AdminToken,
    },
    /// Show a running orchestrator's tiers: replicas ready, state, restarts,
    /// listen address, requests per second, error rate and p99 (over the
    /// last 10 s), like `docker compose ps`.
    Status {
        /// The topology file whose orchestrator to ask (found as `reload`
        /// finds it). Without it: the one running, or 127.0.0.1:9900.
        file: Option<PathBuf>,
        /// Address of its admin API (instead of finding it).
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        token: AdminToken,
    },
    /// Print a running orchestrator's recent log lines (what each tier's
    /// replicas and programs logged), coloured per tier, and with -f follow them.
    Logs {
        /// Only these tiers (`orchestrator` for its own lines); all without.
        tiers: Vec<String>,
        /// Keep printing lines as they are logged.
        #[arg(short, long)]
        follow: bool,
        /// Only lines logged this recently, e.g. `30s`, `5m`, `1h`.
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// Only lines whose message matches this regular expression.
        #[arg(long, value_name = "REGEX")]
        grep: Option<String>,
        /// Only the last N lines kept (each replica keeps its last 1000).
        #[arg(long, short = 'n', value_name = "N")]
        tail: Option<usize>,
        /// Print each line as the JSON object the admin API serves.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Restart a tier's replicas one at a time, each new one ready before the
    /// old one stops taking requests (no request fails, as in a reload).
    Restart {
        tier: String,
        /// Only this replica.
        #[arg(long, value_name = "N")]
        replica: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// Check topology files; print every error, located.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        plugins: PluginDirs,
    },
    /// Print a topology's tiers and links as a graph.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "mermaid")]
        format: graph::Format,
        #[command(flatten)]
        plugins: PluginDirs,
    },
    /// List available plugins: name, version, ABI version, and file or built-in.
    Plugins {
        /// Also search the plugin directories this topology names.
        #[arg(long)]
        topology: Option<PathBuf>,
        #[command(flatten)]
        plugins: PluginDirs,
    },
    /// Print the JSON Schema of the topology file, for editors.
    Schema,
    /// Translate a topology for another platform.
    #[command(subcommand)]
    Export(ExportTarget),
    /// Load one plugin library and report its declaration (what the
    /// orchestrator runs in a child process before loading a library itself).
    #[command(name = "probe-plugin", hide = true)]
    ProbePlugin { library: PathBuf },
    /// Run a process tier's program under the shim that keeps its process
    /// tree from outliving the orchestrator (what `run` starts programs with).
    #[command(name = "tier-shim", hide = true)]
    TierShim {
        /// The orchestrator's pid.
        parent: u32,
        /// How long the program's processes may take to stop once the orchestrator is gone.
        grace_ms: u64,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, Subcommand)]
enum ExportTarget {
    /// Kubernetes manifests (a Kustomize directory, or one stream) and a
    /// report of how each part of the topology was translated.
    Kubernetes {
        /// The topology file.
        file: PathBuf,
        /// A directory to write the manifests, kustomization.yaml and the
        /// report to (created; tokens under secrets/ are kept if there), or
        /// `-` for one stream of documents on stdout.
        #[arg(short, long, default_value = "-", value_name = "DIR|-")]
        output: PathBuf,
        /// Namespace of every resource.
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
        /// The orchestrator's image (default: what the Containerfile builds).
        #[arg(long)]
        image: Option<String>,
        /// The cluster's version (1.29 to 1.37).
        #[arg(long, default_value = "1.37", value_name = "1.N", value_parser = orchestrator::export::kubernetes::parse_version)]
        kubernetes_version: (u32, u32),
        /// Where the image's file tree has the topology's directory: a
        /// process tier's `workdir` resolves against it.
        #[arg(long, value_name = "DIR")]
        mount_path: Option<String>,
        /// How long in-flight requests may take to finish when a pod stops.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        drain_timeout: Duration,
        #[command(flatten)]
        plugins: PluginDirs,
    },
}

/// Which running orchestrator a command is for, when its arguments are tiers.
#[derive(Debug, clap::Args)]
struct Target {
    /// The topology file whose orchestrator to ask (found as `reload` finds it).
    #[arg(long, short = 't', value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Address of its admin API (instead of finding it).
    #[arg(long)]
    admin: Option<SocketAddr>,
    #[command(flatten)]
    token: AdminToken,
}

#[derive(Debug, clap::Args)]
struct AdminToken {
    /// A file whose first line is the admin API's bearer token (16
    /// characters or more); every request but health and readiness must
    /// carry it. Required to serve the admin API beyond loopback.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
}

impl AdminToken {
    fn read(&self) -> Result<Option<std::sync::Arc<str>>, ExitCode> {
        let Some(file) = &self.admin_token_file else { return Ok(None) };
        orchestrator::admin::read_token(file).map(Some).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        })
    }
}

#[derive(Debug, clap::Args)]
struct PluginDirs {
    /// Extra directory to search for plugin libraries (repeatable). Also:
    /// ORCH_PLUGIN_PATH, and the executable's directory.
    #[arg(long = "plugin-dir", value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Load plugin libraries even if another user could have written them
    /// (the file or its directory writable by all, or owned by someone else).
    #[arg(long)]
    allow_insecure_plugins: bool,
}

impl PluginDirs {
    fn registry(&self) -> Registry {
        Registry::new(self.dirs.clone()).allow_insecure(self.allow_insecure_plugins)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    init_tracing(cli.log_format);
    match cli.command {
        Command::Run {
            file,
            admin,
            drain_timeout,
            no_watch,
            workers,
            pin_workers,
            max_connections,
            header_timeout,
            idle_timeout,
            send_timeout,
            max_body_memory,
            token,
            admin_no_auth,
            no_metrics,
            otlp_endpoint,
            trace_sample,
            host,
            only,
            peer_address,
            listen_ip,
            data_dir,
            program_port,
            link_port,
            peer_listen,
            peer_token_file,
            peer_tls_cert,
            peer_tls_key,
            peer_tls_ca,
            log_lines,
            plugins,
        } => {
            orchestrator::logging::ring::global().set_lines(log_lines);
            orchestrator::serve::listener::BodyBudget::global().set_max(max_body_memory);
            let peer_token = match peer_token_file.as_deref().map(orchestrator::admin::read_token).transpose() {
                Ok(token) => token.map(|t| t.to_string()),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            // Absolute: the peer tiers read them, and the working directory is no anchor.
            let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
            let peer_tls_files = match (peer_tls_cert, peer_tls_key, peer_tls_ca) {
                (Some(cert), Some(key), Some(ca)) => {
                    Some(peer::tls::Files { cert: absolute(cert), key: absolute(key), ca: absolute(ca) })
                }
                _ => None,
            };
            let peer_tls = match peer_tls_files.as_ref().map(peer::tls::server_config).transpose() {
                Ok(config) => config.map(std::sync::Arc::new),
                Err(e) => {
                    eprintln!("error: mutual TLS between hosts: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            if let Some(addr) = peer_listen
                && !addr.ip().is_loopback()
                && peer_token.is_none()
                && peer_tls.is_none()
            {
                let why = format!(
                    "the peer listener on {addr} would serve this host's tiers to anyone who can reach it: give it a token with --peer-token-file, or mutual TLS with --peer-tls-cert, --peer-tls-key and --peer-tls-ca"
                );
                let _ = Cli::command().error(clap::error::ErrorKind::ArgumentConflict, why).print();
                return ExitCode::from(EXIT_USAGE);
            }
            orchestrator::metrics::set_enabled(!no_metrics);
            if pin_workers && workers == WorkerThreads::Shared {
                let conflict = PINNING_SHARED;
                let _ = Cli::command().error(clap::error::ErrorKind::ArgumentConflict, conflict).print();
                return ExitCode::from(EXIT_USAGE);
            }
            let token = match token.read() {
                Ok(token) => token,
                Err(code) => return code,
            };
            if !admin.ip().is_loopback() && token.is_none() && !admin_no_auth {
                let why = format!(
                    "the admin API on {admin} would be open to anyone who can reach it: give it a token with --admin-token-file, or pass --admin-no-auth"
                );
                let _ = Cli::command().error(clap::error::ErrorKind::ArgumentConflict, why).print();
                return ExitCode::from(EXIT_USAGE);
            }
            if !admin.ip().is_loopback() && token.is_none() {
                tracing::warn!(%admin, "The admin API is served beyond loopback without a token (--admin-no-auth).");
            }
            let opts = RunOptions {
                admin,
                drain_timeout,
                watch: !no_watch,
                color: color(),
                workers,
                pin_workers,
                max_connections,
                timeouts: orchestrator::serve::idle::Timeouts {
                    header: header_timeout,
                    idle: idle_timeout,
                    send: send_timeout,
                },
                admin_access: orchestrator::admin::Access::new(token),
                traces: trace_options(otlp_endpoint, trace_sample),
                placement: match (host, peer_address) {
                    (Some(host), _) => Some(topology::Share::Host(host)),
                    (None, Some(peer_address)) => Some(topology::Share::Tiers { tiers: only, peer_address }),
                    (None, None) => None,
                }
                .map(|share| topology::Placement {
                    share,
                    token: peer_token.clone(),
                    tls: peer_tls_files,
                    listen_ip,
                    data_dir: data_dir.clone().map(absolute),
                    program_port,
                    link_ports: link_port.into_iter().collect(),
                }),
                peer_listen,
                peer_token,
                peer_tls,
                data_dir: data_dir.map(absolute),
            };
            run(&file, opts, &plugins)
        }
        Command::Reload { file, admin, token } => match (token.read(), which_admin(file.as_deref(), admin, "reload")) {
            (Ok(token), Ok(admin)) => reload(admin, token.as_deref()),
            (Err(code), _) | (_, Err(code)) => code,
        },
        Command::Status { file, admin, json, token } => {
            admin_command(&token, file.as_deref(), admin, "status", |c| async move {
                orchestrator::cli::status(&c, json).await
            })
        }
        Command::Logs { tiers, follow, since, grep, tail, json, target: Target { topology, admin, token } } => {
            let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let req = orchestrator::cli::LogsRequest { tiers, follow, since, grep, tail, color, json };
            admin_command(&token, topology.as_deref(), admin, "logs", |c| async move {
                orchestrator::cli::logs(&c, &req).await
            })
        }
        Command::Restart { tier, replica, target: Target { topology, admin, token } } => {
            admin_command(&token, topology.as_deref(), admin, "restart", |c| async move {
                let restarted = orchestrator::cli::restart(&c, &tier, replica).await?;
                let list: Vec<String> = restarted.iter().map(u64::to_string).collect();
                println!("restarted `{tier}`: replica{} {}", if list.len() == 1 { "" } else { "s" }, list.join(", "));
                Ok(())
            })
        }
        Command::Validate { files, plugins } => validate(&files, &plugins),
        Command::Graph { file, format, plugins } => match load(&file, &plugins.registry()) {
            Ok(t) => {
                print!("{}", graph::render(&t, format));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Plugins { topology, plugins } => list_plugins(topology.as_deref(), &plugins),
        Command::Export(ExportTarget::Kubernetes {
            file,
            output,
            namespace,
            image,
            kubernetes_version,
            mount_path,
            drain_timeout,
            plugins,
        }) => {
            let opts = orchestrator::export::kubernetes::Options {
                namespace,
                image,
                mount_path,
                version: kubernetes_version,
                drain_timeout,
            };
            export_kubernetes(&file, &output, &opts, &plugins)
        }
        Command::Schema => {
            println!("{}", topology::raw::json_schema());
            ExitCode::SUCCESS
        }
        Command::ProbePlugin { library } => orchestrator::plugins::loader::probe_main(&library),
        Command::TierShim { parent, grace_ms, command } => {
            process::shim::main(parent, Duration::from_millis(grace_ms), &command)
        }
    }
}

fn init_tracing(format: orchestrator::logging::LogFormat) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORCH_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = match format {
        // Every line made safe for a terminal on its way out (colours kept
        // for one), a program's output included: see `logging::terminal`.
        orchestrator::logging::LogFormat::Text => {
            let colours = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            tracing_subscriber::fmt::layer()
                .with_writer(orchestrator::logging::terminal::SanitizedStderr { colours })
                .with_ansi(colours)
                .with_ansi_sanitization(false)
                .boxed()
        }
        // JSON escapes every control character itself.
        orchestrator::logging::LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(orchestrator::logging::JsonLines)
            .boxed(),
    };
    // What the dashboard and `orchestrator logs` show: INFO and above,
    // whatever the terminal's filter.
    let ring = orchestrator::logging::ring::RingLayer::new(orchestrator::logging::ring::global().clone())
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::registry().with(terminal.with_filter(filter)).with(ring).init();
}

/// A `--trace-sample` ratio.
/// A size in bytes, or with a unit (`256MiB`, `1GB`).
fn byte_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("`{s}` is not a size such as 256MiB: {e}"))
}

/// A connection timeout: a duration of at least 100ms and at most a day.
fn timeout(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d >= Duration::from_millis(100) && d <= Duration::from_secs(86_400) => Ok(d),
        Ok(_) => Err(format!("`{s}` is out of range: from 100ms to 24h")),
        Err(e) => Err(format!("`{s}` is not a duration such as 30s: {e}")),
    }
}

fn sample_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}` is not a ratio between 0 and 1 (e.g. 0.1: one trace in ten)")),
    }
}

/// Where traces go: `--otlp-endpoint`, else the standard variables.
fn trace_options(endpoint: Option<String>, sample: f64) -> Option<orchestrator::traces::TraceOptions> {
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let endpoint = match endpoint {
        Some(url) => orchestrator::traces::TraceOptions::traces_url(&url),
        None => match from_env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(url) => url,
            None => format!("{}/v1/traces", from_env("OTEL_EXPORTER_OTLP_ENDPOINT")?.trim_end_matches('/')),
        },
    };
    let service = from_env("OTEL_SERVICE_NAME").unwrap_or_else(|| "orchestrator".to_owned());
    Some(orchestrator::traces::TraceOptions { endpoint, sample, service })
}

fn color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Loads a topology, printing located errors; the exit code on failure.
fn load(file: &Path, registry: &Registry) -> Result<topology::Topology, ExitCode> {
    match topology::load(file, registry) {
        Ok(t) => Ok(t),
        Err(topology::Error::Invalid(d)) => {
            eprint!("{}", d.render(color()));
            Err(ExitCode::from(EXIT_CONFIG))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

fn export_kubernetes(
    file: &Path,
    output: &Path,
    opts: &orchestrator::export::kubernetes::Options,
    plugins: &PluginDirs,
) -> ExitCode {
    use orchestrator::export::kubernetes;
    let t = match load(file, &plugins.registry()) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let source = match topology::read(file, topology::max_file_bytes()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let export = match kubernetes::export(&t, &source, opts) {
        Ok(e) => e,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {}: {e}", file.display());
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    for note in &export.report {
        eprintln!("{note}");
    }
    if output == Path::new("-") {
        print!("{}", kubernetes::stream(&export));
        eprintln!(
            "The pods need Secret {} (keys {}, {}, each a token of 16 characters or more), which a stream does not carry: kubectl create secret generic {} --from-file={}=FILE --from-file={}=FILE",
            export.secret,
            kubernetes::PEER_TOKEN,
            kubernetes::ADMIN_TOKEN,
            export.secret,
            kubernetes::PEER_TOKEN,
            kubernetes::ADMIN_TOKEN
        );
        if let Some(env) = &export.env_secret {
            let base = t.base_dir();
            let files: Vec<String> = env
                .keys
                .iter()
                .map(|(key, (path, _))| format!("--from-file={key}={}", base.join(path).display()))
                .collect();
            eprintln!(
                "and Secret {} (the env values read from files): kubectl create secret generic {} {}",
                env.name,
                env.name,
                files.join(" ")
            );
        }
        return ExitCode::SUCCESS;
    }
    match orchestrator::export::write_dir(output, &export) {
        Ok(written) => {
            eprintln!(
                "Wrote {} files to {}; deploy with: kubectl apply -k {}",
                written,
                output.display(),
                output.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", output.display());
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn validate(files: &[PathBuf], plugins: &PluginDirs) -> ExitCode {
    let registry = plugins.registry();
    let mut worst = ExitCode::SUCCESS;
    for file in files {
        match load(file, &registry) {
            Ok(t) => {
                println!(
                    "{}: ok ({} tier{}, {} link{})",
                    file.display(),
                    t.tiers.len(),
                    if t.tiers.len() == 1 { "" } else { "s" },
                    t.links.len(),
                    if t.links.len() == 1 { "" } else { "s" }
                );
                // Valid, but what would fail as soon as it runs.
                for warning in topology::warnings(&t) {
                    let mut one = topology::Diagnostics::new(&t.file, "".into());
                    one.push(warning);
                    eprint!("warning: {one}");
                }
            }
            Err(code) => {
                // A file that cannot be read is a usage error; an invalid one a config error.
                if code == ExitCode::from(EXIT_CONFIG) || worst == ExitCode::SUCCESS {
                    worst = code;
                }
            }
        }
    }
    worst
}

/// `--link-port NAME=PORT`.
fn link_port(s: &str) -> Result<(String, u16), String> {
    match s.split_once('=') {
        Some((name, port)) if !name.is_empty() => match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok((name.to_owned(), p)),
            _ => Err(format!("`{port}` is not a port (1 to 65535)")),
        },
        _ => Err(format!("`{s}` is not NAME=PORT, e.g. `pricing=7801`")),
    }
}

/// `--peer-address`: `{tier}` somewhere before a `:port`.
fn peer_address(s: &str) -> Result<String, String> {
    let port = s.rsplit_once(':').map(|(_, p)| p);
    if !s.contains(topology::model::TIER_PLACEHOLDER) {
        return Err(format!(
            "`{s}` does not say where a tier is: write `{{tier}}` for its name, e.g. `{{tier}}-peer:7700`"
        ));
    }
    match port.map(str::parse::<u16>) {
        Some(Ok(p)) if p > 0 => Ok(s.to_owned()),
        _ => Err(format!("`{s}` has no port: write it as NAME:PORT, e.g. `{{tier}}-peer:7700`")),
    }
}

fn run(file: &Path, opts: RunOptions, plugins: &PluginDirs) -> ExitCode {
    let registry = Arc::new(plugins.registry());
    let topology = match load(file, &registry) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let share = opts.placement.as_ref().map(|p| &p.share);
    match (share, topology.hosts.is_empty()) {
        (None, false) => {
            let hosts: Vec<&str> = topology.hosts.keys().map(String::as_str).collect();
            eprintln!(
                "error: {} places its tiers on hosts {}: run each host's share with --host NAME",
                file.display(),
                hosts.join(", ")
            );
            return ExitCode::from(EXIT_USAGE);
        }
        (Some(topology::Share::Host(host)), true) => {
            eprintln!("error: --host {host}: {} places no tier (it has no `hosts:`)", file.display());
            return ExitCode::from(EXIT_USAGE);
        }
        (Some(topology::Share::Host(host)), false) if !topology.hosts.contains_key(host) => {
            let hosts: Vec<&str> = topology.hosts.keys().map(String::as_str).collect();
            eprintln!("error: --host {host}: {} has no such host; its hosts are: {}", file.display(), hosts.join(", "));
            return ExitCode::from(EXIT_USAGE);
        }
        (Some(topology::Share::Tiers { tiers, .. }), _) => {
            if let Some(unknown) = tiers.iter().find(|t| !topology.tiers.contains_key(&topology::TierId::new(t))) {
                let known: Vec<&str> = topology.tiers.keys().map(topology::TierId::as_str).collect();
                eprintln!(
                    "error: --only {unknown}: {} has no such tier; its tiers are: {}",
                    file.display(),
                    known.join(", ")
                );
                return ExitCode::from(EXIT_USAGE);
            }
            if !topology.hosts.is_empty() {
                tracing::warn!(
                    "--only: the topology's `hosts:` is not used; the other tiers are reached at --peer-address."
                );
            }
        }
        _ => {}
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match rt.block_on(runtime::run(topology, registry, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "The topology could not run.");
            eprintln!("error: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// The admin address of the orchestrator a command is for: `admin` if
/// given, else the one running `file`, else the only one running, else the
/// default. Several running and none named is refused: a guess could reload
/// the wrong application.
fn which_admin(file: Option<&Path>, admin: Option<SocketAddr>, command: &str) -> Result<SocketAddr, ExitCode> {
    use orchestrator::runtime::running;
    if let Some(admin) = admin {
        return Ok(admin);
    }
    if let Some(file) = file {
        return running::find(file).map(|e| e.admin).ok_or_else(|| {
            eprintln!(
                "error: no orchestrator runs {} (for this user, on this machine); give --admin ADDR",
                file.display()
            );
            ExitCode::from(EXIT_RUNTIME)
        });
    }
    match running::all().as_slice() {
        [] => Ok(SocketAddr::from(([127, 0, 0, 1], 9900))),
        [one] => Ok(one.admin),
        several => {
            eprintln!("error: {} orchestrators run; say which with its topology file:", several.len());
            for e in several {
                let topology = if command == "reload" || command == "status" { "" } else { "--topology " };
                eprintln!(
                    "  orchestrator {command} {topology}{}    # `{}`, pid {}, admin {}",
                    e.file.display(),
                    e.name,
                    e.pid,
                    e.admin
                );
            }
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// Runs a command against the admin API of the orchestrator it is for:
/// 0 when it did what was asked, 64 when refused (an unknown tier, a bad
/// pattern, a missing token), 1 when unreachable or when it failed.
fn admin_command<F, Fut>(
    token: &AdminToken,
    file: Option<&Path>,
    admin: Option<SocketAddr>,
    command: &str,
    f: F,
) -> ExitCode
where
    F: FnOnce(orchestrator::cli::AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<(), orchestrator::cli::CliError>>,
{
    let token = match token.read() {
        Ok(token) => token.map(|t| t.to_string()),
        Err(code) => return code,
    };
    let addr = match which_admin(file, admin, command) {
        Ok(addr) => addr,
        Err(code) => return code,
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match rt.block_on(f(orchestrator::cli::AdminClient { addr, token })) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                orchestrator::cli::CliError::Refused(_) => ExitCode::from(EXIT_USAGE),
                _ => ExitCode::from(EXIT_RUNTIME),
            }
        }
    }
}

/// `orchestrator reload`: 0 when applied or unchanged, 78 when the topology is
/// invalid, 1 otherwise.
fn reload(admin: SocketAddr, token: Option<&str>) -> ExitCode {
    use http_body_util::{BodyExt as _, Empty};
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let answer = rt.block_on(async {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Empty<bytes::Bytes>>();
        let mut req = http::Request::post(format!("http://{admin}/admin/reload"));
        if let Some(token) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        let resp = client.request(req).await.map_err(|e| format!("cannot reach the admin API at {admin}: {e}"))?;
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).map_err(|e| format!("unexpected answer from {admin}: {e}"))
    });
    let record = match answer {
        Ok(record) => record,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let text = |key: &str| record[key].as_str().unwrap_or_default().to_owned();
    // Which orchestrator answered: the one on `admin` may run another topology than meant.
    let which = format!("topology `{}` ({}) at {admin}", text("topology"), text("file"));
    match text("outcome").as_str() {
        "applied" => {
            println!("applied: {which}, generation {} ({})", record["generation"], text("summary"));
            ExitCode::SUCCESS
        }
        "unchanged" => {
            println!("unchanged: {which}, generation {}", record["generation"]);
            ExitCode::SUCCESS
        }
        _ => {
            eprint!("reload failed: {which}; generation {} keeps running:\n{}", record["generation"], text("error"));
            if text("error_kind") == "invalid" { ExitCode::from(EXIT_CONFIG) } else { ExitCode::from(EXIT_RUNTIME) }
        }
    }
}

fn list_plugins(topology_file: Option<&Path>, plugins: &PluginDirs) -> ExitCode {
    let registry = plugins.registry();
    let mut extra = Vec::new();
    if let Some(file) = topology_file {
        // Its `plugins:` directories are searched even if the rest is invalid:
        // the plugin being debugged is likely there.
        match topology::plugin_dirs(file) {
            Ok(dirs) => extra = dirs,
            Err(e) => eprintln!("warning: {e}"),
        }
        if let Err(topology::Error::Invalid(d)) = topology::load(file, &registry) {
            let n = d.items.len();
            eprint!("warning: the topology has {n} error{}:\n{d}", if n == 1 { "" } else { "s" });
        }
    }
    println!("{:<14} {:<9} {:<4} {:<6} ORIGIN", "NAME", "VERSION", "ABI", "API");
    for (name, plugin) in registry.list(&extra) {
        match plugin {
            Ok(p) => println!(
                "{:<14} {:<9} {:<4} {:<6} {}",
                p.name(),
                p.version(),
                p.abi_version(),
                p.api_version(),
                p.path().map_or_else(|| "built-in".to_owned(), |p| p.display().to_string())
            ),
            Err(e) => println!("{name:<14} {:<9} {:<4} {:<6} refused: {e}", "-", "-", "-"),
        }
    }
    let dirs: Vec<String> = registry.dirs(&extra).iter().map(|d| d.display().to_string()).collect();
    println!("\nsearched: {}", dirs.join(", "));
    ExitCode::SUCCESS
}
