//! Fuzzing the HTTP API of a real one-node server: random methods, paths (percent-encoding junk,
//! long keys, `..`, empty segments), query strings and bodies (arbitrary bytes, random JSON,
//! near-valid JSON for the write and batch endpoints with wrong types, huge numbers and deep
//! nesting; scan queries with junk limits and cursors) to the client endpoints, and arbitrary
//! bytes to the peer endpoint.
//!
//! The property, for every request: no 5xx; the body is JSON, either the success shape or
//! `{"error": {"code", "message"}}` with the status the code maps to (the peer endpoint may answer
//! any 4xx, or a reply frame should junk happen to decode); and afterwards the node still answers
//! `/health` and still holds a key written before the fuzzing, which no generated request can name.
//!
//! CI runs a fixed number of cases from a fixed seed. For a longer local run, raise the count and
//! vary the seed, e.g. `PROPTEST_CASES=5000 PROPTEST_RNG_SEED=$RANDOM cargo test -p kvserver
//! --test it fuzz`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use kvcore::{ErrorCode, NodeId, NodeInfo, MAX_KEY_BYTES};
use kvnet::rpc::{Ping, Read};
use kvnet::{Frame, Header, HttpTransport, HttpTransportConfig, Peers, PROTOCOL_VERSION, RPC_PATH};
use kvserver::LocalCluster;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::{json, Value as Json};

use crate::util::encode_key;

/// The seed CI runs from; `PROPTEST_RNG_SEED` overrides it.
const SEED: u64 = 0x6b76_7365_7276_6572;

/// A character no generator produces, so no generated request can name [`KNOWN_KEY`].
const UNNAMEABLE: char = '🔒';
const KNOWN_KEY: &str = "fuzz/🔒/known-good";

/// How long one answer may take before the server counts as hung.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn config(ci_cases: u32) -> Config {
    // `Config::default()` reads the `PROPTEST_*` variables.
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = ci_cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    // The seed reproduces a failure, and the report names the smallest failing input.
    config.failure_persistence = None;
    config
}

// ---------------------------------------------------------------------------------------------
// Requests

/// A request body.
#[derive(Clone)]
enum Body {
    Bytes(Bytes),
    /// `len` copies of `byte`, over the body limit.
    Huge {
        len: usize,
        byte: u8,
    },
}

