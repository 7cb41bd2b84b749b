//! Hardening over real sockets: authenticated peers, TLS, and the HTTP limits (body sizes,
//! timeouts, the connection cap, the lingering close).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kvcore::{Ballot, NodeId, NodeInfo};
use kvnet::auth::{decode_tag, encode_tag};
use kvnet::rpc::{Ping, Prepare};
use kvnet::{
    CallError, Frame, Header, HttpTransport, HttpTransportConfig, Peers, Secret, MAC_HEADER,
    RPC_PATH,
};
use kvserver::LocalCluster;
use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{encode_key, poll, Http};

/// A peer request's header as node `from` of `cluster` would send it.
fn header(cluster: &LocalCluster, from: usize) -> Header {
    Header {
        from: NodeId(from as u32),
        incarnation: cluster.node(from).incarnation(),
        epoch: 1,
        request_id: 99,
        hops: 1,
    }
}

fn info(cluster: &LocalCluster, i: usize) -> NodeInfo {
    NodeInfo {
        id: NodeId(i as u32),
        addr: cluster.addr(i).to_string(),
    }
}

/// Posts `body` to a node's peer endpoint with these extra headers; returns status, the reply's
/// tag header and body.
async fn post_peer(
    addr: SocketAddr,
    headers: &[(&str, String)],
    body: Bytes,
) -> (StatusCode, Option<String>, Bytes) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{RPC_PATH}"));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = client
        .request(request.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let tag = response
        .headers()
        .get(MAC_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, tag, body)
}

