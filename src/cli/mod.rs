//! The client, in the same binary as the server: `synchspeed offline IP`, `online`, `batch`,
//! `status`, `holds`, `ops`, `watch`. It speaks the public API only, so it does exactly
//! what curl would, with the loop around `wait`, the progress and the exit codes done once.
//!
//! * [`client`]: the server, the token from `SYNCHSPEED_TOKEN`, retries with one key;
//! * [`follow`]: an operation followed to its settle by its event stream;
//! * [`display`]: live progress on a terminal, plain lines elsewhere, or the JSON;
//! * [`exit`]: the exit codes a script branches on.

mod client;
mod display;
mod exit;
mod follow;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use client::{Client, Failure, error_of};
pub use display::Output;
use display::{Display, hold_lines, instance_lines, operation_lines, status_lines, summary};
use exit::Exit;
pub use exit::HELP as EXIT_CODES;

/// Where the service is and how to print: every client command takes these.
#[derive(Debug, clap::Args)]
pub struct Connection {
    /// The service's base URL.
    #[arg(long, env = "SYNCHSPEED_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// `text` for people (live progress on a terminal), `json` for programs: the operation
    /// (or the read) exactly as the API returned it.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    /// How long one call may take (a read, or the call that starts an operation), even
    /// against a server that accepts the connection and never answers; past it, exit 1.
    #[arg(
        long,
        env = "SYNCHSPEED_REQUEST_TIMEOUT",
        default_value = "10s",
        value_parser = positive_duration
    )]
    pub request_timeout: Duration,
}

/// A duration longer than zero (`0s` would fail every call at once).
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err("must be longer than zero".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The options of an offline or online.
#[derive(Debug, clap::Args)]
pub struct InstanceArgs {
    /// The instance's IP (IPv4 or IPv6).
    pub ip: String,
    /// Only the instance on this port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only instances of this app.
    #[arg(long)]
    pub app: Option<String>,
    /// Free text for the audit trail.
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub connection: Connection,
}

/// How a change runs: waited for or not, planned only, forced, under which key.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Wait until every gateway node answered (live progress on a terminal).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: how long to wait (`20s`, `2m`); past it, exit 3.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Resolve and show the plan (instances, groups, nodes); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Offline of instances already held: do it again; past drain.min_up: do it anyway.
    #[arg(long)]
    pub force: bool,
    /// A key of the caller's (a deploy id): the same key with the same arguments is the
    /// same operation, however often it is sent. Without it, each run is a new operation
    /// (its retries within the run are not).
    #[arg(long)]
    pub key: Option<String>,
}