impl Body {
    fn text(s: String) -> Self {
        Body::Bytes(Bytes::from(s))
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Bytes(b) => b.fmt(f),
            Body::Huge { len, byte } => write!(f, "{len} bytes of {byte:#04x}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    method: Method,
    /// Path and query, as sent.
    target: String,
    body: Body,
}

impl Case {
    fn new(method: Method, path: String, query: Option<String>, body: Body) -> Self {
        let target = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        Case {
            method,
            target,
            body,
        }
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    fn is_peer_call(&self) -> bool {
        self.path() == RPC_PATH && self.method == Method::POST
    }

    /// `GET /`: the status page, the one answer in HTML.
    fn is_status_page(&self) -> bool {
        self.path() == "/" && self.method == Method::GET
    }

    /// Whether the request could name [`KNOWN_KEY`] after all (the generators never put
    /// [`UNNAMEABLE`] in, but arbitrary bytes are arbitrary).
    fn names_known_key(&self) -> bool {
        let mut utf8 = [0; 4];
        let raw = UNNAMEABLE.encode_utf8(&mut utf8).as_bytes();
        let encoded = encode_key(&UNNAMEABLE.to_string()).to_ascii_lowercase();
        let in_body = match &self.body {
            Body::Bytes(b) => b.windows(raw.len()).any(|w| w == raw),
            Body::Huge { .. } => false,
        };
        in_body || self.target.to_ascii_lowercase().contains(&encoded)
    }
}

fn without_unnameable(s: String) -> String {
    s.replace(UNNAMEABLE, "")
}

fn any_string() -> impl Strategy<Value = String> {
    any::<String>().prop_map(without_unnameable)
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH),
        Just(Method::HEAD),
        Just(Method::OPTIONS),
        Just(Method::TRACE),
        Just(Method::from_bytes(b"FUZZ").unwrap()),
    ]
}

/// Mostly `usual`, sometimes anything.
fn method_mostly(usual: Method) -> impl Strategy<Value = Method> {
    prop_oneof![3 => Just(usual), 1 => method()]
}

/// A key as it appears in a path: encoded keys of any text, raw path characters, broken
/// percent-encoding, dot segments, empty segments and keys at and past the length limit.
fn path_key() -> BoxedStrategy<String> {
    let junk = prop::sample::select(vec![
        "%",
        "%0",
        "%G1",
        "%zz",
        "%FF",
        "%C3",
        "%C3%28",
        "%00",
        "%2F",
        "%2e%2e",
        "%E2%82",
        "%ED%A0%80",
    ]);
    prop_oneof![
        2 => shared_key().prop_map(|k| encode_key(&k)),
        3 => any_string().prop_map(|k| encode_key(&k)),
        2 => "[a-zA-Z0-9._~!$&'()*+,;=:@-]{0,16}",
        2 => prop::collection::vec(
            prop_oneof![junk.prop_map(str::to_owned), "[a-z0-9]{0,3}", "%[0-9a-fA-F]{2}"],
            1..6
        )
        .prop_map(|parts| parts.concat()),
        1 => prop::sample::select(vec!["..", ".", "", "a//b", "../..", "a/../b", "/", "//"])
            .prop_map(str::to_owned),
        1 => prop::sample::select(vec![
            "k".repeat(MAX_KEY_BYTES),
            "k".repeat(MAX_KEY_BYTES + 1),
            // 1023 and 1026 bytes once decoded.
            "%E2%82%AC".repeat(MAX_KEY_BYTES / 3),
            "%E2%82%AC".repeat(MAX_KEY_BYTES / 3 + 1),
            "k".repeat(4 * MAX_KEY_BYTES),
        ]),
    ]
    .boxed()
}

/// A few keys every kind of request goes to, so requests meet each other's writes: increments
/// of strings, conditional writes of existing keys, reads of deleted ones.
fn shared_key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "ключ", "a b/c"]).prop_map(str::to_owned)
}

fn random_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        prop::sample::select(vec![
            "", ".", "..", "kv", "get", "set", "incr", "internal", "v1", "rpc", "health",
        ])
        .prop_map(str::to_owned),
        path_key(),
    ];
    prop::collection::vec(segment, 0..5).prop_map(|s| format!("/{}", s.join("/")))
}

fn query() -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(
        0.3,
        prop_oneof![
            "[a-zA-Z0-9=&%._~-]{0,30}",
            Just("by=5&value=1&encoding=json".to_owned()),
            Just("%zz&&==&%".to_owned()),
        ],
    )
}

/// Numbers JSON parsers disagree about or cannot hold, and some that are not JSON.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-0",
            "1.5",
            "1e400",
            "-1e400",
            "1e-400",
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "1E2",
            "01",
            "-",
            "1.",
            "NaN",
            "Infinity",
        ])
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<u64>().prop_map(|i| i.to_string()),
    ]
}

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Json::Number)),
        any_string().prop_map(Json::from),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Json::Array),
            prop::collection::vec((any_string(), inner), 0..5)
                .prop_map(|kv| Json::Object(kv.into_iter().collect())),
        ]
    })
}

/// Deeply nested JSON, balanced or not.
fn deep_json() -> impl Strategy<Value = String> {
    (
        1..3000usize,
        prop::sample::select(vec![("[", "]"), ("{\"a\":", "}")]),
        any::<bool>(),
    )
        .prop_map(|(depth, (open, close), balanced)| {
            let closing = if balanced { depth } else { depth / 2 };
            format!("{}1{}", open.repeat(depth), close.repeat(closing))
        })
}