fn code(body: &[u8]) -> String {
    let json: Json = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    json["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn write_and_read(http: &Http, cluster: &LocalCluster, via: usize, key: &str, value: &str) {
    let body = json!({"key": key, "value": value}).to_string();
    let (status, got) = http.post(&format!("{}/set", cluster.url(via)), &body).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    for n in 0..cluster.len() {
        let url = format!("{}/get/{}", cluster.url(n), encode_key(key));
        let (status, got) = http.get(&url).await;
        assert_eq!(
            (status, got["value"].as_str()),
            (StatusCode::OK, Some(value))
        );
    }
}

#[tokio::test]
async fn peer_messages_without_a_valid_mac_are_refused_and_change_nothing() {
    let cluster = LocalCluster::builder().nodes(3).start().await.unwrap();
    let secret = cluster
        .secret()
        .expect("clusters are authenticated by default");
    let http = Http::new();
    write_and_read(&http, &cluster, 0, "guarded", "before").await;
    // A prepare whose ballot no proposer could ever beat: if any replica promised it, the key
    // could never be written again.
    let forged = Frame::encode(
        &header(&cluster, 1),
        &Prepare {
            key: "guarded".into(),
            ballot: Ballot::new(Ballot::MAX_ROUND, NodeId(1)),
            grow: 0,
        },
    );
    let frame = forged.bytes().clone();
    let other_frame = Frame::encode(&header(&cluster, 1), &Ping).bytes().clone();
    let mac_of = |body: &[u8]| encode_tag(&secret.request_tag("POST", RPC_PATH, body));
    let attempts: [(&str, Vec<(&str, String)>); 6] = [
        ("no MAC", vec![]),
        ("an empty MAC", vec![(MAC_HEADER, String::new())]),
        ("a MAC that is not hex", vec![(MAC_HEADER, "z".repeat(64))]),
        ("a wrong MAC", vec![(MAC_HEADER, "0".repeat(64))]),
        (
            "the MAC of another body",
            vec![(MAC_HEADER, mac_of(&other_frame))],
        ),
        (
            "a MAC under another secret",
            vec![(
                MAC_HEADER,
                encode_tag(&Secret::random().request_tag("POST", RPC_PATH, &frame)),
            )],
        ),
    ];
    for (what, headers) in attempts {
        for replica in cluster.node(0).owners("guarded") {
            let addr = cluster.addr(replica.0 as usize);
            let (status, tag, body) = post_peer(addr, &headers, frame.clone()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(code(&body), "unauthenticated", "{what}");
            assert_eq!(tag, None, "{what}: a refusal is not signed");
        }
    }
    // A transport with another secret gets no answer it can trust: its outcome is unknown.
    let stranger = Peers::new(Arc::new(HttpTransport::new(HttpTransportConfig {
        secret: Some(Secret::random()),
        ..Default::default()
    })));
    let e = stranger
        .send(
            &info(&cluster, 0),
            &Frame::encode(&header(&cluster, 1), &Ping),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CallError::Broken { reason, .. } if reason.contains("unauthenticated")),
        "{e}"
    );
    assert!(e.may_have_applied());
    // The key is still writable and readable through every node.
    write_and_read(&http, &cluster, 1, "guarded", "after").await;
    write_and_read(&http, &cluster, 2, "guarded", "and again").await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_correctly_maced_peer_message_is_answered_with_a_maced_reply() {
    let cluster = LocalCluster::builder().nodes(2).start().await.unwrap();
    let secret = cluster.secret().unwrap().clone();
    let peers = Peers::new(Arc::new(HttpTransport::new(HttpTransportConfig {
        secret: Some(secret.clone()),
        ..Default::default()
    })));
    let pong = peers
        .call(&info(&cluster, 0), &header(&cluster, 1), &Ping)
        .await
        .unwrap();
    assert_eq!(pong.node, NodeId(0));
    // By hand: the reply's tag covers the request's tag, the status and the body.
    let frame = Frame::encode(&header(&cluster, 1), &Ping).bytes().clone();
    let request = secret.request_tag("POST", RPC_PATH, &frame);
    let (status, tag, body) = post_peer(
        cluster.addr(0),
        &[(MAC_HEADER, encode_tag(&request))],
        frame,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let tag = decode_tag(tag.expect("signed reply").as_bytes()).unwrap();
    assert!(secret.verify_reply(&tag, &request, 200, &body));
    assert!(!secret.verify_reply(&tag, &request, 200, &body[1..]));
    // Authenticated but unreadable frames reach the decoder, which refuses them clearly (and
    // signs the refusal).
    for (garbage, expected) in [
        (
            &br#"{"from":1,"epoch":1,"request":{"op":"ping"}}"#[..],
            "unsupported_protocol",
        ),
        (b"\x02\x00not a frame", "invalid_request"),
        (b"", "invalid_request"),
    ] {
        let request = secret.request_tag("POST", RPC_PATH, garbage);
        let (status, tag, body) = post_peer(
            cluster.addr(1),
            &[(MAC_HEADER, encode_tag(&request))],
            Bytes::from_static(garbage),
        )
        .await;
        assert_eq!(
            (status, code(&body).as_str()),
            (StatusCode::BAD_REQUEST, expected)
        );
        let tag = decode_tag(tag.unwrap().as_bytes()).unwrap();
        assert!(secret.verify_reply(&tag, &request, 400, &body));
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn while_the_secret_changes_nodes_accept_the_old_and_the_new_one() {
    const OLD: &str = "the old cluster secret, 0123456789";
    const NEW: &str = "the new cluster secret, 9876543210";
    // The first step of a rotation: the nodes still tag with the old secret and accept both.
    let cluster = LocalCluster::builder()
        .nodes(3)
        .configure(|c| {
            c.cluster_secret = Some(Secret::from_text(&format!("{OLD}\n{NEW}")).unwrap())
        })
        .start()
        .await
        .unwrap();
    let http = Http::new();
    write_and_read(&http, &cluster, 1, "rotating", "v1").await;
    let peer = |text: &str| {
        Peers::new(Arc::new(HttpTransport::new(HttpTransportConfig {
            secret: Some(Secret::from_text(text).unwrap()),
            ..Default::default()
        })))
    };
    // A node at the second step (tagging with the new one, accepting both) is answered.
    let second_step = peer(&format!("{NEW}\n{OLD}"));
    let pong = second_step
        .call(&info(&cluster, 0), &header(&cluster, 1), &Ping)
        .await
        .unwrap();
    assert_eq!(pong.node, NodeId(0));
    // A secret the cluster never had is refused, and the cluster keeps working.
    let stranger = peer("a secret this cluster never had");
    let e = stranger
        .call(&info(&cluster, 0), &header(&cluster, 1), &Ping)
        .await
        .unwrap_err();
    // (Its 401 is tagged with the cluster's secret, which the stranger cannot check.)
    assert!(
        matches!(&e, CallError::Broken { reason, .. } if reason.contains("unauthenticated")),
        "{e}"
    );
    write_and_read(&http, &cluster, 2, "rotating", "v2").await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn values_at_the_size_limit_go_through_their_primary_and_through_other_nodes() {
    for limit in [1 << 20, 1000] {
        let cluster = LocalCluster::builder()
            .nodes(4)
            .configure(|c| {
                c.max_value_bytes = limit as u64;
                c.replicas = 3;
            })
            .start()
            .await
            .unwrap();
        let http = Http::new();
        // Strings written plainly and all in escapes, and binary values in base64: each is
        // exactly at the limit once stored.
        let plain = "p".repeat(limit);
        let escaped = "\u{1}".repeat(limit);
        let binary = base64_of(&vec![0xa5; limit]);
        let cases = [
            ("plain", json!(plain), "string"),
            ("escaped", json!(escaped), "string"),
            ("binary", json!(binary), "binary"),
        ];
        for (name, value, encoding) in cases {
            let key = format!("big-{name}");
            let primary = cluster.node(0).owner(&key).0 as usize;
            let owners = cluster.node(0).owners(&key);
            let outsider = (0..4)
                .find(|n| !owners.contains(&NodeId(*n as u32)))
                .unwrap();
            for (via, round) in [(primary, 1), (outsider, 2)] {
                let body = json!({"key": key, "value": value, "encoding": encoding}).to_string();
                let (status, got) = http.post(&format!("{}/set", cluster.url(via)), &body).await;
                assert_eq!(
                    (status, &got["version"]),
                    (StatusCode::OK, &json!(round)),
                    "{limit}-byte {name} value through node {via}: {}",
                    &got.to_string()[..got.to_string().len().min(200)]
                );
                for n in 0..4 {
                    let url = format!("{}/get/{key}", cluster.url(n));
                    let (status, got) = http.get(&url).await;
                    assert_eq!(status, StatusCode::OK);
                    assert!(got["value"] == value, "{name} read through node {n}");
                }
            }
        }
        // One byte more is the value's fault, not the body's.
        let body = json!({"key": "over", "value": "p".repeat(limit + 1)}).to_string();
        let (status, got) = http.post(&format!("{}/set", cluster.url(0)), &body).await;
        assert_eq!(
            (status, &got["error"]["code"]),
            (StatusCode::PAYLOAD_TOO_LARGE, &json!("value_too_large"))
        );
        cluster.shutdown().await;
    }
}

fn base64_of(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Reads one HTTP/1.1 response with a content-length from `stream`: status and body.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .unwrap()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// Waits until the server closes `stream` (end of stream or reset), at most `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open past {within:?}"
    );
}

#[tokio::test]
async fn a_client_that_sends_a_whole_oversized_body_before_reading_gets_the_413() {
    let cluster = LocalCluster::builder()
        .nodes(1)
        .configure(|c| c.max_value_bytes = 1000)
        .start()
        .await
        .unwrap();
    let limit = kvserver::api::client_body_limit(1000);
    // Far more than the socket buffers hold: without a lingering close the writes below fail
    // with a broken pipe or a reset, and the answer is lost.
    let body = vec![b'x'; 16 << 20];
    for path in ["/set", RPC_PATH] {
        // What Python's urllib does: headers, the whole body, then read.
        let mut stream = TcpStream::connect(cluster.addr(0)).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Python-urllib/3.11\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
            .write_all(&body)
            .await
            .unwrap_or_else(|e| panic!("{path}: the server cut the upload short: {e}"));
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("answered and closed")
            .unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let expected = if path == "/set" { 413 } else { 401 };
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {expected} ")),
            "{path}: {answer}"
        );
        let json: Json = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        let code = if path == "/set" {
            "body_too_large"
        } else {
            "unauthenticated"
        };
        assert_eq!(json["error"]["code"], code, "{path}");
        if path == "/set" {
            let message = json["error"]["message"].as_str().unwrap();
            assert!(message.contains(&limit.to_string()), "{message}");
        }
    }
    // The node still serves.
    let (status, _) = Http::new().get(&format!("{}/health", cluster.url(0))).await;
    assert_eq!(status, StatusCode::OK);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_slow_header_client_is_cut_off_without_blocking_others() {
    let cluster = LocalCluster::builder()
        .nodes(1)
        .configure(|c| c.header_read_timeout_ms = 300)
        .start()
        .await
        .unwrap();
    let mut slow = TcpStream::connect(cluster.addr(0)).await.unwrap();
    slow.write_all(b"GET /hea").await.unwrap();
    let started = tokio::time::Instant::now();
    // Others are served meanwhile.
    let http = Http::new();
    for _ in 0..5 {
        let (status, _) = http.get(&format!("{}/health", cluster.url(0))).await;
        assert_eq!(status, StatusCode::OK);
    }
    closed_by_server(&mut slow, Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_trickled_body_is_answered_408_and_the_connection_closed() {
    let cluster = LocalCluster::builder()
        .nodes(1)
        .configure(|c| c.body_read_timeout_ms = 300)
        .start()
        .await
        .unwrap();
    let mut stream = TcpStream::connect(cluster.addr(0)).await.unwrap();
    stream
        .write_all(b"POST /set HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"key\":")
        .await
        .unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
        .await
        .expect("answered in time");
    assert_eq!(status, 408, "{body}");
    assert_eq!(code(body.as_bytes()), "request_timeout");
    closed_by_server(&mut stream, Duration::from_secs(10)).await;
    // Only the cluster's record of its map is stored.
    assert_eq!(cluster.node(0).store().len(), 1);
    cluster.shutdown().await;
}

#[tokio::test]
async fn idle_kept_alive_connections_are_closed() {
    let cluster = LocalCluster::builder()
        .nodes(1)
        .configure(|c| c.idle_timeout_ms = 300)
        .start()
        .await
        .unwrap();
    let mut stream = TcpStream::connect(cluster.addr(0)).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.0, 200);
    let served = tokio::time::Instant::now();
    closed_by_server(&mut stream, Duration::from_secs(5)).await;
    assert!(served.elapsed() >= Duration::from_millis(250));
    cluster.shutdown().await;
}

async fn health_on(stream: &mut TcpStream) -> u16 {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_response(stream).await.0
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_until_one_closes() {
    let cluster = LocalCluster::builder()
        .nodes(1)
        .configure(|c| c.max_connections = 3)
        .start()
        .await
        .unwrap();
    let addr = cluster.addr(0);
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert_eq!(health_on(&mut stream).await, 200);
        open.push(stream);
    }
    // The fourth is answered 503 at once and closed.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut answer))
        .await
        .expect("refused at once")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    // The first three still work.
    for stream in &mut open {
        assert_eq!(health_on(stream).await, 200);
    }
    // Once one closes, a new connection gets in (as soon as the server has seen the close).
    drop(open.remove(0));
    poll("a free connection slot", Duration::from_secs(5), || async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        (&head == b"HTTP/1.1 200").then_some(())
    })
    .await;
    cluster.shutdown().await;
}

/// Certificates made for one test, in files the nodes read.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "kv-tls-{name}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("kv {name} CA"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// Writes the CA and a node certificate for 127.0.0.1 and localhost, good as server and as
    /// client; returns (cert, key, ca) paths.
    fn node_files(&self) -> (PathBuf, PathBuf, PathBuf) {
        let (cert, key) = self.node_pem();
        let paths = (
            self.dir.join("node.pem"),
            self.dir.join("node.key"),
            self.dir.join("ca.pem"),
        );
        std::fs::write(&paths.0, cert).unwrap();
        std::fs::write(&paths.1, key).unwrap();
        std::fs::write(&paths.2, self.ca.pem()).unwrap();
        paths
    }

    fn node_pem(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }

    /// A client configuration that trusts this CA, with a certificate from `identity`'s CA.
    fn client(&self, identity: Option<&Pki>) -> rustls::ClientConfig {
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(self.roots());
        match identity {
            None => builder.with_no_client_auth(),
            Some(pki) => {
                use rustls::pki_types::pem::PemObject;
                let (cert, key) = pki.node_pem();
                builder
                    .with_client_auth_cert(
                        vec![
                            rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes())
                                .unwrap(),
                        ],
                        rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                    )
                    .unwrap()
            }
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn tls_clusters_serve_clients_with_the_ca_and_refuse_peers_without_a_cluster_certificate() {
    let pki = Pki::new("cluster");
    let (cert, key, ca) = pki.node_files();
    let cluster = LocalCluster::builder()
        .nodes(3)
        .configure(|c| {
            c.tls_cert = Some(cert);
            c.tls_key = Some(key);
            c.tls_ca = Some(ca);
        })
        .start()
        .await
        .expect("the nodes catch up with each other over TLS");
    assert!(cluster.url(0).starts_with("https://"));
    // A client that trusts the CA writes through one node and reads through the others: the
    // peers carried the value over TLS.
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(pki.client(None))
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let call = |method: Method, url: String, body: &str| {
        let request = Request::builder()
            .method(method)
            .uri(url)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = client.request(request);
        async move {
            let response = response.await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Json>(&body).unwrap())
        }
    };
    let body = json!({"key": "secure", "value": "over tls"}).to_string();
    let (status, _) = call(Method::POST, format!("{}/set", cluster.url(0)), &body).await;
    assert_eq!(status, StatusCode::OK);
    for n in 0..3 {
        let (status, got) = call(Method::GET, format!("{}/get/secure", cluster.url(n)), "").await;
        assert_eq!(
            (status, &got["value"]),
            (StatusCode::OK, &json!("over tls"))
        );
    }
    // Plain HTTP gets nowhere.
    assert!(Http::new()
        .try_call(
            Method::GET,
            &format!("http://{}/health", cluster.addr(0)),
            None,
            &[]
        )
        .await
        .is_err());

    let secret = cluster.secret().cloned();
    let peer_with = |tls: rustls::ClientConfig| {
        Peers::new(Arc::new(HttpTransport::new(HttpTransportConfig {
            secret: secret.clone(),
            tls: Some(Arc::new(tls)),
            ..Default::default()
        })))
    };
    let ping = |peers: Peers| {
        let to = info(&cluster, 0);
        let header = header(&cluster, 1);
        async move { peers.call(&to, &header, &Ping).await }
    };
    // With the secret, the CA and a certificate the CA signed, a peer is answered.
    assert!(ping(peer_with(pki.client(Some(&pki)))).await.is_ok());
    // With the secret and the CA but no certificate: refused at the peer endpoint.
    let e = ping(peer_with(pki.client(None))).await.unwrap_err();
    assert!(
        matches!(&e, CallError::Broken { reason, .. } if reason.contains("unauthenticated")),
        "{e}"
    );
    // With a certificate from another CA: the handshake fails.
    let rogue = Pki::new("rogue");
    assert!(ping(peer_with(pki.client(Some(&rogue)))).await.is_err());
    // Trusting another CA: the nodes' certificates are not accepted.
    assert!(ping(peer_with(rogue.client(Some(&rogue)))).await.is_err());
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_node_without_a_secret_refuses_to_listen_beyond_loopback() {
    let run = |listen: &str, secret: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kvserver"));
        command.args([
            "node",
            "--id",
            "0",
            "--listen",
            listen,
            "--peers",
            "10.9.8.7:5100",
        ]);
        command.env_remove("KV_CLUSTER_SECRET");
        if let Some(secret) = secret {
            command.env("KV_CLUSTER_SECRET", secret);
        }
        command.output().unwrap()
    };
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let out = run(listen, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{listen}");
        assert!(stderr.contains("without a cluster secret"), "{stderr}");
    }
    let out = run("127.0.0.1:0", Some("too short"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KV_CLUSTER_SECRET"));
    // The secret is never printed, even when refused.
    assert!(!String::from_utf8_lossy(&out.stderr).contains("too short"));
}
