//! The OpenAPI description (`kvserver/openapi.json`, served at `GET /openapi.json`) against the
//! code: the router's endpoints and methods are exactly the description's operations, its error
//! codes are every code, and every answer of every operation, success and error, has a status
//! the operation documents and a body that matches the schema given for that status.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, ALLOW, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use kvcore::ErrorCode;
use kvserver::api::{Endpoint, OPENAPI};
use kvserver::LocalCluster;
use serde_json::{json, Value as Json};

use crate::util::poll;

fn spec() -> Json {
    serde_json::from_str(OPENAPI).expect("kvserver/openapi.json is JSON")
}

/// Every (path, method) the router serves to clients, methods in lower case as OpenAPI spells
/// them.
fn routed_operations() -> BTreeSet<(String, String)> {
    Endpoint::ALL
        .iter()
        .filter(|e| e.is_client())
        .flat_map(|e| {
            e.allow()
                .split(", ")
                .map(|m| (e.path().to_owned(), m.to_lowercase()))
        })
        .collect()
}

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

#[test]
fn the_description_lists_exactly_the_routers_client_endpoints() {
    let spec = spec();
    let documented: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| METHODS.contains(&k.as_str()))
                .map(move |m| (path.clone(), m.clone()))
        })
        .collect();
    assert_eq!(documented, routed_operations());
    assert!(spec["paths"].get(kvnet::RPC_PATH).is_none());
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1."));
}

#[test]
fn the_descriptions_error_codes_are_every_code() {
    let spec = spec();
    let documented: BTreeSet<&str> = spec["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let mut codes: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    codes.insert(ErrorCode::Unrecognized.as_str());
    assert_eq!(documented, codes);
}

#[test]
fn paths_find_their_endpoint_and_raw_key() {
    let find = |path| Endpoint::find(path);
    assert_eq!(find("/get/a/b"), Some((Endpoint::Get, Some("a/b"))));
    assert_eq!(
        find("/kv/user%3A42"),
        Some((Endpoint::Kv, Some("user%3A42")))
    );
    // A path ending in /incr is always the increment; the key `a/incr` is `a%2Fincr` there.
    assert_eq!(find("/kv/a/incr"), Some((Endpoint::Incr, Some("a"))));
    assert_eq!(find("/kv/a%2Fincr"), Some((Endpoint::Kv, Some("a%2Fincr"))));
    assert_eq!(find("/openapi.json"), Some((Endpoint::OpenApi, None)));
    assert_eq!(find(kvnet::RPC_PATH), Some((Endpoint::Peer, None)));
    assert_eq!(find("/sets"), None);
    assert_eq!(find("/get"), None);
}

/// An HTTP answer as it came: status, headers and body bytes.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    spec: Json,
}

impl Api {
    fn new() -> Self {
        Api {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            spec: spec(),
        }
    }