/// JSON text for a field: random documents, awkward numbers, deep nesting.
fn json_text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => json().prop_map(|j| j.to_string()),
        2 => number_text(),
        1 => deep_json(),
    ]
    .boxed()
}

fn quoted(s: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    s.prop_map(|s| Json::String(s).to_string())
}

fn key_text() -> BoxedStrategy<String> {
    prop_oneof![
        2 => quoted(shared_key()),
        3 => quoted(any_string()),
        1 => quoted(prop::sample::select(vec![
            String::new(),
            "k".repeat(MAX_KEY_BYTES),
            "k".repeat(MAX_KEY_BYTES + 1),
            "€".repeat(MAX_KEY_BYTES / 3 + 1),
        ])),
        1 => json_text(),
    ]
    .boxed()
}

fn encoding_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => quoted(
            prop::sample::select(vec!["string", "integer", "float", "boolean", "binary", "json"])
                .prop_map(str::to_owned)
        ),
        1 => quoted(prop::sample::select(vec!["STRING", "varchar", "", "int"]).prop_map(str::to_owned)),
        1 => json_text(),
    ]
    .boxed()
}

fn version_text() -> BoxedStrategy<String> {
    prop_oneof![
        number_text(),
        Just("\"3\"".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
    ]
    .boxed()
}

fn flag_text() -> BoxedStrategy<String> {
    prop::sample::select(vec!["true", "false", "\"true\"", "1", "null", "[]"])
        .prop_map(str::to_owned)
        .boxed()
}

/// A JSON object with each of `fields` present or not, sometimes an unknown field too.
fn object(fields: Vec<(&'static str, BoxedStrategy<String>)>) -> BoxedStrategy<String> {
    let parts: Vec<_> = fields
        .into_iter()
        .map(|(name, value)| {
            prop::option::weighted(0.85, value.prop_map(move |v| format!("{name:?}: {v}")))
        })
        .collect();
    (parts, prop::option::weighted(0.1, json_text()))
        .prop_map(|(parts, extra)| {
            let mut parts: Vec<String> = parts.into_iter().flatten().collect();
            if let Some(extra) = extra {
                parts.push(format!("\"unexpected\": {extra}"));
            }
            format!("{{{}}}", parts.join(", "))
        })
        .boxed()
}

/// Arbitrary bytes, random JSON, deep nesting, or a body over the limit.
fn any_body() -> BoxedStrategy<Body> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| Body::Bytes(b.into())),
        2 => Just(Body::Bytes(Bytes::new())),
        3 => json_text().prop_map(Body::text),
        1 => (0..4usize, prop::sample::select(vec![b'[', b'a', b' ', 0])).prop_map(|(extra, byte)| {
            Body::Huge { len: 1536 * 1024 + 1 + extra * 100_000, byte }
        }),
    ]
    .boxed()
}

/// A value and its encoding that match, as JSON text: `("\"integer\"", "42")`.
fn matching_value() -> impl Strategy<Value = (String, String)> {
    let t = |encoding: &str, value: Json| (format!("{encoding:?}"), value.to_string());
    prop_oneof![
        any_string().prop_map(move |v| t("string", json!(v))),
        any::<i64>().prop_map(move |v| t("integer", json!(v))),
        any::<i64>().prop_map(move |v| t("integer", json!(v.to_string()))),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(move |v| t("float", json!(v))),
        any::<bool>().prop_map(move |v| t("boolean", json!(v))),
        // kvcore's own base64, as a client would send it.
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(move |v| t("binary", kvcore::Value::binary(v).to_json())),
        json().prop_map(move |v| t("json", v)),
    ]
}

