//! The L7 proxy's TLS side through real clients: an `https` listener with three certificates
//! chosen by SNI, offloading to an `http` group and bridging to an `https` one, and a `tls`
//! listener whose targets see raw TCP. Needs root; one test at a time.

use std::{net::SocketAddr, process::Stdio};

use rustls::pki_types::{CertificateDer, pem::PemObject as _};
use tests::{
    l7_lab::{
        A_NAME, B_NAME, DEFAULT_NAME, L7Lab, Pki, TARGET_NAME, TargetKind, TargetSpec, path_str,
        target_name,
    },
    tls_client::{TlsClient, connect_from_client},
    websocket_client,
};

const VIP: &str = "198.18.1.100";
/// The `https` listener's port, and the `tls` listener's.
const HTTPS_PORT: u16 = 443;
const TLS_PORT: u16 = 8443;

/// Targets: b1:8000 plain HTTP (`offload`), b2:8443 HTTPS (`bridge`), b1:9000 raw TCP (`raw`),
/// b2:8010 h2c (`grpc`).
const TARGETS: [TargetSpec; 4] = [
    TargetSpec {
        backend: 0,
        port: 8000,
        kind: TargetKind::Http,
    },
    TargetSpec {
        backend: 1,
        port: 8443,
        kind: TargetKind::Https,
    },
    TargetSpec {
        backend: 0,
        port: 9000,
        kind: TargetKind::Raw,
    },
    TargetSpec {
        backend: 1,
        port: 8010,
        kind: TargetKind::Http,
    },
];

fn config(pki: &Pki) -> String {
    let file = |stem: &str| {
        let (cert, key) = pki.paths(stem);
        format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            path_str(&cert),
            path_str(&key)
        )
    };
    let ca = pki.ca_path();
    format!(
        r#"
[[target_group]]
name = "offload"
protocol = "http"
targets = [{{ address = "198.18.0.21", port = 8000 }}]
health_check = {{ protocol = "http", path = "/health", interval = "1s", timeout = "500ms", healthy_threshold = 2 }}

[[target_group]]
name = "bridge"
protocol = "https"
ca_file = "{ca}"
tls_server_name = "{TARGET_NAME}"
targets = [{{ address = "198.18.0.22", port = 8443 }}]
health_check = {{ protocol = "https", path = "/health", interval = "1s", timeout = "500ms", healthy_threshold = 2 }}

[[target_group]]
name = "raw"
protocol = "tcp"
targets = [{{ address = "198.18.0.21", port = 9000 }}]
health_check = {{ interval = "1s", timeout = "500ms", healthy_threshold = 2 }}

[[target_group]]
name = "grpc"
protocol = "http"
protocol_version = "grpc"
targets = [{{ address = "198.18.0.22", port = 8010 }}]
# A gRPC check: POST, judged by grpc-status (`/trailers` ends with 0).
health_check = {{ protocol = "http", path = "/trailers", matcher = "0", interval = "1s", timeout = "500ms", healthy_threshold = 2 }}

[[listener]]
name = "plain"
address = "{VIP}"
port = 80
protocol = "http"
default_action = {{ forward = "offload" }}

[[listener]]
name = "secure"
address = "{VIP}"
port = {HTTPS_PORT}
protocol = "https"
ssl_policy = "ELBSecurityPolicy-TLS13-1-2-2021-06"
certificates = [{default}, {a}, {b}]
default_action = {{ forward = "offload" }}

[[listener.rule]]
priority = 10
conditions = {{ path = ["/bridge/*"] }}
action = {{ forward = "bridge" }}

[[listener.rule]]
priority = 20
conditions = {{ path = ["/trailers"] }}
action = {{ forward = "grpc" }}

[[listener]]
name = "tls-raw"
address = "{VIP}"
port = {TLS_PORT}
protocol = "tls"
certificates = [{default}]
default_action = {{ forward = "raw" }}
"#,
        ca = path_str(&ca),
        default = file("default"),
        a = file("a"),
        b = file("b"),
    )
}

