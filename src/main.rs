//! Command line: `gatehouse -c FILE` runs, `-t` validates, `-d` daemonizes, `-u` takes over
//! the sockets of a running instance, `gatehouse demo` runs the built-in demo.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use gatehouse::server::{self, RunOptions};
use gatehouse::{demo, Shared};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "gatehouse",
    version = gatehouse::observe::build_info::LONG_VERSION,
    about = "Edge API gateway on Pingora"
)]
struct Cli {
    /// Config file
    #[arg(
        short = 'c',
        long = "conf",
        default_value = "conf/gatehouse.yaml",
        global = true
    )]
    conf: PathBuf,
    /// Validate the config, print every error and exit (0 valid, 1 invalid)
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background (writes server.pid_file)
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Take over the listening sockets of a running instance (graceful binary upgrade)
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an example config against built-in demo upstreams
    Demo,
    /// Convert another gateway's configuration into gatehouse YAML
    #[command(subcommand)]
    Import(ImportSource),
    /// Show which route, plugins, limits, upstream and target a request would get, from the
    /// config file (-c), without sending anything
    #[command(
        after_help = "Example:\n  gatehouse explain -c gatehouse.yaml 'GET https://api.example.com/v1/orders/7' -H 'X-API-Key: ...' --json"
    )]
    Explain {
        /// The request: 'METHOD URL', URL absolute (https://host/path?q) or a path (/path?q)
        request: String,
        /// A request header, 'Name: value' (repeatable); credential values are masked in the output
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The client IP, for ip-restriction and per-IP rate limits
        #[arg(long = "client-ip")]
        client_ip: Option<String>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ImportSource {
    /// Convert a Kong declarative config (_format_version 1.1, 2.1 or 3.0) into gatehouse
    /// YAML. Everything that cannot be carried over is named in a `# kong:` comment in the
    /// output and in a `warning:` line on stderr. Exit 0 when converted (with or without
    /// warnings), 1 when the file cannot be read.
    #[command(
        after_help = "Example:\n  gatehouse import kong kong.yml -o gatehouse.yaml\n  gatehouse -t -c gatehouse.yaml"
    )]
    Kong {
        /// The Kong declarative config (kong.yml, or a decK dump)
        file: PathBuf,
        /// Write the gatehouse YAML here instead of stdout
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
}

/// The configuration at `conf`, or `None` once every error (each with its YAML path and
/// line) is on stderr.
fn load_or_report(conf: &std::path::Path) -> Option<std::sync::Arc<Shared>> {
    match Shared::load(conf.to_path_buf()) {
        Ok(s) => Some(s),
        Err(errs) => {
            eprintln!("{}: invalid configuration", conf.display());
            for e in &errs.0 {
                eprintln!("{e}");
            }
            None
        }
    }
}