/// A write the server should accept, unless a precondition fails.
fn valid_write(with_key: bool) -> BoxedStrategy<String> {
    let key = prop_oneof![shared_key(), "[a-z0-9]{1,8}", any_string()]
        .prop_filter("a valid key", |k| !k.is_empty() && k.len() <= MAX_KEY_BYTES);
    let precondition = prop_oneof![
        4 => Just(String::new()),
        1 => Just(", \"if_absent\": true".to_owned()),
        1 => (1..4u64).prop_map(|v| format!(", \"if_version\": {v}")),
    ];
    (key, matching_value(), precondition)
        .prop_map(move |(key, (encoding, value), precondition)| {
            let key = match with_key {
                true => format!("\"key\": {}, ", json!(key)),
                false => String::new(),
            };
            format!("{{{key}\"value\": {value}, \"encoding\": {encoding}{precondition}}}")
        })
        .boxed()
}

/// Valid bodies, near-valid ones (fields of the wrong type, awkward numbers), either damaged, or
/// anything.
fn near(valid: BoxedStrategy<String>, near_valid: BoxedStrategy<String>) -> BoxedStrategy<Body> {
    let either = prop_oneof![valid.clone(), near_valid.clone()];
    prop_oneof![
        3 => valid.prop_map(Body::text),
        3 => near_valid.prop_map(Body::text),
        2 => (either, any::<Index>(), any::<Index>(), any::<u8>()).prop_map(|(text, cut, at, byte)| {
            let mut bytes = text.into_bytes();
            if byte % 2 == 0 {
                bytes.truncate(cut.index(bytes.len() + 1));
            } else if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            Body::Bytes(bytes.into())
        }),
        1 => any_body(),
    ]
    .boxed()
}

fn set_body() -> BoxedStrategy<Body> {
    near(
        valid_write(true),
        object(vec![
            ("key", key_text()),
            ("value", json_text()),
            ("encoding", encoding_text()),
            ("if_version", version_text()),
            ("if_absent", flag_text()),
        ]),
    )
}

fn put_body() -> BoxedStrategy<Body> {
    near(
        valid_write(false),
        object(vec![
            ("value", json_text()),
            ("encoding", encoding_text()),
            ("if_version", version_text()),
            ("if_absent", flag_text()),
        ]),
    )
}

fn incr_body() -> BoxedStrategy<Body> {
    let valid = prop_oneof![
        Just("{}".to_owned()),
        any::<i32>().prop_map(|by| format!("{{\"by\": {by}}}")),
        prop_oneof![Just(i64::MIN), Just(i64::MAX)].prop_map(|by| format!("{{\"by\": {by}}}")),
    ];
    near(
        valid.boxed(),
        object(vec![(
            "by",
            prop_oneof![
                4 => number_text(),
                1 => Just("\"5\"".to_owned()),
                1 => json_text()
            ]
            .boxed(),
        )]),
    )
}

/// `/mget` bodies: lists of key texts (strings of every kind, and JSON that is not a string),
/// near-valid ones and junk.
fn mget_body() -> BoxedStrategy<Body> {
    let valid = prop::collection::vec(key_text(), 1..6)
        .prop_map(|keys| format!("{{\"keys\": [{}]}}", keys.join(", ")))
        .boxed();
    near(valid, object(vec![("keys", json_text())]))
}

/// `/mset` bodies: lists of valid writes, near-valid ones and junk.
fn mset_body() -> BoxedStrategy<Body> {
    let valid = prop::collection::vec(valid_write(true), 1..5)
        .prop_map(|entries| format!("{{\"entries\": [{}]}}", entries.join(", ")))
        .boxed();
    near(valid, object(vec![("entries", json_text())]))
}

/// `/keys` queries: prefixes, limits and cursors of every kind, and other parameters.
fn scan_query() -> impl Strategy<Value = Option<String>> {
    let part = prop_oneof![
        path_key().prop_map(|k| format!("prefix={k}")),
        number_text().prop_map(|n| format!("limit={n}")),
        "[0-9a-fA-F]{0,40}".prop_map(|c| format!("cursor={c}")),
        query().prop_map(Option::unwrap_or_default),
    ];
    prop::option::weighted(
        0.9,
        prop::collection::vec(part, 0..4).prop_map(|parts| parts.join("&")),
    )
}

