//! The service under hostile connections: a slowloris host, a peer that may not call, a body
//! that never finishes, a body declared too large. Every hostile peer here comes from another
//! loopback address (127.0.0.2, 127.0.0.3) than the deploy platform (127.0.0.1).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::helpers::{TestApp, TestConfig, eventually};
use crate::support::eureka::EurekaDouble;

fn addr(app: &TestApp) -> SocketAddr {
    app.address.trim_start_matches("http://").parse().unwrap()
}

/// A connection from `source` (a loopback address of this machine).
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Everything the server writes until it closes the connection (bounded: 15 s).
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buffer[..n]),
            Err(_) => panic!(
                "the server kept the connection open: {}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn hardened(eureka: &EurekaDouble) -> TestConfig {
    TestConfig::eureka(&[eureka.url()]).server(
        "header_read_timeout = \"1s\"\nbody_read_timeout = \"1s\"\n\
         max_connections = 60\nmax_connections_per_ip = 20",
    )
}

#[tokio::test]
async fn a_slowloris_host_neither_locks_out_the_deploy_platform_nor_keeps_its_connections() {
    let eureka = EurekaDouble::with_order_service().await;
    let app = TestApp::spawn(hardened(&eureka)).await;
    let target = addr(&app);

    // 100 connections from one host, each with a request head that never ends.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut stream = connect_from("127.0.0.2", target).await;
        let _ = stream
            .write_all(
                b"POST /api/v1/instances/10.0.0.5/offline HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a",
            )
            .await;
        slow.push(stream);
    }

    // Meanwhile the deploy platform's offline goes through, and the probes answer.
    let response = app
        .post("/api/v1/instances/10.0.0.5/offline?wait=true")
        .await;
    assert!(
        response.status() == 200 || response.status() == 502,
        "the offline ran: {}",
        response.status()
    );
    assert_eq!(
        eureka
            .status("ORDER-SERVICE", "10.0.0.5:order-service:8080")
            .as_deref(),
        Some("OUT_OF_SERVICE")
    );
    assert_eq!(app.get("/healthz").await.status(), 200);

    // Past its share a host is told so at once; what it kept open is closed by the header
    // timer, answered or not, and none of it was read as a request.
    let mut refused = 0;
    for stream in &mut slow {
        let seen = read_until_closed(stream).await;
        if seen.contains("too_many_connections") {
            assert!(seen.starts_with("HTTP/1.1 503"), "{seen}");
            refused += 1;
        }
    }
    assert_eq!(
        refused, 80,
        "20 connections from one address, the others refused"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("synchspeed_connections_refused_total{why=\"busy\"} 80"),
        "{metrics}"
    );
    let operations: Value = app.get_json("/api/v1/operations").await;
    assert_eq!(
        operations["operations"].as_array().map(Vec::len),
        Some(1),
        "only the deploy platform's offline ran: {operations}"
    );
}

