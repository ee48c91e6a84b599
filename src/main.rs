//! The `synchspeed` binary: parse the command line, load settings, start. Nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use synchspeed::config::Settings;
use synchspeed::startup::{Application, StopSignals};
use synchspeed::telemetry;

/// sysexits.h EX_CONFIG: the configuration is unusable.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "synchspeed",
    version,
    about = "Lossless offline and online for gateway-fronted microservices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// A TOML configuration file; without it the embedded config/default.toml is used.
        #[arg(long, env = "SYNCHSPEED_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and exit (0 when valid, 64 when not).
    CheckConfig {
        #[arg(long, env = "SYNCHSPEED_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, serve) = match cli.command {
        Command::Serve { config } => (config, true),
        Command::CheckConfig { config } => (config, false),
    };
    let settings = match Settings::load(config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("synchspeed: invalid configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if !serve {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
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
        Err(error) => {
            tracing::error!("synchspeed failed: {error:#}");
            eprintln!("synchspeed: {error:#}");
            ExitCode::FAILURE
        }
    }
}