/// Bytes for the peer endpoint: anything, then a valid version, then a valid header and any kind,
/// each followed by anything.
fn peer_body() -> BoxedStrategy<Body> {
    let tail = || prop::collection::vec(any::<u8>(), 0..64);
    let header = (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u8>(),
    )
        .prop_map(|(from, incarnation, epoch, request_id, hops)| Header {
            from: NodeId(from),
            incarnation,
            epoch,
            request_id,
            hops,
        });
    prop_oneof![
        tail().prop_map(|t| Body::Bytes(t.into())),
        tail().prop_map(|t| Body::Bytes([&PROTOCOL_VERSION.to_le_bytes()[..], &t].concat().into())),
        (header, any::<u8>(), tail()).prop_map(|(h, kind, t)| {
            let ping = Frame::encode(&h, &Ping);
            let prefix = &ping.bytes()[..ping.bytes().len() - 1];
            Body::Bytes([prefix, &[kind], &t].concat().into())
        }),
    ]
    .boxed()
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        3 => (method_mostly(Method::POST), query(), set_body())
            .prop_map(|(m, q, b)| Case::new(m, "/set".into(), q, b)),
        3 => (method_mostly(Method::PUT), path_key(), query(), put_body())
            .prop_map(|(m, k, q, b)| Case::new(m, format!("/kv/{k}"), q, b)),
        2 => (method_mostly(Method::POST), path_key(), query(), incr_body())
            .prop_map(|(m, k, q, b)| Case::new(m, format!("/kv/{k}/incr"), q, b)),
        2 => (method_mostly(Method::GET), path_key(), query(), any_body())
            .prop_map(|(m, k, q, b)| Case::new(m, format!("/get/{k}"), q, b)),
        1 => (method(), path_key(), query(), any_body())
            .prop_map(|(m, k, q, b)| Case::new(m, format!("/kv/{k}"), q, b)),
        2 => (method(), random_path(), query(), any_body())
            .prop_map(|(m, p, q, b)| Case::new(m, p, q, b)),
        1 => (
            method(),
            prop::sample::select(vec![
                "/health", "/cluster", "/stats", "/set", "/get", "/kv", "/get/", "/kv/", "/",
                "/mget", "/mset", "/keys", "/cluster/overview",
            ]),
            query(),
            any_body()
        )
            .prop_map(|(m, p, q, b)| Case::new(m, p.into(), q, b)),
        2 => (method_mostly(Method::POST), query(), peer_body())
            .prop_map(|(m, q, b)| Case::new(m, RPC_PATH.into(), q, b)),
        1 => (method_mostly(Method::POST), query(), mget_body())
            .prop_map(|(m, q, b)| Case::new(m, "/mget".into(), q, b)),
        1 => (method_mostly(Method::POST), query(), mset_body())
            .prop_map(|(m, q, b)| Case::new(m, "/mset".into(), q, b)),
        1 => (method_mostly(Method::GET), scan_query(), any_body())
            .prop_map(|(m, q, b)| Case::new(m, "/keys".into(), q, b)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Checks

struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    body: Bytes,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:?}) {:?}",
            self.status, self.content_type, self.body
        )
    }
}

struct Target {
    client: Client<HttpConnector, Full<Bytes>>,
    addr: std::net::SocketAddr,
    base: String,
    known: Json,
}

/// Why a request got no answer.
#[derive(Debug)]
enum NoAnswer {
    /// The connection failed (refused, reset, closed early).
    Transport(String),
    /// Nothing came back within [`ANSWER_TIMEOUT`]: the server hangs.
    Timeout,
}

impl fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoAnswer::Transport(e) => write!(f, "no answer: {e}"),
            NoAnswer::Timeout => write!(f, "no answer within {ANSWER_TIMEOUT:?}"),
        }
    }
}