    async fn send(&self, method: &Method, url: &str, body: Option<&str>, bearer: &str) -> Answer {
        let mut req = Request::builder().method(method.clone()).uri(url);
        if !bearer.is_empty() {
            req = req.header(AUTHORIZATION, format!("Bearer {bearer}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    /// Calls `method path` on `base` as the operation `template` of the description, checks
    /// that the status is one the operation documents and the body matches the schema it gives
    /// for it, and returns the answer.
    async fn check(
        &self,
        base: &str,
        method: Method,
        template: &str,
        path: &str,
        body: Option<&str>,
        bearer: &str,
    ) -> (StatusCode, Json) {
        let answer = self
            .send(&method, &format!("{base}{path}"), body, bearer)
            .await;
        let what = format!("{method} {path} {}", body.unwrap_or(""));
        let operation = &self.spec["paths"][template][method.as_str().to_lowercase()];
        assert!(operation.is_object(), "{what}: no operation {template}");
        let status = answer.status.as_str();
        let Some(mut response) = operation["responses"].get(status) else {
            panic!(
                "{what}: status {status} is not documented for {method} {template}: {}",
                String::from_utf8_lossy(&answer.body)
            );
        };
        if let Some(target) = response.get("$ref") {
            let name = target
                .as_str()
                .unwrap()
                .strip_prefix("#/components/responses/")
                .unwrap();
            response = &self.spec["components"]["responses"][name];
        }
        // The status page and the metrics are the answers that are not JSON: their media type
        // is the one documented, their body text.
        let content = response["content"].as_object().expect("documented content");
        let media = content.keys().next().expect("one media type").as_str();
        let header = answer.headers.get(CONTENT_TYPE).unwrap().to_str().unwrap();
        if media != "application/json" {
            assert!(header.starts_with(media), "{what}: {header}, not {media}");
            let text = String::from_utf8(answer.body.to_vec()).expect("a text body");
            assert!(!text.is_empty(), "{what}: an empty body");
            return (answer.status, Json::String(text));
        }
        assert_eq!(header, "application/json", "{what}");
        let json: Json = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("{what}: the body is not JSON: {e}"));
        // The response's schema, with the description's components beside it so that its
        // `#/components/...` references resolve.
        let mut schema = response["content"]["application/json"]["schema"].clone();
        assert!(schema.is_object(), "{what}: no JSON schema for {status}");
        schema["components"] = self.spec["components"].clone();
        let validator = jsonschema::draft202012::new(&schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: {status} {json} does not match its schema: {errors:?}"
        );
        (answer.status, json)
    }
}

#[tokio::test]
async fn openapi_json_is_served_as_the_file() {
    let cluster = LocalCluster::builder().nodes(1).start().await.unwrap();
    let api = Api::new();
    let answer = api
        .send(
            &Method::GET,
            &format!("{}/openapi.json", cluster.url(0)),
            None,
            "",
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers.get(CONTENT_TYPE).unwrap(),
        "application/json"
    );
    assert_eq!(answer.body, OPENAPI.as_bytes());
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_method_an_endpoint_does_not_take_is_405_with_its_allow_header() {
    let cluster = LocalCluster::builder().nodes(1).start().await.unwrap();
    let api = Api::new();
    for endpoint in Endpoint::ALL.iter().filter(|e| e.is_client()) {
        let path = endpoint.path().replace("{key}", "k");
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            if endpoint.takes(&method) {
                continue;
            }
            let url = format!("{}{path}", cluster.url(0));
            let answer = api.send(&method, &url, Some("{}"), "").await;
            assert_eq!(
                answer.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(
                answer.headers.get(ALLOW).unwrap(),
                endpoint.allow(),
                "{method} {path}"
            );
            let json: Json = serde_json::from_slice(&answer.body).unwrap();
            assert_eq!(json["error"]["code"], "method_not_allowed");
        }
    }
    cluster.shutdown().await;
}

/// A request to one operation: method, the operation's path template, the path, the body, and
/// the status and error code expected (no code for a success).
type Case = (
    Method,
    &'static str,
    String,
    Option<String>,
    StatusCode,
    &'static str,
);

/// What every operation answers, success and each error a client can provoke, through a node
/// that coordinates some keys itself and forwards others; then the answers of a key whose
/// replicas are mostly down.
#[tokio::test]
async fn every_answer_matches_the_schema_its_operation_documents() {
    let mut cluster = LocalCluster::builder()
        .nodes(3)
        .configure(|c| {
            c.max_value_bytes = 4096;
            c.max_memory = Some(64 << 10);
        })
        .start()
        .await
        .unwrap();
    let secret = cluster.secret().unwrap().to_text();
    let api = Api::new();
    let base = cluster.url(0);
    let ok = StatusCode::OK;
    let cases: Vec<Case> = {
        use Method as M;
        let s = |t: &str| Some(t.to_owned());
        vec![
            // Writes, and the conditions they refuse.
            (
                M::PUT,
                "/kv/{key}",
                "/kv/k1".into(),
                s(r#"{"value": "v", "ttl_ms": 60000}"#),
                ok,
                "",
            ),
            (
                M::POST,
                "/set",
                "/set".into(),
                s(r#"{"key": "n", "value": "41", "encoding": "integer"}"#),
                ok,
                "",
            ),
            (
                M::PUT,
                "/set",
                "/set".into(),
                s(
                    r#"{"key": "j", "value": {"a": [1, null]}, "encoding": "json", "if_absent": true}"#,
                ),
                ok,
                "",
            ),
            (
                M::POST,
                "/set",
                "/set".into(),
                s(r#"{"key": "b", "value": "3q2+7w==", "encoding": "binary", "if_version": null}"#),
                ok,
                "",
            ),
            (
                M::PUT,
                "/kv/{key}",
                "/kv/f".into(),
                s(r#"{"value": 1.5e0, "encoding": "float", "keep_ttl": true}"#),
                ok,
                "",
            ),
            (
                M::PUT,
                "/kv/{key}",
                "/kv/t".into(),
                s(r#"{"value": "true", "encoding": "boolean"}"#),
                ok,
                "",
            ),
            (
                M::PUT,
                "/kv/{key}",
                "/kv/w".into(),
                s(r#"{"value": 7.0, "encoding": "integer", "ttl_ms": 6e4}"#),
                ok,
                "",
            ),
            (
                M::PUT,
                "/kv/{key}",
                "/kv/k1".into(),
                s(r#"{"value": "x", "if_version": 7}"#),
                StatusCode::CONFLICT,
                "version_mismatch",
            ),
            (
                M::POST,
                "/set",
                "/set".into(),
                s(r#"{"key": "k1", "value": "x", "if_absent": true}"#),
                StatusCode::CONFLICT,
                "key_exists",
            ),
            (
                M::POST,
                "/set",
                "/set".into(),
                s(r#"{"key": "nobody", "value": "x", "if_version": 1}"#),
                StatusCode::CONFLICT,
                "version_mismatch",
            ),
            (
                M::PUT,
                "/kv/{key}",
                "/kv/k1".into(),
                s(r#"{"value": 5, "encoding": "integer", "ttl_ms": 1.5}"#),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                M::PUT,
                "/kv/{key}",
                "/kv/k1".into(),
                s(r#"{"value": "many", "encoding": "integer"}"#),
                StatusCode::BAD_REQUEST,
                "invalid_value",
            ),
            (
                M::PUT,
                "/kv/{key}",
                "/kv/k1".into(),
                s(r#"{"value": 1, "encoding": "integer", "if_version": 1, "if_absent": true}"#),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                M::PUT,
                "/kv/{key}",
                "/kv/k1".into(),
                s(r#"{"value": "v", "encoding": "roman"}"#),
                StatusCode::BAD_REQUEST,
                "unknown_encoding",
            ),
            (
                M::POST,
                "/set",
                "/set".into(),
                s(r#"{"key": "k1", "value": "v""#),
                StatusCode::BAD_REQUEST,
                "malformed_json",
            ),
            (
                M::POST,
                "/set",
                "/set".into(),
                s(r#"{"key": "", "value": "v"}"#),
                StatusCode::BAD_REQUEST,
                "invalid_key",
            ),
            (
                M::POST,
                "/set",
                "/set".into(),
                s(&format!(
                    r#"{{"key": "big", "value": "{}"}}"#,
                    "x".repeat(4097)
                )),
                StatusCode::PAYLOAD_TOO_LARGE,
                "value_too_large",
            ),
            (
                M::PUT,
                "/kv/{key}",
                "/kv/big".into(),
                s(&format!(r#"{{"value": "{}"}}"#, "x".repeat(1 << 20))),
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
            ),
            // Reads.
            (M::GET, "/get/{key}", "/get/k1".into(), None, ok, ""),
            (M::GET, "/kv/{key}", "/kv/n".into(), None, ok, ""),
            (M::GET, "/kv/{key}", "/kv/j".into(), None, ok, ""),
            (
                M::GET,
                "/get/{key}",
                "/get/nobody".into(),
                None,
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                M::GET,
                "/kv/{key}",
                "/kv/nobody".into(),
                None,
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                M::GET,
                "/get/{key}",
                format!("/get/{}", "k".repeat(1025)),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_key",
            ),
            (
                M::GET,
                "/kv/{key}",
                "/kv/%FF".into(),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_key",
            ),
            // Increments.
            (
                M::POST,
                "/kv/{key}/incr",
                "/kv/n/incr".into(),
                s(r#"{"by": 2}"#),
                ok,
                "",
            ),
            (
                M::POST,
                "/kv/{key}/incr",
                "/kv/fresh/incr".into(),
                s("{}"),
                ok,
                "",
            ),
            (
                M::POST,
                "/kv/{key}/incr",
                "/kv/k1/incr".into(),
                s("{}"),
                StatusCode::BAD_REQUEST,
                "not_an_integer",
            ),
            (
                M::POST,
                "/kv/{key}/incr",
                "/kv/n/incr".into(),
                s(r#"{"by": 9223372036854775807}"#),
                StatusCode::BAD_REQUEST,
                "overflow",
            ),
            (
                M::POST,
                "/kv/{key}/incr",
                "/kv/n/incr".into(),
                s(r#"{"by": "one"}"#),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            // Deletes.
            (M::DELETE, "/kv/{key}", "/kv/t".into(), None, ok, ""),
            (
                M::DELETE,
                "/kv/{key}",
                "/kv/t".into(),
                None,
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            // Batches.
            (
                M::POST,
                "/mget",
                "/mget".into(),
                s(r#"{"keys": ["k1", "nobody", 7, "", "n"]}"#),
                ok,
                "",
            ),
            (
                M::POST,
                "/mget",
                "/mget".into(),
                s(r#"{"keys": []}"#),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                M::POST,
                "/mget",
                "/mget".into(),
                s(&format!(r#"{{"keys": {}}}"#, json!(vec!["k"; 1001]))),
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
            ),
            (
                M::POST,
                "/mset",
                "/mset".into(),
                s(
                    r#"{"entries": [{"key": "m1", "value": "x"}, {"key": "k1", "value": "y", "if_absent": true}, {"value": "no key"}, 3]}"#,
                ),
                ok,
                "",
            ),
            (
                M::POST,
                "/mset",
                "/mset".into(),
                s(r#"{"entries": {}}"#),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            // Scans.
            (
                M::GET,
                "/keys",
                "/keys?prefix=k&limit=1".into(),
                None,
                ok,
                "",
            ),
            (M::GET, "/keys", "/keys".into(), None, ok, ""),
            (
                M::GET,
                "/keys",
                "/keys?cursor=zz".into(),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                M::GET,
                "/keys",
                "/keys?limit=0".into(),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            // Operations.
            (M::GET, "/health", "/health".into(), None, ok, ""),
            (M::GET, "/livez", "/livez".into(), None, ok, ""),
            (M::GET, "/cluster", "/cluster".into(), None, ok, ""),
            (M::GET, "/stats", "/stats".into(), None, ok, ""),
            (M::GET, "/", "/".into(), None, ok, ""),
            (M::GET, "/metrics", "/metrics".into(), None, ok, ""),
            (
                M::GET,
                "/cluster/overview",
                "/cluster/overview".into(),
                None,
                ok,
                "",
            ),
            (
                M::GET,
                "/openapi.json",
                "/openapi.json".into(),
                None,
                ok,
                "",
            ),
            // Membership: refused without the secret, or for what it names.
            (
                M::POST,
                "/cluster/join",
                "/cluster/join".into(),
                s(r#"{"addr": "127.0.0.1:1"}"#),
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
            ),
            (
                M::POST,
                "/cluster/remove",
                "/cluster/remove".into(),
                s(r#"{"node": 1}"#),
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
            ),
            (
                M::POST,
                "/cluster/join",
                "/cluster/join".into(),
                s(r#"{"addr": "nowhere"}"#),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                M::POST,
                "/cluster/remove",
                "/cluster/remove".into(),
                s(r#"{"node": 99}"#),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
        ]
    };
    let mut seen = BTreeSet::new();
    for (method, template, path, body, expected, code) in &cases {
        let bearer = if path.starts_with("/cluster/") && *expected != StatusCode::UNAUTHORIZED {
            secret.as_str()
        } else {
            ""
        };
        let (status, json) = api
            .check(
                &base,
                method.clone(),
                template,
                path,
                body.as_deref(),
                bearer,
            )
            .await;
        assert_eq!(status, *expected, "{method} {path}: {json}");
        if !code.is_empty() {
            assert_eq!(json["error"]["code"], *code, "{method} {path}: {json}");
        }
        seen.insert((template.to_string(), method.as_str().to_lowercase()));
    }
    // Every operation answered at least once.
    assert_eq!(seen, routed_operations());

    // Over the memory budget: 507 with its documented body.
    let value = "v".repeat(4000);
    let full = poll(
        "a write refused for memory",
        Duration::from_secs(30),
        || {
            let api = &api;
            let base = &base;
            let value = &value;
            async move {
                for i in 0..20 {
                    let body = format!(
                        r#"{{"key": "fill{i}-{}", "value": "{value}"}}"#,
                        rand::random::<u32>()
                    );
                    let (status, json) = api
                        .check(base, Method::POST, "/set", "/set", Some(&body), "")
                        .await;
                    if status == StatusCode::INSUFFICIENT_STORAGE {
                        return Some(json);
                    }
                }
                None
            }
        },
    )
    .await;
    assert_eq!(full["error"]["code"], "memory_full");

    // With two of three replicas down, every key is unavailable: 503 or 504, as documented.
    cluster.stop_node(1).await;
    cluster.stop_node(2).await;
    let unavailable = [
        (Method::GET, "/kv/{key}", "/kv/k1", None),
        (
            Method::PUT,
            "/kv/{key}",
            "/kv/k1",
            Some(r#"{"value": "late"}"#),
        ),
        (
            Method::POST,
            "/mget",
            "/mget",
            Some(r#"{"keys": ["k1", "n"]}"#),
        ),
        (Method::GET, "/keys", "/keys", None),
    ];
    for (method, template, path, body) in unavailable {
        let (status, json) = api
            .check(&base, method.clone(), template, path, body, "")
            .await;
        assert!(
            status.is_success() && template == "/mget" || matches!(status.as_u16(), 503 | 504),
            "{method} {path}: {status} {json}"
        );
    }
    cluster.shutdown().await;
}
