//! The `jwtgate` command: subcommand dispatch, exit codes, logging and crypto provider set-up.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jwtgate::config::{self, Config, LogFormat};

/// jemalloc, not glibc's malloc: its thread caches serve the request path's larger blocks
/// (the request future's ~4.9 KB box, hyper's 8 KiB read buffers) that glibc's tcache
/// (≤ 1,032 bytes) sends through its bins: ~940 fewer instructions per proxied request, and
/// 10.6 KiB per idle HTTP connection instead of 14.2 (docs/BENCHMARKS.md "s14").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "jwtgate",
    version,
    about = "Identity-aware edge gateway: validates JWTs locally and forwards a verified identity"
)]
struct Cli {
    /// Config file (default: $JWTGATE_CONFIG, then ./gateway.toml).
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve (the default).
    Run,
    /// Validate config, keys and certificates; print the route table.
    Check,
    /// Mint a signed token for testing; the JWT is the last line of stdout.
    Token {
        #[arg(long)]
        alg: String,
        /// PEM private key file (RSA, EC, Ed25519).
        #[arg(
            long,
            conflicts_with = "secret_env",
            required_unless_present = "secret_env"
        )]
        key: Option<PathBuf>,
        /// Environment variable holding the HMAC secret.
        #[arg(long)]
        secret_env: Option<String>,
        #[arg(long)]
        sub: String,
        #[arg(long)]
        kid: Option<String>,
        #[arg(long)]
        iss: Option<String>,
        #[arg(long)]
        aud: Option<String>,
        /// Space-separated scopes.
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Extra claim (repeatable); VALUE is parsed as JSON when it is JSON.
        #[arg(long = "claim", value_name = "K=V")]
        claims: Vec<String>,
        /// Mint this many tokens (distinct jti), one per line (benchmarks).
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Bind the token to this DPoP key (PKCS#8 PEM, P-256 or Ed25519): `cnf.jkt`.
        #[arg(long, value_name = "PEM_FILE")]
        dpop_key: Option<PathBuf>,
    },
    /// Print a DPoP proof (RFC 9449) for one request, made with KEY.
    DpopProof {
        /// The client's DPoP private key (PKCS#8 PEM, P-256 or Ed25519).
        #[arg(long, value_name = "PEM_FILE")]
        key: PathBuf,
        #[arg(long, default_value = "GET")]
        method: String,
        /// The request URL (query and fragment are left out of `htu`).
        #[arg(long)]
        url: String,
        /// The access token the proof goes with (`ath`).
        #[arg(long)]
        token: Option<String>,
        /// The server's nonce (its `DPoP-Nonce` header), when it asks for one.
        #[arg(long)]
        nonce: Option<String>,
        /// Print this many proofs (distinct jti), one per line (benchmarks).
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Revoke a token (by jti, until its exp), every token of a subject, or every token of
    /// a sign-in session (sid), through the admin API. With -c, the admin address and the
    /// variable holding the admin token (admin.token_env) come from the config file;
    /// otherwise --admin and
    /// JWTGATE_ADMIN_TOKEN.
    Revoke {
        #[arg(
            long,
            requires = "exp",
            conflicts_with_all = ["sub", "sid", "token"],
            required_unless_present_any = ["sub", "sid", "token"]
        )]
        jti: Option<String>,
        /// The token's exp (unix seconds): the revocation lives until then.
        #[arg(long)]
        exp: Option<i64>,
        #[arg(long, conflicts_with_all = ["sid", "token"])]
        sub: Option<String>,
        /// A session id (the tokens' `sid` claim): revoked for `subject_ttl_s`.
        #[arg(long, conflicts_with = "token")]
        sid: Option<String>,
        /// Revoke this token by its own jti and exp ("-" reads it from stdin, which keeps
        /// it out of the process list). The payload is decoded WITHOUT verifying the
        /// signature, only to read jti, exp and iss (iss picks the issuer when -c names
        /// several); the gateway decides nothing else from it.
        #[arg(long, value_name = "JWT")]
        token: Option<String>,
        /// The `[[issuers]]` name the token or subject belongs to (needed when the gateway
        /// has several issuers).
        #[arg(long, value_name = "NAME")]
        issuer: Option<String>,
        /// Admin API base URL (default: http://<listen.admin> of -c, else
        /// http://127.0.0.1:9901).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Probe the running gateway for a container HEALTHCHECK: GET /readyz on the config's
    /// listen.admin; exit 0 when it answers 200, 1 otherwise, with one line saying why.
    Healthcheck {
        /// Ask /healthz (the process serves) instead of /readyz (keys and store ready).
        #[arg(long)]
        live: bool,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        timeout: u64,
    },
    /// Write a self-signed development certificate and key (PEM).
    GenCert {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        #[arg(long = "host", default_value = "localhost")]
        hosts: Vec<String>,
    },
    /// Run a self-contained local demo: echo upstream, identity provider, gateway.
    Demo {
        /// Run the walkthrough, print the result and exit instead of serving.
        #[arg(long)]
        once: bool,
    },
}

fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match cli.cmd.unwrap_or(Cmd::Run) {
        Cmd::Run => run(config::resolve_path(cli.config)),
        Cmd::Check => check(config::resolve_path(cli.config)),
        Cmd::Token {
            alg,
            key,
            secret_env,
            sub,
            kid,
            iss,
            aud,
            scope,
            ttl,
            mut claims,
            count,
            dpop_key,
        } => {
            if let Some(p) = dpop_key {
                match read_dpop_key(&p) {
                    Ok(k) => claims.push(format!("cnf={{\"jkt\":\"{}\"}}", k.thumbprint())),
                    Err(e) => return fail(e),
                }
            }
            token(
                alg, key, secret_env, sub, kid, iss, aud, scope, ttl, claims, count,
            )
        }
        Cmd::DpopProof {
            key,
            method,
            url,
            token,
            nonce,
            count,
        } => dpop_proof(
            &key,
            &method,
            &url,
            token.as_deref(),
            nonce.as_deref(),
            count,
        ),
        Cmd::Revoke {
            jti,
            exp,
            sub,
            sid,
            token,
            issuer,
            admin,
        } => runtime().block_on(revoke(
            cli.config.as_deref(),
            Target {
                jti,
                exp,
                sub,
                sid,
                token,
            },
            issuer,
            admin,
        )),
        Cmd::Healthcheck { live, timeout } => {
            healthcheck(config::resolve_path(cli.config), live, timeout)
        }
        Cmd::GenCert { out, hosts } => match jwtgate::certs::write(&out, &hosts) {
            Ok((c, k)) => {
                println!("certificate: {}\nkey:         {}", c.display(), k.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Cmd::Demo { once } => {
            let _log = init_logging(LogFormat::Text, "warn");
            runtime().block_on(jwtgate::demo::run(once))
        }
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("jwtgate: {e}");
    ExitCode::from(1)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("jwtgate-control")
        .enable_all()
        .build()
        .expect("cannot start the control runtime")
}

/// Logs go to stderr through a background writer thread (`jwtgate::LogWriter`), so a
/// worker never blocks on the write (or on another worker holding stderr): with the access
/// log on, writing inline cost more CPU than proxying the request. Not lossy: if the writer
/// falls `jwtgate::logwriter::LIMIT` bytes behind, workers wait rather than drop lines.
/// Keep the guard until exit; dropping it writes what is left.
fn init_logging(format: LogFormat, default: &str) -> jwtgate::logwriter::Flush {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let (filter, initial) = match from_env.as_deref().map(EnvFilter::try_new) {
        Some(Ok(f)) => (f, from_env.unwrap_or_default()),
        _ => (EnvFilter::new(default), default.to_string()),
    };
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = match jwtgate::LogWriter::start("jwtgate-log", std::io::stderr()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: cannot start the log writer thread: {e}");
            std::process::exit(1);
        }
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        // The stock timer's text, formatted once a second per thread.
        .with_timer(jwtgate::LogTime)
        .with_writer(writer.clone());
    // `POST /log-level` swaps the filter through the subscriber's reload handle.
    fn control<L, S>(initial: &str, handle: tracing_subscriber::reload::Handle<L, S>)
    where
        L: From<EnvFilter> + Send + Sync + 'static,
        S: Send + Sync + 'static,
    {
        jwtgate::install_log_control(
            initial,
            Box::new(move |level| {
                let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                handle.reload(f).map_err(|e| e.to_string())
            }),
        );
    }
    match format {
        LogFormat::Json => {
            let b = b
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_filter_reloading();
            let handle = b.reload_handle();
            if b.try_init().is_ok() {
                control(&initial, handle);
            }
        }
        LogFormat::Text => {
            // The default format's output (`Full`, `DefaultFields`) at a fraction of its
            // cost per access-log line.
            let b = b
                .fmt_fields(jwtgate::TextFields)
                .event_format(jwtgate::TextFormat::default())
                .with_filter_reloading();
            let handle = b.reload_handle();
            if b.try_init().is_ok() {
                control(&initial, handle);
                // The access log's lines, the same text without tracing's dispatch, to the
                // same writer (colours: left to the subscriber's coloured format).
                if !ansi {
                    jwtgate::install_text_sink(writer);
                }
            }
        }
    }
    guard
}

/// A verified-token cache this large (`server.token_cache_mib`, 512 MiB: ~400,000 small
/// tokens) runs with the heap in huge pages.
const HUGE_PAGES_FROM_BYTES: u64 = 512 << 20;

/// jemalloc's options, read once when it starts (before `main`). The crate's jemalloc has
/// prefixed symbols, and so has the variable's name.
const MALLOC_CONF: &str = "_RJEM_MALLOC_CONF";

/// What `huge_pages` did.
enum HugePages {
    /// Not wanted, or not available (not Linux, or the kernel's setting is not `madvise`).
    Off,
    /// Already in force (this is the restarted process, or the operator set `thp`).
    On,
    /// Wanted, but the restart failed: running as before.
    Failed(std::io::Error),
    /// `JWTGATE_HUGE_PAGES` is neither `on`/`1` nor `off`/`0`: left off.
    Invalid(String),
}

/// With a verified-token cache of `HUGE_PAGES_FROM_BYTES` or more, each cache hit reads a
/// different part of a heap of hundreds of megabytes, and with the kernel's transparent huge
/// pages at `madvise` every such read misses the TLB: at 1,000,000 cached tokens that cost
/// ~18% of throughput (docs/BENCHMARKS.md "s12: huge pages"). jemalloc asks for huge pages
/// for its memory with the option `thp:always`, which it reads only at start, so the process
/// starts itself again (`exec`: same pid, arguments and environment, plus the option in
/// `_RJEM_MALLOC_CONF`) before it does anything else. `JWTGATE_HUGE_PAGES=off` never does
/// this, `on` does it whatever the cache size; an operator's own `thp:` is left as it is.
/// Returns only when there was no restart.
#[cfg(target_os = "linux")]
fn huge_pages(cfg: &Config) -> HugePages {
    use std::os::unix::process::CommandExt;
    let conf = std::env::var(MALLOC_CONF).unwrap_or_default();
    // An operator's own setting of the option is left as it is (jemalloc takes the last).
    match conf
        .split(',')
        .filter_map(|o| o.trim().strip_prefix("thp:"))
        .next_back()
    {
        Some("always") => return HugePages::On,
        Some(_) => return HugePages::Off,
        None => {}
    }
    let wanted = match std::env::var("JWTGATE_HUGE_PAGES") {
        Ok(v) if v == "off" || v == "0" => false,
        Ok(v) if v == "on" || v == "1" => true,
        Ok(v) => return HugePages::Invalid(v),
        Err(_) => cfg.server.token_cache_bytes >= HUGE_PAGES_FROM_BYTES,
    };
    // `always`: the kernel already backs the heap with huge pages; `never`: nothing to ask.
    let madvise = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|m| m.contains("[madvise]"));
    if !wanted || !madvise {
        return HugePages::Off;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return HugePages::Failed(e),
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    let conf = if conf.trim().is_empty() {
        "thp:always".to_owned()
    } else {
        format!("{conf},thp:always")
    };
    HugePages::Failed(cmd.args(args).env(MALLOC_CONF, conf).exec())
}

#[cfg(not(target_os = "linux"))]
fn huge_pages(_: &Config) -> HugePages {
    HugePages::Off
}

fn run(path: PathBuf) -> ExitCode {
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // Returns only when the process did not start again with huge pages.
    let restart = huge_pages(&cfg);
    let _log = init_logging(cfg.server.log_format, "info");
    match restart {
        HugePages::Failed(e) => tracing::warn!(
            error = %e,
            "could not restart with jemalloc's thp:always for the large token cache; running without"
        ),
        HugePages::On => {
            tracing::info!("the heap in huge pages (_RJEM_MALLOC_CONF thp:always)")
        }
        HugePages::Invalid(v) => tracing::warn!(
            value = %v,
            "JWTGATE_HUGE_PAGES is not on, off, 1 or 0: ignored, huge pages left off"
        ),
        HugePages::Off => {}
    }
    runtime().block_on(async move {
        // Traces (OTEL_EXPORTER_OTLP_ENDPOINT): the exports' connections run on this
        // runtime, off the workers'.
        match jwtgate::otel::start() {
            Ok(true) => tracing::info!("OpenTelemetry traces exported over OTLP/HTTP"),
            Ok(false) => {}
            Err(e) => return fail(e),
        }
        let running = match jwtgate::serve(cfg).await {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        wait_for_signal(&running).await;
        tracing::info!("shutting down: draining in-flight requests");
        running.shutdown().await;
        // The spans still queued go out before the process ends.
        let _ = tokio::task::spawn_blocking(jwtgate::otel::stop).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Serve until SIGTERM or SIGINT; SIGHUP reloads the config file.
async fn wait_for_signal(running: &jwtgate::Running) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        // Without signal handlers, serve until killed.
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => match running.reload().await {
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "reload refused; the running config stays"),
            },
        }
    }
}

fn check(path: PathBuf) -> ExitCode {
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    println!("{}: OK", path.display());
    println!(
        "listen: https={} http={} admin={} metrics={}",
        opt(cfg.listen.https),
        opt(cfg.listen.http),
        cfg.listen.admin,
        opt(cfg.listen.metrics)
    );
    for i in &cfg.issuers {
        let src = match &i.keys {
            config::KeySource::Jwks(u) => format!("jwks {u}"),
            config::KeySource::Static(k) => format!("{} static key(s)", k.len()),
            config::KeySource::Discovered => "jwks from discovery".to_string(),
        };
        println!("issuer {:?}: iss={:?} {src}", i.name, i.issuer);
    }
    if let Some(a) = &cfg.identity.assertion {
        println!(
            "identity assertions: {} (ES256, kid {}, {} s), public key at admin /.well-known/jwks.json",
            a.header,
            a.key.kid(),
            a.ttl.as_secs()
        );
    }
    if let Some(a) = &cfg.anomaly {
        println!(
            "anomaly: more than {} requests or {} networks per token in {} s -> {}",
            a.max_requests,
            a.max_networks,
            a.window.as_secs(),
            if a.revoke { "revoke" } else { "log" }
        );
    }
    println!(
        "{:<20} {:<24} {:<28} {:<9} {:<6} {:<20} {:<5} upstreams",
        "ROUTE", "HOST", "PATH_PREFIX", "AUTH", "STRIP", "RATE_LIMIT", "CORS"
    );
    for r in &cfg.routes {
        let ups: Vec<String> = r.upstreams.iter().map(|u| u.to_string()).collect();
        let limit = r.rate_limit.as_ref().map_or("-".into(), |l| {
            format!("{:?} {}/s burst {}", l.per, l.rps, l.burst).to_lowercase()
        });
        println!(
            "{:<20} {:<24} {:<28} {:<9} {:<6} {:<20} {:<5} {}",
            r.name,
            r.host.as_deref().unwrap_or("*"),
            r.path_prefix,
            format!("{:?}", r.auth).to_lowercase(),
            r.strip_prefix,
            limit,
            if r.cors.is_some() { "yes" } else { "-" },
            ups.join(", ")
        );
    }
    ExitCode::SUCCESS
}

fn healthcheck(path: PathBuf, live: bool, timeout: u64) -> ExitCode {
    use jwtgate::cli::health::{self, Probe};
    let admin = match health::admin_address(&path) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let probe = if live { Probe::Live } else { Probe::Ready };
    let timeout = Duration::from_secs(timeout.max(1));
    match runtime().block_on(health::check(admin, probe, timeout)) {
        Ok(line) => {
            println!("healthy: {line}");
            ExitCode::SUCCESS
        }
        Err(why) => fail(format!("unhealthy: {why}")),
    }
}

fn opt(a: Option<std::net::SocketAddr>) -> String {
    a.map_or("-".into(), |a| a.to_string())
}

#[allow(clippy::too_many_arguments)]
fn token(
    alg: String,
    key: Option<PathBuf>,
    secret_env: Option<String>,
    sub: String,
    kid: Option<String>,
    iss: Option<String>,
    aud: Option<String>,
    scope: Option<String>,
    ttl: u64,
    claims: Vec<String>,
    count: u64,
) -> ExitCode {
    use jwtgate::token::{mint, Mint, SigningKey};
    let Some(alg_v) = jwtgate::jwks::parse_alg(&alg) else {
        return fail(format!(
            "--alg {alg:?} is not one of {}",
            jwtgate::jwks::SUPPORTED_ALGS
        ));
    };
    let key = match (key, secret_env) {
        (Some(p), _) => match std::fs::read(&p) {
            Ok(b) => SigningKey::Pem(b),
            Err(e) => return fail(format!("--key {}: {e}", p.display())),
        },
        (None, Some(var)) => match std::env::var_os(&var) {
            Some(v) => SigningKey::Secret(std::os::unix::ffi::OsStringExt::into_vec(v)),
            None => {
                return fail(format!(
                    "--secret-env: environment variable {var} is not set"
                ))
            }
        },
        (None, None) => return fail("give --key FILE or --secret-env VAR"),
    };
    let mut kv = Vec::with_capacity(claims.len());
    for c in claims {
        match c.split_once('=') {
            Some((k, v)) if !k.is_empty() => kv.push((k.to_string(), v.to_string())),
            _ => return fail(format!("--claim {c:?} must be K=V")),
        }
    }
    let m = Mint {
        alg: alg_v,
        key,
        sub,
        kid,
        iss,
        aud,
        scope,
        ttl: Duration::from_secs(ttl),
        claims: kv,
    };
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for _ in 0..count {
        match mint(&m) {
            Ok(t) => {
                let _ = writeln!(out, "{t}");
            }
            Err(e) => return fail(e),
        }
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}

fn read_dpop_key(p: &std::path::Path) -> Result<jwtgate::token::DpopKey, String> {
    let pem = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    jwtgate::token::DpopKey::from_pem(&pem).map_err(|e| format!("{}: {e}", p.display()))
}

fn dpop_proof(
    key: &std::path::Path,
    method: &str,
    url: &str,
    token: Option<&str>,
    nonce: Option<&str>,
    count: u64,
) -> ExitCode {
    use std::io::Write;
    let k = match read_dpop_key(key) {
        Ok(k) => k,
        Err(e) => return fail(format!("--key {e}")),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for _ in 0..count {
        match k.proof(method, url, token, nonce) {
            Ok(p) => {
                let _ = writeln!(out, "{p}");
            }
            Err(e) => return fail(e),
        }
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}

/// What `jwtgate revoke` was asked to revoke.
struct Target {
    jti: Option<String>,
    exp: Option<i64>,
    sub: Option<String>,
    sid: Option<String>,
    token: Option<String>,
}

async fn revoke(
    config: Option<&std::path::Path>,
    target: Target,
    issuer: Option<String>,
    admin: Option<String>,
) -> ExitCode {
    use jwtgate::cli::revoke;
    let settings = match config.map(revoke::admin_settings).transpose() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let token_env = settings
        .as_ref()
        .map_or("JWTGATE_ADMIN_TOKEN", |s| s.token_env.as_str());
    let Some(admin_token) = std::env::var(token_env).ok().filter(|t| !t.is_empty()) else {
        return fail(format!("set {token_env} to the gateway's admin token"));
    };
    let admin = admin
        .or_else(|| settings.as_ref().map(|s| s.url.clone()))
        .unwrap_or_else(|| "http://127.0.0.1:9901".to_string());
    let mut issuer = issuer;
    let mut body = match target {
        Target {
            jti: Some(jti),
            exp: Some(exp),
            sub: None,
            sid: None,
            token: None,
        } => serde_json::json!({"jti": jti, "exp": exp}),
        Target {
            jti: None,
            exp: None,
            sub: Some(sub),
            sid: None,
            token: None,
        } => serde_json::json!({"sub": sub}),
        Target {
            jti: None,
            exp: None,
            sub: None,
            sid: Some(sid),
            token: None,
        } => serde_json::json!({"sid": sid}),
        Target {
            jti: None,
            exp: None,
            sub: None,
            sid: None,
            token: Some(t),
        } => {
            let t = if t == "-" {
                let mut s = String::new();
                if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
                    return fail(format!("--token -: cannot read stdin: {e}"));
                }
                s
            } else {
                t
            };
            let ids = match revoke::token_ids(&t) {
                Ok(ids) => ids,
                Err(e) => return fail(e),
            };
            // The token's iss names the issuer when the config says which entry it is.
            if issuer.is_none() {
                issuer = settings.as_ref().and_then(|s| {
                    s.issuers
                        .iter()
                        .find(|(_, iss)| Some(iss) == ids.iss.as_ref())
                        .map(|(name, _)| name.clone())
                });
            }
            serde_json::json!({"jti": ids.jti, "exp": ids.exp})
        }
        _ => return fail("give --jti ID --exp UNIX, --sub SUB, --sid SID or --token JWT"),
    };
    if let Some(i) = issuer {
        body["issuer"] = i.into();
    }
    match revoke::post(&admin, &admin_token, &body).await {
        Ok(()) => {
            println!("revoked");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