impl Target {
    async fn send(&self, method: Method, target: &str, body: &Body) -> Result<Answer, NoAnswer> {
        let body = match body {
            Body::Bytes(b) => b.clone(),
            Body::Huge { len, byte } => return self.send_huge(method, target, *len, *byte).await,
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{target}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| NoAnswer::Transport(format!("request not built: {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| NoAnswer::Transport(format!("{e:?}")))?;
            let status = resp.status();
            let content_type = resp
                .headers()
                .get("content-type")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| NoAnswer::Transport(format!("body not read: {e}")))?
                .to_bytes();
            Ok(Answer {
                status,
                content_type,
                body,
            })
        };
        tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| NoAnswer::Timeout)?
    }

    /// Sends a body over the limit while reading the answer. The server answers such a request
    /// without reading the body and closes the connection; hyper's client then often reports its
    /// own failed write (broken pipe, incomplete message) instead of the answer that did arrive,
    /// so this writes the request by hand and reads what comes back, as curl would.
    async fn send_huge(
        &self,
        method: Method,
        target: &str,
        len: usize,
        byte: u8,
    ) -> Result<Answer, NoAnswer> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n"
        );
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| NoAnswer::Transport(e.to_string()))?;
        let (mut reader, mut writer) = stream.into_split();
        let write = tokio::spawn(async move {
            writer.write_all(head.as_bytes()).await?;
            let chunk = vec![byte; 64 << 10];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                writer.write_all(&chunk[..n]).await?;
                left -= n;
            }
            Ok::<_, std::io::Error>(writer)
        });
        let mut raw = Vec::new();
        let read = tokio::time::timeout(ANSWER_TIMEOUT, reader.read_to_end(&mut raw)).await;
        // The write fails once the server closes the connection; only the answer matters.
        write.abort();
        match read {
            Err(_) => return Err(NoAnswer::Timeout),
            Ok(Err(e)) if raw.is_empty() => return Err(NoAnswer::Transport(e.to_string())),
            Ok(_) => {}
        }
        parse_answer(&method, &raw).ok_or_else(|| {
            NoAnswer::Transport(format!(
                "not an HTTP answer: {:?}",
                String::from_utf8_lossy(&raw)
            ))
        })
    }

    async fn get_json(&self, target: &str) -> Result<(StatusCode, Json), String> {
        let answer = self
            .send(Method::GET, target, &Body::Bytes(Bytes::new()))
            .await
            .map_err(|e| format!("GET {target}: {e}"))?;
        let json = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("GET {target}: body is not JSON ({e}): {answer:?}"))?;
        Ok((answer.status, json))
    }

    /// Whether the node still answers and still holds [`KNOWN_KEY`] unchanged.
    async fn still_sound(&self) -> Result<(), String> {
        let (status, health) = self.get_json("/health").await?;
        if status != StatusCode::OK || health["status"] != "ok" {
            return Err(format!("/health answered {status} {health}"));
        }
        let (status, known) = self
            .get_json(&format!("/kv/{}", encode_key(KNOWN_KEY)))
            .await?;
        if (status, &known) != (StatusCode::OK, &self.known) {
            return Err(format!(
                "{KNOWN_KEY:?} now reads {status} {known}, not {}",
                self.known
            ));
        }
        Ok(())
    }
}

/// Reads an HTTP/1.1 answer to `method` whose body runs to the end of the connection.
fn parse_answer(method: &Method, raw: &[u8]) -> Option<Answer> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    let status = StatusCode::from_bytes(status.as_bytes()).ok()?;
    let mut content_type = None;
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(value.trim().to_owned()),
            "content-length" => length = value.trim().parse::<usize>().ok(),
            _ => {}
        }
    }
    let body = &raw[split + 4..];
    // A HEAD answer's length is that of the GET answer it stands for.
    if *method != Method::HEAD && length.is_some_and(|len| len != body.len()) {
        return None;
    }
    Some(Answer {
        status,
        content_type,
        body: Bytes::copy_from_slice(body),
    })
}

