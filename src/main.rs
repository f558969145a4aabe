//! The `extoken` binary: command-line parsing and process setup only. Everything it runs lives in
//! the library; errors become `anyhow` here, at the edge.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use extoken::config::{parse_duration, Config};

/// mimalloc (feature `mimalloc`, off by default): fewer cycles per request than glibc's malloc for
/// pingora's many small per-request allocations, at the cost of peak memory; see
/// docs/performance.md.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use extoken::lifecycle::ConfigSource;
use extoken::mint::{parse_claim, DevKey, MintOptions};

#[derive(Parser)]
#[command(
    name = "extoken",
    version,
    about = "Edge gateway: Descope session in, legacy external token out"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default command)
    Run(RunArgs),
    /// Validate a config file without starting; print a summary
    Check {
        /// The config file to check
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Issue Descope-shaped session JWTs from a local dev key (demos, tests, load tests)
    Mint(MintArgs),
    /// Make the running gateway re-read its config (SIGHUP to the pid in its pid_file)
    Reload {
        /// The config the gateway runs with (for its pid_file); default as for `run`
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The pid file to read instead of the config's pid_file
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Run a self-contained local demo: dev key, JWKS endpoint, echo upstream and the gateway
    Demo {
        /// Where the demo's dev key lives (created if absent)
        #[arg(long, default_value = ".extoken/dev-key.pem")]
        key: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Config file; without it ./gateway.yaml, else the embedded default
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct MintArgs {
    /// PEM RSA private key; created, with <key>.jwks.json beside it, if absent
    #[arg(long, default_value = ".extoken/dev-key.pem")]
    key: PathBuf,
    /// Descope project id (the token's iss)
    #[arg(long, default_value = "P2DemoProject0000000000000")]
    project_id: String,
    /// Issuer, if not the bare project id (e.g. https://api.descope.com/<project>)
    #[arg(long)]
    issuer: Option<String>,
    /// Subject (Descope user id); with --count N, a prefix for N distinct subjects
    #[arg(long, default_value = "U2demoUser")]
    sub: String,
    /// Lifetime, e.g. 10m, 1h; a leading '-' mints an already expired token
    #[arg(long, default_value = "10m", allow_hyphen_values = true)]
    ttl: String,
    /// Extra claim as key=JSON (repeatable), e.g. --claim dct='"T1"' --claim roles='["admin"]'
    #[arg(long = "claim", value_name = "KEY=JSON")]
    claims: Vec<String>,
    /// The externalToken claim; "{sub}" in it becomes the subject
    #[arg(long)]
    external_token: Option<String>,
    /// Number of tokens, one per line, each with a distinct sub
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Mint a refresh token (drn DSR) instead of a session token
    #[arg(long)]
    refresh: bool,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Run(a)) => run(a),
        Some(Command::Check { config }) => check(&config),
        Some(Command::Mint(a)) => mint(a),
        Some(Command::Reload { config, pid_file }) => reload(config.as_deref(), pid_file),
        Some(Command::Demo { key }) => demo(&key),
    };
    if let Err(e) = result {
        eprintln!("extoken: {e:#}");
        std::process::exit(1);
    }
}

/// `--config`, else ./gateway.yaml, else the embedded default (a reload reads the same).
fn config_source(path: Option<&Path>) -> ConfigSource {
    match path {
        Some(p) => ConfigSource::File(p.to_owned()),
        None if Path::new("gateway.yaml").exists() => ConfigSource::File("gateway.yaml".into()),
        None => ConfigSource::Embedded,
    }
}

fn load_config(source: &ConfigSource) -> Result<Config> {
    // The connector blocks and route rules are checked too (no key files read): what the gateway
    // would refuse.
    let cfg = source.load().and_then(|cfg| {
        extoken::exchange::validate(&cfg)?;
        extoken::authorize::validate(&cfg)?;
        // The certificate files too: a reload with a bad one would be refused.
        extoken::tls::check(&cfg)?;
        Ok(cfg)
    });
    cfg.with_context(|| match source {
        ConfigSource::File(p) => format!("config {}", p.display()),
        ConfigSource::Embedded => "embedded config".into(),
    })
}

fn run(args: RunArgs) -> Result<()> {
    let source = config_source(args.config.as_deref());
    let cfg = load_config(&source)?;
    let log = extoken::telemetry::init(&cfg.log)?;
    if let ConfigSource::Embedded = source {
        tracing::info!("no gateway.yaml here: using the embedded default");
    }
    tracing::info!(listen = cfg.listen.map_or("off".to_string(), |a| a.to_string()), tls = cfg.tls.as_ref().map_or("off".to_string(), |t| t.listen.to_string()), admin = cfg.admin_listen.map_or("off".to_string(), |a| a.to_string()), project = %cfg.descope.project_id, routes = cfg.routes.len(), version = env!("CARGO_PKG_VERSION"), "starting extoken");
    let built = extoken::server::build(cfg, Some(log))?;
    built.run(source)?;
    Ok(())
}

fn reload(config: Option<&Path>, pid_file: Option<PathBuf>) -> Result<()> {
    // An invalid file would be refused by the gateway anyway: say why here, and send nothing.
    let cfg = load_config(&config_source(config))
        .context("not reloading (the running gateway keeps its config)")?;
    let pid_file = pid_file
        .or(cfg.pid_file)
        .ok_or(extoken::lifecycle::LifecycleError::NoPidFile)?;
    let pid = extoken::lifecycle::signal_reload(&pid_file)?;
    println!("sent SIGHUP to extoken (pid {pid}); its log says whether the config was applied");
    Ok(())
}

fn check(path: &Path) -> Result<()> {
    let cfg = Config::load(path)?;
    // Builds the connectors too: key files, service accounts and secrets are read and test-signed.
    extoken::gateway::install_crypto_provider();
    let client = extoken::gateway::Gateway::http_client()?;
    extoken::exchange::Connectors::build(&cfg, &client, extoken::clock::system())?;
    extoken::authorize::validate(&cfg)?;
    extoken::tls::check(&cfg)?;
    print!("{}", cfg.summary());
    println!("ok: {} is valid", path.display());
    Ok(())
}

fn ttl_secs(s: &str) -> Result<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let d = parse_duration(body).map_err(anyhow::Error::msg)?;
    let secs = i64::try_from(d.as_secs()).context("ttl too large")?;
    Ok(if neg { -secs } else { secs })
}

fn mint(a: MintArgs) -> Result<()> {
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let key = DevKey::load_or_create(&a.key)?;
    let opts = MintOptions {
        project_id: a.project_id,
        issuer: a.issuer,
        sub: a.sub,
        ttl_secs: ttl_secs(&a.ttl)?,
        claims: a
            .claims
            .iter()
            .map(|c| parse_claim(c))
            .collect::<Result<_, _>>()?,
        external_token: a.external_token,
        refresh: a.refresh,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for t in opts.mint(&key, a.count)? {
        use std::io::Write;
        writeln!(out, "{t}")?;
    }
    Ok(())
}

fn demo(key_path: &Path) -> Result<()> {
    Ok(extoken::demo::run(key_path)?)
}