/// `gatehouse explain -c FILE 'METHOD URL' [-H ...] [--json]`: exit 0 with the explanation,
/// 1 when the config is invalid or the request cannot be read.
fn run_explain(
    conf: &std::path::Path,
    request: &str,
    headers: &[String],
    client_ip: Option<String>,
    as_json: bool,
) -> ExitCode {
    use gatehouse::explain;
    let (method, url) = match explain::parse_request_line(request) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("gatehouse explain: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut hs = Vec::new();
    for h in headers {
        match explain::parse_header(h) {
            Ok(x) => hs.push(x),
            Err(e) => {
                eprintln!("gatehouse explain: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let conf = std::path::absolute(conf).unwrap_or_else(|_| conf.to_path_buf());
    let Some(shared) = load_or_report(&conf) else {
        return ExitCode::FAILURE;
    };
    let ask = explain::Ask {
        method,
        url,
        headers: hs,
        client_ip,
    };
    let v = explain::explain(&shared.snapshot(), &ask, false);
    if v.get("error").is_some() {
        eprintln!(
            "gatehouse explain: {}",
            v["message"].as_str().unwrap_or("bad request")
        );
        return ExitCode::FAILURE;
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", explain::render_text(&v));
    }
    ExitCode::SUCCESS
}

/// `gatehouse import kong FILE [-o OUT]`.
fn run_import_kong(file: &std::path::Path, output: Option<&std::path::Path>) -> ExitCode {
    let text = match std::fs::read(file) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            eprintln!("gatehouse import kong: cannot read {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let conv = match gatehouse::import::kong::convert(&text, &name) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gatehouse import kong: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    for w in &conv.warnings {
        eprintln!("warning: {w}");
    }
    match output {
        Some(out) => {
            if let Err(e) = std::fs::write(out, &conv.yaml) {
                eprintln!("gatehouse import kong: cannot write {}: {e}", out.display());
                return ExitCode::FAILURE;
            }
            eprintln!(
                "{}: written from {} ({} warnings); check it with: gatehouse -t -c {}",
                out.display(),
                file.display(),
                conv.warnings.len(),
                out.display()
            );
        }
        None => print!("{}", conv.yaml),
    }
    ExitCode::SUCCESS
}

/// The log filter: `GATEHOUSE_LOG` (default `info`), with rustls at `error` unless it names
/// rustls itself. rustls warns on every handshake about client behaviour it already handles
/// (an IP address sent as SNI, as wrk and some monitoring probes do): any client could
/// fill the log with them.
fn log_filter(spec: Option<String>) -> tracing_subscriber::EnvFilter {
    let spec = spec.unwrap_or_else(|| "info".to_string());
    let spec = if spec.contains("rustls") {
        spec
    } else {
        format!("{spec},rustls=error")
    };
    tracing_subscriber::EnvFilter::try_new(spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"))
}

fn init_logging() {
    let filter = log_filter(std::env::var("GATEHOUSE_LOG").ok());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    if let Some(Command::Import(ImportSource::Kong { file, output })) = &cli.command {
        return run_import_kong(file, output.as_deref());
    }
    if let Some(Command::Explain {
        request,
        headers,
        client_ip,
        json,
    }) = &cli.command
    {
        return run_explain(&cli.conf, request, headers, client_ip.clone(), *json);
    }
    let conf_given = std::env::args().any(|a| a == "-c" || a.starts_with("--conf"));
    let mut conf = cli.conf.clone();
    let is_demo = matches!(cli.command, Some(Command::Demo));
    if is_demo && !conf_given {
        // The demo config is compiled in; write it out so SIGHUP / POST /reload work.
        let dir = std::env::temp_dir().join(format!("gatehouse-demo-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(dir.join("demo.yaml"), demo::DEMO_CONFIG))
        {
            eprintln!("cannot write the demo config: {e}");
            return ExitCode::FAILURE;
        }
        conf = dir.join("demo.yaml");
    }

    // Absolute, because `-d` changes the working directory to `/` and reloads and upgrades
    // re-read this path later.
    if let Ok(abs) = std::path::absolute(&conf) {
        conf = abs;
    }
    if is_demo {
        // The demo's HTTPS upstream: its CA goes next to the config, where `tls.ca` reads it.
        let dir = conf.parent().unwrap_or(std::path::Path::new("."));
        if let Err(e) = demo::write_pki(dir) {
            eprintln!("cannot write the demo CA: {e}");
            return ExitCode::FAILURE;
        }
    }
    let Some(shared) = load_or_report(&conf) else {
        return ExitCode::FAILURE;
    };
    // The files the process creates (pid file, upgrade socket, error log) need a writable
    // directory: found now, with the line, rather than when an upgrade fails.
    let text = std::fs::read_to_string(&conf).unwrap_or_default();
    if let Err(errs) =
        gatehouse::config::compile::check_process_files(&text, &shared.snapshot().server)
    {
        if cli.test {
            eprintln!("{}: invalid configuration", conf.display());
        }
        for e in &errs.0 {
            match (cli.test, cli.upgrade) {
                (true, _) => eprintln!("{e}"),
                (false, true) => eprintln!("cannot upgrade: {e}"),
                (false, false) => eprintln!("cannot start: {e}"),
            }
        }
        return ExitCode::FAILURE;
    }
    if cli.test {
        let rt = shared.snapshot();
        println!(
            "{}: configuration is valid ({} routes, {} upstreams, hash {})",
            conf.display(),
            rt.routes.len(),
            rt.upstreams.len(),
            rt.hash
        );
        return ExitCode::SUCCESS;
    }
    if is_demo {
        if let Err(e) = demo::start_backends() {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
        let rt = shared.snapshot();
        let listen = rt
            .server
            .listen
            .first()
            .map(|a| a.to_string())
            .unwrap_or_default();
        println!("{}", demo::banner(&listen, &rt.admin.listen.to_string()));
    }
    let opts = RunOptions {
        daemon: cli.daemon,
        upgrade: cli.upgrade,
    };
    if cli.upgrade {
        if let Err(e) = server::check_takeover(&shared.snapshot()) {
            eprintln!("cannot upgrade: {e}");
            return ExitCode::FAILURE;
        }
    } else if let Err(e) = server::check_listeners(&shared.snapshot()) {
        eprintln!("cannot start: {e}");
        return ExitCode::FAILURE;
    }
    if cli.daemon {
        // Said on the terminal before it is left behind.
        let rt = shared.snapshot();
        let journal = gatehouse::process::stderr_is_journal();
        if rt.server.error_log.is_none() && !journal {
            eprintln!("gatehouse -d: server.error_log is not set: the process log is discarded");
        }
        if rt.server.access_log == gatehouse::model::AccessLog::Stdout && !journal {
            eprintln!(
                "gatehouse -d: server.access_log is stdout, which -d discards; set a file path"
            );
        }
    }
    // Read once, like grace_period: the drain step on SIGTERM (gatehouse::probe).
    let drain_delay = shared.snapshot().server.drain_delay;
    match server::build(shared, opts) {
        Ok(server) => gatehouse::probe::run_forever(server, drain_delay),
        Err(e) => {
            eprintln!("cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}