fn lab(tag: &str) -> L7Lab {
    L7Lab::up(
        tag,
        2,
        env!("CARGO_BIN_EXE_l7-target"),
        &TARGETS,
        config,
        &[
            ("offload", "198.18.0.21:8000"),
            ("bridge", "198.18.0.22:8443"),
            ("raw", "198.18.0.21:9000"),
            ("grpc", "198.18.0.22:8010"),
        ],
    )
}

/// `--resolve NAME:443:VIP`.
fn resolve(name: &str) -> String {
    format!("{name}:{HTTPS_PORT}:{VIP}")
}

/// The `subject:` line `curl -v` prints for the server's certificate.
fn subject_line(verbose: &str) -> &str {
    verbose
        .lines()
        .find(|l| l.trim_start_matches(['*', ' ']).starts_with("subject:"))
        .unwrap_or_else(|| panic!("no subject line in:\n{verbose}"))
}

/// The certificate in PEM file `path`, as DER.
fn der(path: &std::path::Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_vec()
}

#[test]
fn sni_picks_the_matching_certificate_and_an_unknown_name_gets_the_default() {
    let l7 = lab("l7sni");
    let ca = l7.pki.ca_path();
    for _round in 0..2 {
        for name in [A_NAME, B_NAME] {
            // Verified against the lab CA for `name`: curl fails unless the name matches.
            let out = l7.curl_raw(&[
                "-v",
                "-s",
                "--cacert",
                path_str(&ca),
                "--resolve",
                &resolve(name),
                &format!("https://{name}/sni"),
            ]);
            let subject = subject_line(&out);
            assert!(subject.contains(&format!("CN={name}")), "{name}: {subject}");
        }
    }
    // Not verified (the default certificate names another host): only its subject counts.
    let out = l7.curl_raw(&[
        "-v",
        "-s",
        "-k",
        "--resolve",
        &resolve("unknown.example.test"),
        "https://unknown.example.test/sni",
    ]);
    let subject = subject_line(&out);
    assert!(subject.contains(&format!("CN={DEFAULT_NAME}")), "{subject}");
}

