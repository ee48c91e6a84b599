//! The client against servers that are not synchspeed or no longer behave: one that accepts
//! and never answers, one whose event stream stops, one that redirects elsewhere, an HTML
//! 500, a closed port, and answers carrying terminal escapes. The client runs in every pod's
//! `preStop`: each of these must end in a bounded time with exit 1 (or 3 for a wait that
//! timed out) and a message, JSON on standard output with `--output json`, and never a
//! password or the token where it does not belong.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Past this a client run is killed and the test fails: the bound under test is seconds, this
/// only keeps a regression from hanging the suite.
const RUN_GUARD: Duration = Duration::from_secs(120);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The binary as a client of `url`, killed (and the test failed) if it does not return.
async fn client(url: &str, args: &[&str]) -> Run {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_synchspeed"));
        command.args(&args);
        for (key, _) in std::env::vars() {
            if key.starts_with("SYNCHSPEED") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .env("SYNCHSPEED_URL", &url)
            .env("SYNCHSPEED_TOKEN", "hostile-test-token-0123456789")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > RUN_GUARD {
                child.kill().unwrap();
                panic!("synchspeed {args:?} did not return within {RUN_GUARD:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

fn json_of(run: &Run) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\n{}", run.stdout, run.stderr))
}

/// A server that accepts every connection and never writes a byte.
async fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    format!("http://{address}")
}

/// A server answering with `app` on its own loopback address.
async fn serve(ip: &str, app: Router) -> String {
    let listener = TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

#[tokio::test]
async fn every_call_to_a_server_that_never_answers_gives_up_with_exit_1() {
    let url = silent_server().await;
    let calls: [&[&str]; 5] = [
        &["offline", "10.0.0.5", "--wait", "--timeout", "3s"],
        &["offline", "10.0.0.5"],
        &["holds"],
        &["status", "10.0.0.5"],
        &["watch", "op_01JD3T0Q9K6N5ZV7X4B2C8M1EA", "--timeout", "2s"],
    ];
    for call in calls {
        let mut args = call.to_vec();
        args.extend(["--request-timeout", "1s"]);
        let run = client(&url, &args).await;
        assert_eq!(run.code, 1, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stderr
                .contains("did not answer within 1s (--request-timeout)"),
            "{args:?}: {}",
            run.stderr
        );
    }
    // Scripts parse every outcome: the error is JSON on standard output.
    let run = client(
        &url,
        &["holds", "--request-timeout", "1s", "--output", "json"],
    )
    .await;
    assert_eq!(run.code, 1);
    let error = json_of(&run);
    assert_eq!(error["error"]["code"], "timeout", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--request-timeout")
    );
}

/// The operation a fake server says it started, still running.
fn in_progress() -> Value {
    json!({"id": "op_01JD3T0Q9K6N5ZV7X4B2C8M1EA", "action": "offline", "state": "in_progress",
        "target": {"ip": "10.0.0.5", "port": null, "app": null},
        "instances": [], "gateways": [{"group": "GW", "node": "10.2.0.11:9000",
        "state": "pending", "attempts": 0, "latencyMs": null, "error": null}]})
}

/// A server that starts the operation, opens its event stream with a snapshot and then says
/// nothing more, and never answers a read of the operation.
async fn server_whose_stream_stops() -> String {
    let stalled = || async {
        let snapshot = format!(
            "event: snapshot\ndata: {}\n\n",
            json!({"operation": in_progress()})
        );
        let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(snapshot) })
            .chain(futures::stream::pending());
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(axum::body::Body::from_stream(stream))
            .unwrap()
    };
    let app = Router::new()
        .route(
            "/api/v1/instances/{ip}/offline",
            axum::routing::post(|| async { (StatusCode::ACCEPTED, axum::Json(in_progress())) }),
        )
        .route(
            "/api/v1/operations/{id}/events",
            axum::routing::get(stalled),
        )
        .route(
            "/api/v1/operations/{id}",
            axum::routing::get(futures::future::pending::<&'static str>),
        );
    serve("127.0.0.1", app).await
}

#[tokio::test]
async fn a_wait_whose_stream_stops_sending_ends_at_its_timeout_with_exit_3() {
    let url = server_whose_stream_stops().await;
    let run = client(
        &url,
        &[
            "offline",
            "10.0.0.5",
            "--wait",
            "--timeout",
            "2s",
            "--request-timeout",
            "1s",
        ],
    )
    .await;
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("timed out after 2s"), "{}", run.stderr);
    let run = client(
        &url,
        &[
            "offline",
            "10.0.0.5",
            "--wait",
            "--timeout",
            "2s",
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, 3);
    assert_eq!(json_of(&run)["state"], "in_progress");
}

/// Requests that reached a server, with their `Authorization` header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

async fn recording_server(ip: &str, seen: Seen) -> String {
    let app = Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap| {
        let seen = Arc::clone(&seen);
        async move {
            let token = headers
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            seen.lock().unwrap().push((uri.to_string(), token));
            axum::Json(json!({}))
        }
    });
    serve(ip, app).await
}

async fn redirecting_server(status: StatusCode, to: String) -> String {
    let app = Router::new().fallback(move |uri: axum::http::Uri| {
        let to = format!("{to}{uri}");
        async move { (status, [(header::LOCATION, to)]).into_response() }
    });
    serve("127.0.0.1", app).await
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_not_followed_and_the_token_goes_nowhere_else() {
    let seen: Seen = Arc::default();
    // Another host, and the same host on another port: both another origin.
    let elsewhere = [
        recording_server("127.0.0.2", Arc::clone(&seen)).await,
        recording_server("127.0.0.1", Arc::clone(&seen)).await,
    ];
    for (status, target) in [
        (StatusCode::FOUND, &elsewhere[0]),
        (StatusCode::TEMPORARY_REDIRECT, &elsewhere[1]),
    ] {
        let url = redirecting_server(status, target.clone()).await;
        let run = client(&url, &["holds"]).await;
        assert_eq!(run.code, 1, "{status}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stderr
                .contains(&format!("pointing to {target}/api/v1/offline")),
            "{status}: {}",
            run.stderr
        );
        assert!(run.stderr.contains("another origin"), "{}", run.stderr);
        let run = client(&url, &["offline", "10.0.0.5", "--output", "json"]).await;
        assert_eq!(run.code, 1);
        assert_eq!(json_of(&run)["error"]["code"], "redirected");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a redirect was followed: {:?}",
        seen.lock().unwrap()
    );
}

#[tokio::test]
async fn an_html_500_and_a_closed_port_are_exit_1_with_what_happened_and_no_password() {
    let app = Router::new().fallback(|| async {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>\u{1b}[31mWhitelabel Error Page</body></html>",
        )
    });
    let html = serve("127.0.0.1", app).await;
    let run = client(&html, &["status", "10.0.0.5"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("answered 500 Internal Server Error with no JSON"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Whitelabel"), "{}", run.stderr);
    assert!(
        !run.stderr.contains('\u{1b}'),
        "an escape reached the terminal"
    );
    let run = client(&html, &["status", "10.0.0.5", "--output", "json"]).await;
    assert_eq!(json_of(&run)["error"]["code"], "not_json");

    // A closed port, under a URL with credentials in it.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = format!("http://deployer:hunter2-secret@{closed}");
    let run = client(&url, &["offline", "10.0.0.5"]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("cannot reach synchspeed"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    assert!(run.stderr.contains("deployer:***@"), "{}", run.stderr);
    let run = client(&url, &["offline", "10.0.0.5", "--output", "json"]).await;
    assert_eq!(json_of(&run)["error"]["code"], "unreachable");
    assert!(!run.stdout.contains("hunter2"), "{}", run.stdout);
}

#[tokio::test]
async fn terminal_escapes_from_the_server_are_shown_escaped_and_json_stays_exact() {
    let hostile = "10.0.0.5:order\u{1b}]0;PWNED\u{7}\u{1b}[31m";
    let holds = json!({"instances": [{"app": "ORDER-SERVICE", "instanceId": hostile,
        "ip": "10.0.0.5", "port": 8080, "since": "2026-12-01T00:00:00Z",
        "operationId": "op_01JD3T0Q9K6N5ZV7X4B2C8M1EA"}]});
    let body = holds.clone();
    let app = Router::new().route(
        "/api/v1/offline",
        axum::routing::get(move || async move { axum::Json(body) }),
    );
    let url = serve("127.0.0.1", app).await;
    let text = client(&url, &["holds"]).await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        !text.stdout.contains('\u{1b}') && !text.stdout.contains('\u{7}'),
        "{:?}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains("10.0.0.5:order\\u{1b}]0;PWNED\\u{7}\\u{1b}[31m"),
        "{:?}",
        text.stdout
    );
    let exact = client(&url, &["holds", "--output", "json"]).await;
    assert_eq!(json_of(&exact), holds);
}

#[tokio::test]
async fn bad_usage_with_json_output_is_json_too() {
    let run = client(
        "http://127.0.0.1:9",
        &["holds", "--output", "json", "--bogus"],
    )
    .await;
    assert_eq!(run.code, 64, "{}{}", run.stdout, run.stderr);
    let error = json_of(&run);
    assert_eq!(error["error"]["code"], "bad_usage", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--bogus"),
        "{error}"
    );
}