#[tokio::test]
async fn a_peer_that_is_no_caller_proxy_or_prober_is_refused_before_anything_is_read() {
    let eureka = EurekaDouble::with_order_service().await;
    let app = TestApp::spawn(
        hardened(&eureka).security("allow = [\"127.0.0.1/32\"]\nprobes = [\"127.0.0.1/32\"]"),
    )
    .await;
    let mut stream = connect_from("127.0.0.3", addr(&app)).await;
    // Nothing is sent: the answer comes anyway, and the connection closes.
    let seen = read_until_closed(&mut stream).await;
    assert!(seen.starts_with("HTTP/1.1 403 Forbidden"), "{seen}");
    assert!(seen.contains("\"code\":\"forbidden\""), "{seen}");
    assert!(
        !seen.contains("127.0.0"),
        "no range or address is told: {seen}"
    );

    // An allowed caller is served as before.
    assert_eq!(app.get("/api/v1/offline").await.status(), 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let eureka = EurekaDouble::with_order_service().await;
    let app = TestApp::spawn(hardened(&eureka)).await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let seen = read_until_closed(&mut stream).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
}

#[tokio::test]
async fn a_body_that_never_finishes_is_408_and_one_declared_too_large_is_413_unread() {
    let eureka = EurekaDouble::with_order_service().await;
    let app = TestApp::spawn(hardened(&eureka)).await;

    let mut stalled = TcpStream::connect(addr(&app)).await.unwrap();
    stalled
        .write_all(
            b"POST /api/v1/instances/10.0.0.5/offline HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"reason\":",
        )
        .await
        .unwrap();
    let seen = read_until_closed(&mut stalled).await;
    assert!(seen.starts_with("HTTP/1.1 408"), "{seen}");
    assert!(seen.contains("\"code\":\"body_timeout\""), "{seen}");
    assert!(seen.contains("x-request-id"), "{seen}");

    let mut large = TcpStream::connect(addr(&app)).await.unwrap();
    large
        .write_all(
            b"POST /api/v1/instances/10.0.0.5/offline HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              content-type: application/json\r\ncontent-length: 10000000\r\n\
              expect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let seen = read_until_closed(&mut large).await;
    assert!(
        seen.starts_with("HTTP/1.1 413"),
        "413 at once, no 100 Continue: {seen}"
    );
    assert!(seen.contains("\"code\":\"payload_too_large\""), "{seen}");

    eventually("nothing was changed", || async {
        eureka
            .status("ORDER-SERVICE", "10.0.0.5:order-service:8080")
            .as_deref()
            == Some("UP")
    })
    .await;
}

/// A head past synchspeed's limits is answered in the envelope, with its request id, like
/// every other error (not hyper's bare 414 or 431).
#[tokio::test]
async fn an_oversized_head_is_answered_in_the_envelope() {
    let eureka = EurekaDouble::with_order_service().await;
    let app = TestApp::spawn(hardened(&eureka)).await;

    let mut long = TcpStream::connect(addr(&app)).await.unwrap();
    let path = format!("/api/v1/instances/10.0.0.5?{}", "a=1&".repeat(5000));
    long.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let seen = read_until_closed(&mut long).await;
    assert!(
        seen.starts_with("HTTP/1.1 414"),
        "{}",
        &seen[..seen.len().min(300)]
    );
    assert!(seen.contains("\"code\":\"uri_too_long\""), "{seen}");
    assert!(seen.contains("x-request-id"), "{seen}");

    let mut many = TcpStream::connect(addr(&app)).await.unwrap();
    let headers: String = (0..150).map(|n| format!("X-Filler-{n}: {n}\r\n")).collect();
    many.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let seen = read_until_closed(&mut many).await;
    assert!(
        seen.starts_with("HTTP/1.1 431"),
        "{}",
        &seen[..seen.len().min(300)]
    );
    assert!(seen.contains("\"code\":\"headers_too_large\""), "{seen}");
    assert!(seen.contains("x-request-id"), "{seen}");
}

/// The longest query the contract allows (a 1,024-character reason and a 255-character app name,
/// every character four bytes, percent-encoded) is read and answered, not refused as too long.
#[tokio::test]
async fn the_longest_valid_query_is_answered() {
    let eureka = EurekaDouble::with_order_service().await;
    let app = TestApp::spawn(hardened(&eureka)).await;
    let widest = '\u{1D11E}';
    let reason: String = std::iter::repeat_n(widest, 1024).collect();
    let app_name: String = std::iter::repeat_n(widest, 255).collect();
    let response = reqwest::Client::new()
        .post(app.url("/api/v1/instances/10.0.0.5/offline"))
        .query(&[
            ("dry_run", "true"),
            ("reason", reason.as_str()),
            ("app", app_name.as_str()),
            ("timeout", "30s"),
        ])
        .send()
        .await
        .unwrap();
    assert!(response.url().as_str().len() > 12 * 1024);
    // Read to its end: no instance of 10.0.0.5 has that app name.
    assert_eq!(response.status(), 404);
    assert_eq!(
        crate::helpers::error_code(response).await,
        "instance_not_found"
    );
    assert!(eureka.status_writes().is_empty());
}

/// What hyper cannot parse (a malformed request line, a header name with a space, a length
/// that is no number, a TLS hello on the plain port) is a 400 in the envelope with a request
/// id, also after a good request on the same connection; the service goes on answering.
#[tokio::test]
async fn a_request_that_does_not_parse_is_a_400_in_the_envelope() {
    let eureka = EurekaDouble::with_order_service().await;
    let app = TestApp::spawn(hardened(&eureka)).await;
    let unparseable: [&[u8]; 4] = [
        b"GARBAGE\x01 / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"POST /api/v1/instances/10.0.0.5/offline HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ];
    for request in unparseable {
        let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
        stream.write_all(request).await.unwrap();
        let seen = read_until_closed(&mut stream).await;
        assert!(seen.starts_with("HTTP/1.1 400 "), "{seen}");
        assert!(seen.contains("\r\nx-request-id: "), "{seen}");
        let body: Value = serde_json::from_str(seen.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{seen}");
    }

    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    stream
        .write_all(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /healthz HTTP/1.1\r\nHo st: x\r\n\r\n",
        )
        .await
        .unwrap();
    let seen = read_until_closed(&mut stream).await;
    let (first, second) = seen.split_once("HTTP/1.1 400 ").expect(&seen);
    assert!(first.starts_with("HTTP/1.1 200 "), "{seen}");
    assert!(second.contains("\"code\":\"bad_request\""), "{seen}");

    assert_eq!(app.get("/healthz").await.status(), 200);
    assert!(eureka.status_writes().is_empty());
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("route=\"unparsed\",status=\"400\""),
        "{metrics}"
    );
}