/// The client's commands.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Take every instance on an IP out of service, then tell every gateway node.
    #[command(after_help = exit::HELP)]
    Offline(InstanceArgs),
    /// Bring the instances on an IP back, then tell every gateway node.
    #[command(after_help = exit::HELP)]
    Online(InstanceArgs),
    /// A batch: `{"action":"offline","targets":[{"ip":"10.0.0.5"}],"reason":"..."}` from a
    /// file, or from standard input with `-`.
    #[command(after_help = exit::HELP)]
    Batch {
        file: PathBuf,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        connection: Connection,
    },
    /// What the registry and synchspeed know of an IP.
    #[command(after_help = exit::HELP)]
    Status {
        ip: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// The instances synchspeed holds out of service now.
    #[command(after_help = exit::HELP)]
    Holds {
        #[command(flatten)]
        connection: Connection,
    },
    /// Recent operations, newest first (the audit trail).
    #[command(after_help = exit::HELP)]
    Ops {
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        app: Option<String>,
        /// planned, in_progress, succeeded, partial or failed.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only operations older than this one: the previous page's last (the API's `next`).
        #[arg(long)]
        before: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Follow an operation until it settles (live progress on a terminal).
    #[command(after_help = exit::HELP)]
    Watch {
        id: String,
        /// How long to follow it; past it, exit 3.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        connection: Connection,
    },
}

impl ClientCommand {
    fn connection(&self) -> &Connection {
        match self {
            Self::Offline(args) | Self::Online(args) => &args.connection,
            Self::Batch { connection, .. }
            | Self::Status { connection, .. }
            | Self::Holds { connection }
            | Self::Ops { connection, .. }
            | Self::Watch { connection, .. } => connection,
        }
    }
}

/// Runs one client command to its exit code.
pub async fn run(command: ClientCommand) -> ExitCode {
    let output = command.connection().output;
    let token = std::env::var("SYNCHSPEED_TOKEN")
        .ok()
        .filter(|token| !token.is_empty())
        .map(SecretString::from);
    let connection = command.connection();
    let result = match Client::new(&connection.server, token, connection.request_timeout) {
        Ok(client) => dispatch(&client, command).await,
        Err(failure) => Err(failure),
    };
    match result {
        Ok(exit) => exit.code(),
        Err(failure) => {
            match output {
                // Standard output is JSON whatever happened: scripts parse every outcome.
                Output::Json => print_json(&failure.to_json()),
                Output::Text => {
                    if let Some(operation) = &failure.operation {
                        print_operation(output, operation);
                    }
                }
            }
            eprintln!("synchspeed: {}", failure.to_text());
            failure.exit.code()
        }
    }
}

async fn dispatch(client: &Client, command: ClientCommand) -> Result<Exit, Failure> {
    match command {
        ClientCommand::Offline(args) => change(client, "offline", args).await,
        ClientCommand::Online(args) => change(client, "online", args).await,
        ClientCommand::Batch {
            file,
            run,
            connection,
        } => batch(client, &file, &run, connection.output).await,
        ClientCommand::Status { ip, connection } => {
            let view = client
                .expect_ok(Method::GET, &format!("/api/v1/instances/{ip}"), &[])
                .await?;
            print_read(connection.output, &view, status_lines);
            Ok(Exit::Ok)
        }
        ClientCommand::Holds { connection } => {
            let held = client
                .expect_ok(Method::GET, "/api/v1/offline", &[])
                .await?;
            print_read(connection.output, &held, hold_lines);
            Ok(Exit::Ok)
        }
        ClientCommand::Ops {
            ip,
            app,
            state,
            limit,
            before,
            connection,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(before.map(|before| ("before", before)));
            query.extend(ip.map(|ip| ("ip", ip)));
            query.extend(app.map(|app| ("app", app)));
            query.extend(state.map(|state| ("state", state)));
            let list = client
                .expect_ok(Method::GET, "/api/v1/operations", &query)
                .await?;
            print_read(connection.output, &list, operation_lines);
            Ok(Exit::Ok)
        }
        ClientCommand::Watch {
            id,
            timeout,
            connection,
        } => {
            let operation = watch(client, &id, None, timeout, connection.output).await?;
            Ok(Exit::of_state(&operation))
        }
    }
}

/// The key a change is sent under: derived from `--key` and what is asked, so that the
/// same deploy id may drain several IPs, each once; random without `--key`.
fn idempotency_key(given: Option<&str>, request: &Value) -> String {
    match given {
        Some(key) => {
            let mut digest = Sha256::new();
            digest.update(key.as_bytes());
            digest.update([0]);
            digest.update(request.to_string().as_bytes());
            format!("cli-{}", hex::encode(&digest.finalize()[..16]))
        }
        None => format!("cli-{}", ulid::Ulid::new()),
    }
}

async fn change(client: &Client, action: &str, args: InstanceArgs) -> Result<Exit, Failure> {
    let mut query: Vec<(&str, String)> = Vec::new();
    query.extend(args.port.map(|port| ("port", port.to_string())));
    query.extend(args.app.clone().map(|app| ("app", app)));
    query.extend(args.reason.clone().map(|reason| ("reason", reason)));
    if args.run.dry_run {
        query.push(("dry_run", "true".into()));
    }
    if args.run.force {
        query.push(("force", "true".into()));
    }
    let what = json!({"action": action, "ip": args.ip, "port": args.port, "app": args.app,
        "reason": args.reason, "force": args.run.force});
    let key = (!args.run.dry_run).then(|| idempotency_key(args.run.key.as_deref(), &what));
    let path = format!("/api/v1/instances/{}/{action}", args.ip);
    let answer = client
        .call(Method::POST, &path, &query, key.as_deref(), None)
        .await?;
    settle(client, answer, &args.run, args.connection.output).await
}

async fn batch(
    client: &Client,
    file: &std::path::Path,
    run: &RunArgs,
    output: Output,
) -> Result<Exit, Failure> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| {
        Failure::new(
            Exit::Usage,
            "bad_usage",
            format!("cannot read {}: {e}", file.display()),
        )
    })?;
    let request: Value = serde_json::from_str(&text).map_err(|e| {
        Failure::new(
            Exit::Usage,
            "bad_usage",
            format!("{} is not JSON: {e}", file.display()),
        )
    })?;
    let mut query: Vec<(&str, String)> = Vec::new();
    if run.dry_run {
        query.push(("dry_run", "true".into()));
    }
    if run.force {
        query.push(("force", "true".into()));
    }
    let key = (!run.dry_run).then(|| idempotency_key(run.key.as_deref(), &request));
    let answer = client
        .call(
            Method::POST,
            "/api/v1/operations",
            &query,
            key.as_deref(),
            Some(&request),
        )
        .await?;
    settle(client, answer, run, output).await
}