fn fail(message: String) -> TestCaseError {
    TestCaseError::fail(message)
}

/// The shape of an error body: a known code, with the status that code maps to.
fn check_error(case: &Case, answer: &Answer, json: &Json) -> Result<(), TestCaseError> {
    let error = &json["error"];
    let (Some(code), Some(_message)) = (error["code"].as_str(), error["message"].as_str()) else {
        return Err(fail(format!("not an error body: {answer:?}")));
    };
    if case.is_peer_call() {
        // The peer endpoint's refusals are its own (and may soon include a missing secret).
        prop_assert!(answer.status.is_client_error(), "peer endpoint: {answer:?}");
        return Ok(());
    }
    let code = ErrorCode::from_name(code);
    prop_assert_ne!(code, ErrorCode::Unrecognized, "{:?}", answer);
    // A failed precondition answers 409 with the current entry beside the error.
    if matches!(code, ErrorCode::VersionMismatch | ErrorCode::KeyExists) {
        prop_assert!(json.get("current").is_some(), "{:?}", answer);
    }
    prop_assert_eq!(answer.status, kvserver::error::status(code), "{:?}", answer);
    Ok(())
}

/// The shape of a success body.
fn check_success(case: &Case, answer: &Answer, json: &Json) -> Result<(), TestCaseError> {
    prop_assert!(json.is_object(), "{:?}", answer);
    prop_assert!(json.get("error").is_none(), "{:?}", answer);
    let path = case.path();
    let entry_endpoint = path == "/set" || path.starts_with("/get/") || path.starts_with("/kv/");
    if entry_endpoint && case.method != Method::DELETE {
        prop_assert!(
            json["key"].is_string()
                && json["encoding"].is_string()
                && json["version"].is_u64()
                && json.get("value").is_some(),
            "not an entry: {:?}",
            answer
        );
    } else if entry_endpoint {
        prop_assert_eq!(&json["deleted"], &json!(true), "{:?}", answer);
    }
    Ok(())
}

/// What the cases got, so a run that never reached the server's logic fails instead of passing
/// vacuously.
#[derive(Debug, Default)]
struct Tally {
    /// Successes of the client endpoints.
    succeeded: usize,
    /// JSON errors of the client endpoints, by status.
    refused: std::collections::BTreeMap<u16, usize>,
    /// Frames the peer endpoint refused.
    peer_refused: usize,
}

async fn check(
    target: &Target,
    tally: &std::sync::Mutex<Tally>,
    case: Case,
) -> Result<(), TestCaseError> {
    if case.target.parse::<Uri>().is_err() || case.names_known_key() {
        return Err(TestCaseError::reject("not a request for this property"));
    }
    let answer = target
        .send(case.method.clone(), &case.target, &case.body)
        .await
        .map_err(|e| fail(e.to_string()))?;
    prop_assert!(!answer.status.is_server_error(), "{:?}", answer);
    if case.method == Method::HEAD {
        // No body by definition; the status was the whole answer.
    } else if case.is_peer_call() && answer.status == StatusCode::OK {
        // Junk that happened to decode as a frame: the answer is a reply frame.
        prop_assert_eq!(
            answer.content_type.as_deref(),
            Some("application/octet-stream")
        );
        prop_assert!(answer.body.starts_with(&PROTOCOL_VERSION.to_le_bytes()));
    } else if case.is_status_page() {
        prop_assert_eq!(answer.status, StatusCode::OK);
        prop_assert_eq!(
            answer.content_type.as_deref(),
            Some("text/html; charset=utf-8")
        );
        prop_assert!(answer.body.starts_with(b"<!DOCTYPE html>"), "{:?}", answer);
    } else {
        prop_assert_eq!(
            answer.content_type.as_deref(),
            Some("application/json"),
            "{:?}",
            answer
        );
        let json: Json = serde_json::from_slice(&answer.body)
            .map_err(|e| fail(format!("body is not JSON ({e}): {answer:?}")))?;
        if answer.status.is_success() {
            check_success(&case, &answer, &json)?;
        } else {
            check_error(&case, &answer, &json)?;
        }
        let mut tally = tally.lock().unwrap();
        match (case.is_peer_call(), answer.status.is_success()) {
            (true, _) => tally.peer_refused += 1,
            (false, true) => tally.succeeded += 1,
            (false, false) => *tally.refused.entry(answer.status.as_u16()).or_default() += 1,
        }
    }
    target.still_sound().await.map_err(fail)
}