/// `openssl s_client` in the client namespace offering only `version` (`-tls1_1`...), with
/// OpenSSL's own floor lowered so that the server, not the client, decides; whether the
/// handshake completed, and the output.
fn handshake_with(l7: &L7Lab, version: &str) -> (bool, String) {
    let out = l7
        .lab
        .cmd(l7.lab.client(), "timeout")
        .args([
            "10",
            "openssl",
            "s_client",
            "-connect",
            &format!("{VIP}:{HTTPS_PORT}"),
            "-servername",
            A_NAME,
            version,
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn tls_1_1_is_refused_and_tls_1_2_and_1_3_are_accepted() {
    let l7 = lab("l7ver");
    let (ok, out) = handshake_with(&l7, "-tls1_1");
    assert!(!ok, "a TLS 1.1 handshake completed:\n{out}");
    assert!(
        !out.contains("no protocols available"),
        "the client refused to offer TLS 1.1 itself, so this proves nothing:\n{out}"
    );
    // rustls answers a hello without TLS 1.2 or 1.3 with an alert (handshake failure).
    assert!(
        out.contains("Protocol  : TLSv1.1") && out.contains(" alert "),
        "not refused by the server with an alert:\n{out}"
    );
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, out) = handshake_with(&l7, flag);
        assert!(ok && out.contains(name), "{flag} refused:\n{out}");
    }
}

#[test]
fn https_listener_offloads_to_http_targets_and_bridges_to_https_targets() {
    let l7 = lab("l7brg");
    let ca = l7.pki.ca_path();
    let get = |path: &str| {
        l7.curl(&[
            "--cacert",
            path_str(&ca),
            "--resolve",
            &resolve(A_NAME),
            &format!("https://{A_NAME}{path}"),
        ])
        .seen()
    };
    let offloaded = get("/plain");
    assert_eq!(offloaded.target, target_name(0, 8000), "{offloaded:?}");
    assert!(!offloaded.tls, "offload: the target should see plain HTTP");
    let bridged = get("/bridge/x");
    assert_eq!(bridged.target, target_name(1, 8443), "{bridged:?}");
    assert!(bridged.tls, "bridging: the target should see TLS");
    assert_eq!(bridged.path, "/bridge/x");
    for seen in [&offloaded, &bridged] {
        let header = |name: &str| seen.headers.get(name).map(String::as_str);
        assert_eq!(header("x-forwarded-proto"), Some("https"), "{seen:?}");
        assert_eq!(header("x-forwarded-port"), Some("443"), "{seen:?}");
        assert_eq!(header("x-forwarded-for"), Some("198.18.0.10"), "{seen:?}");
        assert!(
            header("x-amzn-trace-id").is_some_and(|id| !id.is_empty()),
            "no request id: {seen:?}"
        );
    }
}

#[test]
fn tls_listener_hands_its_targets_raw_tcp() {
    let l7 = lab("l7raw");
    let vip: SocketAddr = format!("{VIP}:{TLS_PORT}").parse().expect("address");
    let mut client = TlsClient::connect(&l7.lab, vip, DEFAULT_NAME, &l7.pki.ca_path(), false);
    assert_eq!(client.read_line(), format!("raw {}", target_name(0, 9000)));
    for line in ["first line", "second line, same connection"] {
        client.send(format!("{line}\n").as_bytes());
        assert_eq!(client.read_line(), line);
    }
    let log = l7.target_log(2);
    assert!(log.contains("RAW") && !log.contains("REQ"), "{log}");
}

#[test]
fn a_certificate_replaced_on_reload_is_served_to_new_connections_while_an_open_one_keeps_working() {
    let l7 = lab("l7rld");
    let ca = l7.pki.ca_path();
    let vip: SocketAddr = format!("{VIP}:{HTTPS_PORT}").parse().expect("address");
    let (cert_path, _) = l7.pki.paths("a");
    let first = der(&cert_path);
    let mut open = TlsClient::connect(&l7.lab, vip, A_NAME, &ca, true);
    assert_eq!(open.server_certificate(), first);
    let (status, body) = open.get(A_NAME, "/before");
    assert_eq!(status, 200, "{body}");

    // Same files, new contents; the agent rereads them on reload.
    l7.pki.issue(A_NAME, "a", "v2");
    let second = der(&cert_path);
    assert_ne!(first, second);
    l7.agent.cli(&["reload"]).expect("reload");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let fresh = TlsClient::connect(&l7.lab, vip, A_NAME, &ca, true);
        let served = fresh.server_certificate();
        if served == second {
            break;
        }
        assert_eq!(served, first, "neither the old nor the new certificate");
        assert!(
            std::time::Instant::now() < deadline,
            "new connections still get the old certificate 15 s after the reload"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The connection opened before the reload still carries requests.
    let (status, body) = open.get(A_NAME, "/after");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("/after"), "{body}");
}

#[test]
fn grpc_style_h2_trailers_arrive_through_the_https_listener() {
    let l7 = lab("l7trl");
    let out = l7.curl_raw(&[
        "--http2",
        "-s",
        "-i",
        "--cacert",
        path_str(&l7.pki.ca_path()),
        "--resolve",
        &resolve(A_NAME),
        &format!("https://{A_NAME}/trailers"),
    ]);
    assert!(
        out.starts_with("HTTP/2 200"),
        "not h2 from the proxy:\n{out}"
    );
    // The grpc group speaks h2 to its target.
    assert!(out.contains(r#""version":"HTTP/2""#), "{out}");
    // curl -i prints trailers after the body.
    let (_, after_body) = out
        .split_once(r#""version":"HTTP/2"}"#)
        .unwrap_or_else(|| panic!("no body:\n{out}"));
    for trailer in ["grpc-status: 0", "x-trailer: yes"] {
        assert!(
            after_body.to_ascii_lowercase().contains(trailer),
            "no trailer `{trailer}`:\n{out}"
        );
    }
}

#[test]
fn h2load_over_h2_with_tls_completes_with_zero_errors() {
    let l7 = lab("l7h2l");
    let out = l7
        .lab
        .run_with_timeout(
            l7.lab.client(),
            &[
                "h2load",
                "-n",
                "2000",
                "-c",
                "10",
                "-m",
                "10",
                &format!("https://{VIP}/h2load"),
            ],
            std::time::Duration::from_secs(60),
        )
        .expect("h2load");
    println!("{out}");
    assert!(out.contains("Application protocol: h2"), "{out}");
    assert!(
        out.contains("2000 succeeded, 0 failed, 0 errored, 0 timeout"),
        "{out}"
    );
}

#[test]
fn a_websocket_echo_round_trips_over_http_and_https_listeners() {
    let l7 = lab("l7ws");
    let messages = ["hello", "a second message on the same socket"];
    let plain: SocketAddr = format!("{VIP}:80").parse().expect("address");
    let mut tcp = connect_from_client(&l7.lab, plain);
    assert_eq!(websocket_client::echo(&mut tcp, VIP, &messages), messages);
    let secure: SocketAddr = format!("{VIP}:{HTTPS_PORT}").parse().expect("address");
    let mut tls = TlsClient::connect(&l7.lab, secure, A_NAME, &l7.pki.ca_path(), true);
    assert_eq!(
        websocket_client::echo(&mut tls, A_NAME, &messages),
        messages
    );
    // HTTP/2 (h2c, prior knowledge): extended CONNECT (RFC 8441), an upgrade to the target.
    let tcp = connect_from_client(&l7.lab, plain);
    assert_eq!(h2_websocket_echo(tcp, &messages), messages);
    let log = l7.target_log(0);
    assert_eq!(log.matches("REQ GET /ws").count(), 3, "{log}");
}

/// Echoes `messages` over a websocket opened with an HTTP/2 extended CONNECT on `tcp`.
fn h2_websocket_echo(tcp: std::net::TcpStream, messages: &[&str]) -> Vec<String> {
    use tests::websocket::{decode, encode};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        tcp.set_nonblocking(true).expect("nonblocking");
        let tcp = tokio::net::TcpStream::from_std(tcp).expect("tokio stream");
        let deadline = std::time::Duration::from_secs(10);
        let (client, connection) = tokio::time::timeout(deadline, h2::client::handshake(tcp))
            .await
            .expect("h2 handshake in time")
            .expect("h2 handshake");
        tokio::spawn(connection);
        let mut client = tokio::time::timeout(deadline, client.ready())
            .await
            .expect("ready in time")
            .expect("ready");
        // The server's SETTINGS arrive after the handshake returns.
        for _ in 0..40 {
            if client.is_extended_connect_protocol_enabled() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            client.is_extended_connect_protocol_enabled(),
            "the proxy does not announce SETTINGS_ENABLE_CONNECT_PROTOCOL"
        );
        let mut request = hyper::Request::builder()
            .method("CONNECT")
            .uri(format!("http://{VIP}/ws"))
            .header("sec-websocket-version", "13")
            .body(())
            .expect("request");
        request
            .extensions_mut()
            .insert(h2::ext::Protocol::from_static("websocket"));
        let (response, mut send) = client.send_request(request, false).expect("send");
        let response = tokio::time::timeout(deadline, response)
            .await
            .expect("answer in time")
            .expect("answer");
        assert_eq!(response.status(), 200, "{response:?}");
        let mut receive = response.into_body();
        let mut buffer = Vec::new();
        let mut echoed = Vec::new();
        for message in messages {
            send.send_data(
                encode(0x1, message.as_bytes(), Some([1, 2, 3, 4])).into(),
                false,
            )
            .expect("send a frame");
            let frame = loop {
                if let Some((frame, used)) = decode(&buffer).expect("a well-formed frame") {
                    buffer.drain(..used);
                    break frame;
                }
                let data = tokio::time::timeout(deadline, receive.data())
                    .await
                    .expect("echo in time")
                    .expect("the tunnel stays open")
                    .expect("data");
                let _ = receive.flow_control().release_capacity(data.len());
                buffer.extend_from_slice(&data);
            };
            echoed.push(String::from_utf8_lossy(&frame.payload).into_owned());
        }
        echoed
    })
}
