//! The `synchspeed` binary: parse the command line; serve (load settings, start), check a
//! configuration, or run a client command (`cli`). Nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use synchspeed::config::{ConfigError, Settings};
use synchspeed::startup::{Application, LeadershipLost, StopSignals};
use synchspeed::telemetry;

/// Returns what a burst of connections freed to the system (Cargo.toml says why).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bad usage (sysexits.h EX_USAGE): an argument, or a configuration, synchspeed refuses.
const EXIT_USAGE: u8 = 64;
/// A leader that lost its lease (sysexits.h EX_TEMPFAIL): start it again, it follows.
const EXIT_LEADERSHIP_LOST: u8 = 75;

#[derive(Parser)]
#[command(
    name = "synchspeed",
    version,
    about = "Lossless offline and online for gateway-fronted microservices",
    after_help = synchspeed::cli::EXIT_CODES,
    after_long_help = synchspeed::cli::EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// A TOML configuration file, layered over the embedded defaults (config/default.toml);
        /// without it the embedded demo (config/demo.toml) is.
        #[arg(long, env = "SYNCHSPEED_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and print what the layers produce, secrets redacted (exit 0
    /// when valid, 64 when not).
    CheckConfig {
        #[arg(long, env = "SYNCHSPEED_CONFIG")]
        config: Option<PathBuf>,
    },
    #[command(flatten)]
    Client(synchspeed::cli::ClientCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version are no errors; anything else is bad usage (64).
            let usage = error.use_stderr();
            let _ = error.print();
            if usage && wants_json() {
                // Scripts that asked for JSON parse every outcome, bad usage included.
                let rendered = error.render().to_string();
                let message = rendered.lines().next().unwrap_or("bad usage").trim();
                let message = message.strip_prefix("error: ").unwrap_or(message);
                println!(
                    "{}",
                    serde_json::json!({"error": {"code": "bad_usage", "message": message}})
                );
            }
            return if usage {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // Freed pages go back to the system on jemalloc's own thread, also while the service is
    // idle (without it they are purged only as later allocations pass by).
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    let config = match cli.command {
        Command::Serve { config } => config,
        Command::CheckConfig { config } => return check_config(config.as_deref()),
        Command::Client(command) => return synchspeed::cli::run(command).await,
    };
    let settings = match Settings::load(config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => return invalid_configuration(&error),
    };
    telemetry::init_tracing(&settings.log);
    let signals = match StopSignals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("synchspeed: cannot listen for stop signals: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match Application::build(settings).await {
        Ok(app) => app.run_until_stopped(signals).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<LeadershipLost>() => {
            eprintln!("synchspeed: {error}");
            ExitCode::from(EXIT_LEADERSHIP_LOST)
        }
        Err(error) => {
            tracing::error!("synchspeed failed: {error:#}");
            eprintln!("synchspeed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the command line asks for `--output json` (read by hand: it did not parse).
fn wants_json() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|arg| arg == "--output=json")
        || args
            .windows(2)
            .any(|pair| pair[0] == "--output" && pair[1] == "json")
}

fn invalid_configuration(error: &ConfigError) -> ExitCode {
    eprintln!("synchspeed: invalid configuration: {error}");
    ExitCode::from(EXIT_USAGE)
}

/// Prints the effective configuration (stdout, TOML) and says it is valid (stderr).
fn check_config(path: Option<&std::path::Path>) -> ExitCode {
    match Settings::effective_toml(path) {
        Ok(effective) => {
            print!("{effective}");
            eprintln!("synchspeed: configuration is valid");
            ExitCode::SUCCESS
        }
        Err(error) => invalid_configuration(&error),
    }
}