/// After a change was sent: the answer shown, the fan-out followed with `--wait`.
async fn settle(
    client: &Client,
    answer: client::Answer,
    run: &RunArgs,
    output: Output,
) -> Result<Exit, Failure> {
    if !answer.status.is_success() {
        return Err(error_of(&answer));
    }
    let operation = answer.body;
    if run.dry_run || !run.wait || operation["state"] != "in_progress" {
        print_operation(output, &operation);
        return Ok(if operation["state"] == "in_progress" {
            Exit::Ok
        } else {
            Exit::of_state(&operation)
        });
    }
    let id = operation["id"].as_str().unwrap_or_default().to_owned();
    let settled = watch(client, &id, Some(operation), run.timeout, output).await?;
    Ok(Exit::of_state(&settled))
}

/// Follows `id` to its settle on the screen, then prints it. `known`: the operation as the
/// call that started it answered, what a timeout shows when nothing later was read.
async fn watch(
    client: &Client,
    id: &str,
    known: Option<Value>,
    timeout: Duration,
    output: Output,
) -> Result<Value, Failure> {
    let mut display = Display::new(output, std::io::stdout().is_terminal());
    let deadline = Instant::now() + timeout;
    let operation = follow::follow(client, id, known, deadline, &mut display).await?;
    display.finish(&operation);
    match output {
        Output::Json => print_json(&operation),
        Output::Text => {
            if operation["state"] == "in_progress" {
                eprintln!(
                    "synchspeed: timed out after {}; the operation goes on",
                    humantime::format_duration(timeout)
                );
            }
            println!("{}", summary(&display::printable_json(&operation)));
        }
    }
    Ok(operation)
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// An operation shown whole: its instances, its nodes, its summary.
fn print_operation(output: Output, operation: &Value) {
    match output {
        Output::Json => print_json(operation),
        Output::Text => {
            let operation = &display::printable_json(operation);
            for line in instance_lines(operation) {
                println!("{line}");
            }
            for node in operation["gateways"].as_array().into_iter().flatten() {
                println!("  {}", display::node_line(node));
            }
            for warning in operation["warnings"].as_array().into_iter().flatten() {
                println!("warning: {}", warning.as_str().unwrap_or_default());
            }
            println!("{}", summary(operation));
        }
    }
}

fn print_read(output: Output, read: &Value, lines: fn(&Value) -> Vec<String>) {
    match output {
        Output::Json => print_json(read),
        Output::Text => {
            for line in lines(&display::printable_json(read)) {
                println!("{line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_key_names_one_request_and_no_key_names_each_run() {
        let offline = json!({"action": "offline", "ip": "10.0.0.5"});
        let other_ip = json!({"action": "offline", "ip": "10.0.0.6"});
        let key = |request: &Value| idempotency_key(Some("deploy-42"), request);
        assert_eq!(key(&offline), key(&offline));
        assert_ne!(key(&offline), key(&other_ip));
        assert_ne!(
            idempotency_key(None, &offline),
            idempotency_key(None, &offline)
        );
        assert!(key(&offline).len() <= 255 && key(&offline).is_ascii());
    }
}