#[test]
fn random_requests_get_json_answers_and_never_a_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = rt
        .block_on(
            LocalCluster::builder()
                .nodes(1)
                .configure(|c| c.replicas = 1)
                .start(),
        )
        .unwrap();
    let mut target = Target {
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        addr: cluster.addr(0),
        base: cluster.url(0),
        known: Json::Null,
    };
    let written = rt.block_on(target.send(
        Method::PUT,
        &format!("/kv/{}", encode_key(KNOWN_KEY)),
        &Body::text(json!({"value": {"a": [1, "☃"]}, "encoding": "json"}).to_string()),
    ));
    let written = written.unwrap();
    assert_eq!(written.status, StatusCode::OK, "{written:?}");
    target.known = serde_json::from_slice(&written.body).unwrap();
    rt.block_on(target.still_sound()).unwrap();

    let tally = std::sync::Mutex::new(Tally::default());
    let cases = 200;
    let result = TestRunner::new(config(cases))
        .run(&case(), |case| rt.block_on(check(&target, &tally, case)));
    // Stop the node before reporting, so a failure does not leave it running.
    rt.block_on(cluster.shutdown());
    if let Err(e) = result {
        panic!("{e}");
    }
    // Only meaningful with enough cases; `PROPTEST_CASES=1` must still pass.
    if config(cases).cases >= 100 {
        let tally = tally.into_inner().unwrap();
        let reached = tally.succeeded >= 10
            && tally.peer_refused >= 5
            && [400, 404, 405, 409]
                .iter()
                .all(|s| tally.refused.contains_key(s));
        assert!(reached, "the cases did not reach every outcome: {tally:?}");
    }
}

#[tokio::test]
async fn a_refused_peer_frame_cannot_fence_off_a_node() {
    let cluster = LocalCluster::builder()
        .nodes(3)
        .configure(|c| c.replicas = 3)
        .start()
        .await
        .unwrap();
    // Sent with the cluster's secret: an authenticated peer on a stale epoch.
    let peers = Peers::new(Arc::new(HttpTransport::new(HttpTransportConfig {
        secret: cluster.secret().cloned(),
        ..Default::default()
    })));
    let forged = Header {
        from: NodeId(1),
        incarnation: u64::MAX,
        epoch: 12345,
        request_id: 1,
        hops: 1,
    };
    // A later incarnation a clock could give, on a map epoch no node is at.
    let stale_epoch = Header {
        incarnation: cluster.node(1).incarnation() + 1_000_000,
        ..forged
    };
    for to in [0, 2] {
        let to_node = NodeInfo {
            id: NodeId(to),
            addr: cluster.addr(to as usize).to_string(),
        };
        for header in [&forged, &stale_epoch] {
            let read = Read { key: "k".into() };
            let e = peers.call(&to_node, header, &read).await.unwrap_err();
            assert!(e.remote_code().is_some(), "{e}");
            // Heartbeats are answered whatever the epoch, and still leave no trace.
            let _ = peers.call(&to_node, header, &Ping).await;
        }
    }
    let http = crate::util::Http::new();
    for i in 0..3 {
        for node in 0..3 {
            let url = format!("{}/kv/after-{i}-{node}", cluster.url(node));
            let (status, body) = http.put(&url, r#"{"value": "v"}"#).await;
            assert_eq!(status, StatusCode::OK, "write via node {node}: {body}");
        }
    }
    cluster.shutdown().await;
}
