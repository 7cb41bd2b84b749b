//! What [`Client`](super::Client) sends and gets back: the typed results of its calls, and the
//! JSON bodies of the API's requests and answers.
//!
//! The result types serialize as the API's own JSON (an [`Entry`] as
//! `{"encoding", "key", "value", "version", "ttl_ms"?}`), so a program can print what the node
//! answered without keeping the raw body.

use std::fmt;
use std::time::Duration;

use kvcore::{Encoding, ErrorCode, JsonView, NodeId, Precondition, Value, Version};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::transport::ErrorDetail;

/// A key with its value, as a node returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "EntryBody")]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The typed value.
    pub value: Value,
    /// Its version: every write and delete of the key moves it up.
    pub version: Version,
    /// The time left before the key expires, when it was written with a TTL (in whole
    /// milliseconds, as the node counted it when it answered).
    pub ttl: Option<Duration>,
}

impl Entry {
    /// The value and version, as kvcore keeps them, with the expiry time counted from this
    /// machine's clock (now plus the time that was left when the node answered).
    pub fn into_core(self) -> kvcore::Entry {
        let expires = self.ttl.map(|ttl| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            (now + ttl).as_millis() as u64
        });
        kvcore::Entry {
            value: self.value,
            version: self.version,
            expires,
        }
    }
}

impl From<Entry> for kvcore::Entry {
    fn from(entry: Entry) -> Self {
        entry.into_core()
    }
}

/// `key = value (encoding, version N[, expires in T])`, the value in its JSON shape.
impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {} ({}, version {}",
            self.key,
            self.value.to_json(),
            self.value.encoding(),
            self.version
        )?;
        if let Some(ttl) = self.ttl {
            write!(f, ", expires in {}", human_duration(ttl))?;
        }
        f.write_str(")")
    }
}

/// The API's entry: `{"key", "value", "encoding", "version", "ttl_ms"?}`. Fields unknown here
/// are ignored, so a newer node's additions do not break an older client.
#[derive(Serialize, Deserialize)]
struct EntryBody {
    encoding: Encoding,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl_ms: Option<u64>,
    value: Json,
    version: Version,
}

impl TryFrom<EntryBody> for Entry {
    type Error = kvcore::Error;

    fn try_from(body: EntryBody) -> Result<Self, Self::Error> {
        Ok(Entry {
            value: Value::from_json(body.encoding, &body.value)?,
            key: body.key,
            version: body.version,
            ttl: body.ttl_ms.map(Duration::from_millis),
        })
    }
}

impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            encoding: Encoding,
            key: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            ttl_ms: Option<u64>,
            value: JsonView<'a>,
            version: Version,
        }
        View {
            encoding: self.value.encoding(),
            key: &self.key,
            ttl_ms: self.ttl.map(ttl_ms),
            value: self.value.as_json(),
            version: self.version,
        }
        .serialize(s)
    }
}

/// A conditional write that was not applied because its precondition did not hold: an
/// expected outcome, so [`Client::set_with`](super::Client::set_with) returns it as a value
/// (`Ok(Err(conflict))`). It is also an error type, for callers that treat it as one (`?`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct Conflict {
    /// The key written.
    pub key: String,
    /// [`ErrorCode::VersionMismatch`] for `if_version`, [`ErrorCode::KeyExists`] for
    /// `if_absent`.
    pub code: ErrorCode,
    /// The node's explanation, for people.
    pub message: String,
    /// What the key held when the write was refused; `None` if it did not exist.
    pub current: Option<Entry>,
}

impl Conflict {
    /// The body of a 409 answer to a conditional write, if it is one.
    pub(crate) fn from_answer(key: &str, body: &[u8]) -> Option<Conflict> {
        #[derive(Deserialize)]
        struct ConflictBody {
            error: ErrorDetail,
            current: Option<Entry>,
        }
        let body: ConflictBody = serde_json::from_slice(body).ok()?;
        matches!(
            body.error.code,
            ErrorCode::VersionMismatch | ErrorCode::KeyExists
        )
        .then(|| Conflict {
            key: key.to_owned(),
            code: body.error.code,
            message: body.error.message,
            current: body.current,
        })
    }
}

/// As the node answered it: `{"error": {"code", "message"}, "current": entry | null}`.
impl Serialize for Conflict {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Detail<'a> {
            code: ErrorCode,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            current: &'a Option<Entry>,
            error: Detail<'a>,
        }
        Body {
            current: &self.current,
            error: Detail {
                code: self.code,
                message: &self.message,
            },
        }
        .serialize(s)
    }
}

/// A key that a delete removed. Serializes as the API's `{"key", "deleted": true, "version"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// The key.
    pub key: String,
    /// Always `true`: a delete of a missing key is `Ok(None)`, not a `Deleted`.
    #[serde(default = "yes")]
    pub deleted: bool,
    /// The version the key had when it was deleted.
    pub version: Version,
}

fn yes() -> bool {
    true
}

/// One key of a batch that failed: `{"key", "error": {"code", "message"}}` in the API, with
/// `"current"` when a write's condition failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message} ({code})")]
pub struct KeyError {
    /// The key.
    pub key: String,
    /// The error's stable code.
    pub code: ErrorCode,
    /// The node's explanation, for people.
    pub message: String,
    /// For a write whose condition failed ([`ErrorCode::VersionMismatch`],
    /// [`ErrorCode::KeyExists`]): what the key held then (`None` if it did not exist). `None`
    /// for every other error.
    pub current: Option<Box<Entry>>,
}

impl KeyError {
    /// The HTTP status the code has when a single-key request fails with it.
    pub fn status(&self) -> u16 {
        crate::error::status(self.code).as_u16()
    }

    /// Whether asking again may succeed (a 503 or 504 code).
    pub fn is_transient(&self) -> bool {
        matches!(self.status(), 503 | 504)
    }

    /// Whether this key's write may have taken effect although it failed.
    pub fn may_have_applied(&self) -> bool {
        self.code == ErrorCode::OutcomeUnknown
    }
}

/// One page of `GET /keys`: keys in the node's order, and where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeysPage {
    /// The keys of this page.
    pub keys: Vec<String>,
    /// Give it back for the next page; `None` when this was the last one. Opaque.
    pub cursor: Option<String>,
}

/// What `GET /health` answers: the state of the node that answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`; or `recovering`, `seeding` or `removed` (answered with 503).
    pub status: String,
    /// The node that answered.
    pub node: NodeId,
    /// Its incarnation: changes when the node restarts.
    #[serde(default)]
    pub incarnation: u64,
    /// The epoch of its cluster map.
    #[serde(default)]
    pub epoch: u64,
    /// How long it has run.
    #[serde(default)]
    pub uptime_seconds: u64,
}

impl Health {
    /// Whether the node serves (`status` is `ok`).
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

/// How [`Client::set_with`](super::Client::set_with) writes. Built with chained calls:
///
/// ```
/// # use std::time::Duration;
/// use kvserver::SetOptions;
/// let options = SetOptions::new().if_absent().ttl(Duration::from_secs(30));
/// # assert!(!options.keep_ttl);
/// ```
///
/// The encoding is the value's own ([`kvcore::Value`] carries it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// What the key's current state must be for the write to apply (default: none).
    pub precondition: Precondition,
    /// Expire the key this long after the write (sent in whole milliseconds, rounded up).
    pub ttl: Option<Duration>,
    /// Without `ttl`: keep the key's current expiry, instead of writing a key that never
    /// expires.
    pub keep_ttl: bool,
}

impl SetOptions {
    /// An unconditional write without expiry.
    pub fn new() -> Self {
        SetOptions::default()
    }

    /// Write only if the key exists at exactly `version`.
    pub fn if_version(mut self, version: Version) -> Self {
        self.precondition = Precondition::IfVersion(version);
        self
    }

    /// Write only if the key does not exist.
    pub fn if_absent(mut self) -> Self {
        self.precondition = Precondition::IfAbsent;
        self
    }

    /// Expire the key `ttl` after the write.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Keep the key's current expiry.
    pub fn keep_ttl(mut self) -> Self {
        self.keep_ttl = true;
        self
    }
}

/// One write of [`Client::mset`](super::Client::mset): `(key, value)` converts into one. It
/// takes the options of a single write, with the same chained calls:
///
/// ```
/// # use std::time::Duration;
/// # use kvcore::Version;
/// use kvserver::client::SetItem;
/// let items = [
///     SetItem::new("session:1", "abc").if_absent().ttl(Duration::from_secs(60)),
///     SetItem::new("visits", 42).if_version(Version(7)).keep_ttl(),
/// ];
/// # assert!(items[1].options.keep_ttl);
/// ```
///
/// An item whose precondition does not hold fails on its own, with `version_mismatch` or
/// `key_exists` in its [`KeyError`]; the rest of the batch is unaffected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetItem {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Value,
    /// How it is written: precondition and expiry, as for
    /// [`Client::set_with`](super::Client::set_with).
    pub options: SetOptions,
}

impl SetItem {
    /// An unconditional write of `value` to `key`, without expiry.
    pub fn new(key: impl Into<String>, value: impl Into<Value>) -> Self {
        SetItem {
            key: key.into(),
            value: value.into(),
            options: SetOptions::new(),
        }
    }

    /// The same write, as `options` say (replacing any option set before).
    pub fn with(mut self, options: SetOptions) -> Self {
        self.options = options;
        self
    }

    /// The same write, only if the key exists at exactly `version`.
    pub fn if_version(mut self, version: Version) -> Self {
        self.options = self.options.if_version(version);
        self
    }

    /// The same write, only if the key does not exist.
    pub fn if_absent(mut self) -> Self {
        self.options = self.options.if_absent();
        self
    }

    /// The same write, expiring `ttl` after it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options = self.options.ttl(ttl);
        self
    }

    /// The same write, keeping the key's current expiry.
    pub fn keep_ttl(mut self) -> Self {
        self.options = self.options.keep_ttl();
        self
    }
}

impl<K: Into<String>, V: Into<Value>> From<(K, V)> for SetItem {
    fn from((key, value): (K, V)) -> Self {
        SetItem::new(key, value)
    }
}

/// A TTL in the API's whole milliseconds, rounded up so that a short TTL does not become 0.
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// A duration as people read it, rounded to its last unit: `250ms`, `9.5s`, `12m30s`, `3h5m`.
///
/// Rounded to the nearest, not cut: a TTL of 30 minutes that the node reports a few
/// milliseconds later as 1 799 996 ms reads `30m0s`, not `29m59s`.
pub fn human_duration(d: Duration) -> String {
    // Each unit rounded from the exact duration: rounding an already rounded figure could
    // carry twice (3h5m29.9996s would become 3h5m30s, then 3h6m).
    let nanos = d.as_nanos();
    let rounded = |unit: u128| (nanos + unit / 2) / unit;
    let ms = rounded(1_000_000);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let tenths = rounded(100_000_000);
    if tenths < 600 {
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    let s = rounded(1_000_000_000);
    if s < 3600 {
        return format!("{}m{}s", s / 60, s % 60);
    }
    let m = rounded(60_000_000_000);
    format!("{}h{}m", m / 60, m % 60)
}

/// Body of `PUT /kv/{key}`.
#[derive(Serialize)]
pub(crate) struct PutBody<'a> {
    pub value: JsonView<'a>,
    pub encoding: Encoding,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub if_version: Option<Version>,
    #[serde(skip_serializing_if = "is_false")]
    pub if_absent: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(skip_serializing_if = "is_false")]
    pub keep_ttl: bool,
}

impl<'a> PutBody<'a> {
    pub fn new(value: &'a Value, options: &SetOptions) -> Self {
        let (if_version, if_absent) = match options.precondition {
            Precondition::None => (None, false),
            Precondition::IfVersion(v) => (Some(v), false),
            Precondition::IfAbsent => (None, true),
        };
        PutBody {
            value: value.as_json(),
            encoding: value.encoding(),
            if_version,
            if_absent,
            ttl_ms: options.ttl.map(ttl_ms),
            keep_ttl: options.keep_ttl,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !b
}

/// Body of `POST /kv/{key}/incr`.
#[derive(Serialize)]
pub(crate) struct IncrBody {
    pub by: i64,
}

/// Body of `POST /mget`.
#[derive(Serialize)]
pub(crate) struct MgetBody<'a> {
    pub keys: &'a [String],
}

/// Body of `POST /mset`.
#[derive(Serialize)]
pub(crate) struct MsetBody<'a> {
    pub entries: Vec<MsetEntry<'a>>,
}

/// One entry of `POST /mset`: the key, and the body a single `PUT` of it would have.
#[derive(Serialize)]
pub(crate) struct MsetEntry<'a> {
    pub key: &'a str,
    #[serde(flatten)]
    pub write: PutBody<'a>,
}

impl<'a> From<&'a SetItem> for MsetEntry<'a> {
    fn from(item: &'a SetItem) -> Self {
        MsetEntry {
            key: &item.key,
            write: PutBody::new(&item.value, &item.options),
        }
    }
}

/// One element of a batch answer: a key's failure, or its entry.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Slot {
    // First: an entry has no `error`, so it never reads as a failure.
    Failed {
        key: String,
        error: ErrorDetail,
        #[serde(default)]
        current: Option<Entry>,
    },
    Found(Entry),
}

impl Slot {
    pub fn into_result(self) -> Result<Entry, KeyError> {
        match self {
            Slot::Found(entry) => Ok(entry),
            Slot::Failed {
                key,
                error,
                current,
            } => Err(KeyError {
                key,
                code: error.code,
                message: error.message,
                current: current.map(Box::new),
            }),
        }
    }
}

/// Answer of `POST /mget`: `entry | null | {"key", "error"}` per key, in order.
#[derive(Deserialize)]
pub(crate) struct MgetAnswer {
    pub entries: Vec<Option<Slot>>,
}

/// The part of `GET /cluster` that discovery reads: `{"nodes": [{"id", "addr", "state"}],
/// "removed": [id]}`.
#[derive(Deserialize)]
pub(crate) struct ClusterMembers {
    nodes: Vec<Member>,
    #[serde(default)]
    removed: Vec<NodeId>,
}

#[derive(Deserialize)]
struct Member {
    id: NodeId,
    addr: String,
    #[serde(default)]
    state: String,
}

impl ClusterMembers {
    /// The addresses of the members that are not removed (`up`, `down`, `recovering`,
    /// `joining`, `leaving`: a node that is down now may be back by the time it is needed).
    pub fn serving(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .filter(|m| m.state != "removed" && !self.removed.contains(&m.id))
            .map(|m| m.addr.as_str())
    }
}

/// Answer of `POST /mset`: `entry | {"key", "error"}` per entry, in order.
#[derive(Deserialize)]
pub(crate) struct MsetAnswer {
    pub results: Vec<Slot>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(key: &str, value: Value, version: u64) -> Entry {
        Entry {
            key: key.into(),
            value,
            version: Version(version),
            ttl: None,
        }
    }

    #[test]
    fn entries_read_every_encoding_typed_and_serialize_back_as_the_api_wrote_them() {
        let cases = [
            (json!("onto"), "string", Value::string("onto")),
            (json!(42), "integer", Value::integer(42)),
            (json!(2.5), "float", Value::float(2.5).unwrap()),
            (json!(true), "boolean", Value::boolean(true)),
            (
                json!("3q2+7w=="),
                "binary",
                Value::binary(vec![0xde, 0xad, 0xbe, 0xef]),
            ),
            (
                json!({"a": [1, null]}),
                "json",
                Value::json(&json!({"a": [1, null]})),
            ),
        ];
        for (value, encoding, typed) in cases {
            let body = json!({"key": "k", "value": value, "encoding": encoding, "version": 3});
            let parsed: Entry = serde_json::from_value(body.clone()).unwrap();
            assert_eq!(parsed, entry("k", typed, 3));
            assert_eq!(serde_json::to_value(&parsed).unwrap(), body);
        }
    }

    #[test]
    fn an_entry_with_a_ttl_reads_and_writes_ttl_ms_and_unknown_fields_are_ignored() {
        let body = json!({"key": "s", "value": "x", "encoding": "string", "version": 1,
                          "ttl_ms": 9500, "from_the_future": true});
        let parsed: Entry = serde_json::from_value(body).unwrap();
        assert_eq!(parsed.ttl, Some(Duration::from_millis(9500)));
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            json!({"key": "s", "value": "x", "encoding": "string", "version": 1, "ttl_ms": 9500})
        );
        assert_eq!(
            parsed.to_string(),
            "s = \"x\" (string, version 1, expires in 9.5s)"
        );
    }

    #[test]
    fn an_entry_whose_value_does_not_match_its_encoding_is_refused() {
        let body = json!({"key": "k", "value": "many", "encoding": "integer", "version": 1});
        assert!(serde_json::from_value::<Entry>(body).is_err());
        let body = json!({"key": "k", "value": 1, "encoding": "decimal", "version": 1});
        assert!(serde_json::from_value::<Entry>(body).is_err());
    }

    #[test]
    fn put_bodies_carry_only_the_options_given() {
        let v = Value::integer(7);
        let plain = serde_json::to_value(PutBody::new(&v, &SetOptions::new())).unwrap();
        assert_eq!(plain, json!({"value": 7, "encoding": "integer"}));
        let options = SetOptions::new()
            .if_version(Version(4))
            .ttl(Duration::from_millis(1500));
        let body = serde_json::to_value(PutBody::new(&v, &options)).unwrap();
        assert_eq!(
            body,
            json!({"value": 7, "encoding": "integer", "if_version": 4, "ttl_ms": 1500})
        );
        let options = SetOptions::new().if_absent().keep_ttl();
        let body = serde_json::to_value(PutBody::new(&Value::string("x"), &options)).unwrap();
        assert_eq!(
            body,
            json!({"value": "x", "encoding": "string", "if_absent": true, "keep_ttl": true})
        );
    }

    #[test]
    fn ttls_round_up_to_whole_milliseconds() {
        assert_eq!(ttl_ms(Duration::from_secs(10)), 10_000);
        assert_eq!(ttl_ms(Duration::from_micros(1)), 1);
        assert_eq!(ttl_ms(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_ms(Duration::ZERO), 0);
        assert_eq!(ttl_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn batch_bodies_are_the_documented_shapes() {
        let keys = vec!["a".to_owned(), "b c".to_owned()];
        assert_eq!(
            serde_json::to_value(MgetBody { keys: &keys }).unwrap(),
            json!({"keys": ["a", "b c"]})
        );
        let items = [
            SetItem::from(("a", 1i64)),
            SetItem::new("b", "x").ttl(Duration::from_secs(2)),
            SetItem::new("c", true).if_version(Version(3)).keep_ttl(),
            SetItem::new("d", Value::float(0.5).unwrap()).if_absent(),
            SetItem::new("e", "y")
                .with(SetOptions::new().if_absent().ttl(Duration::from_millis(5))),
        ];
        let body = MsetBody {
            entries: items.iter().map(MsetEntry::from).collect(),
        };
        assert_eq!(
            serde_json::to_value(body).unwrap(),
            json!({"entries": [
                {"key": "a", "value": 1, "encoding": "integer"},
                {"key": "b", "value": "x", "encoding": "string", "ttl_ms": 2000},
                {"key": "c", "value": true, "encoding": "boolean", "if_version": 3,
                 "keep_ttl": true},
                {"key": "d", "value": 0.5, "encoding": "float", "if_absent": true},
                {"key": "e", "value": "y", "encoding": "string", "if_absent": true, "ttl_ms": 5},
            ]})
        );
    }

    #[test]
    fn batch_answers_read_entries_misses_and_per_key_errors_in_order() {
        let answer: MgetAnswer = serde_json::from_value(json!({"entries": [
            {"key": "a", "value": 1, "encoding": "integer", "version": 2},
            null,
            {"key": "c", "error": {"code": "quorum_unavailable", "message": "down"}},
        ]}))
        .unwrap();
        let results: Vec<_> = answer
            .entries
            .into_iter()
            .map(|slot| slot.map(Slot::into_result).transpose())
            .collect();
        assert_eq!(results[0], Ok(Some(entry("a", Value::integer(1), 2))));
        assert_eq!(results[1], Ok(None));
        let failed = results[2].clone().unwrap_err();
        assert_eq!(
            (failed.key.as_str(), failed.code, failed.status()),
            ("c", ErrorCode::QuorumUnavailable, 503)
        );
        assert!(failed.is_transient() && !failed.may_have_applied());

        let answer: MsetAnswer = serde_json::from_value(json!({"results": [
            {"key": "a", "value": "x", "encoding": "string", "version": 1, "ttl_ms": 2000},
            {"key": "b", "error": {"code": "outcome_unknown", "message": "maybe"}},
        ]}))
        .unwrap();
        let results: Vec<_> = answer.results.into_iter().map(Slot::into_result).collect();
        assert_eq!(
            results[0].as_ref().unwrap().ttl,
            Some(Duration::from_secs(2))
        );
        assert!(results[1].as_ref().unwrap_err().may_have_applied());
    }

    #[test]
    fn discovery_reads_the_members_that_are_not_removed() {
        let members: ClusterMembers = serde_json::from_value(json!({
            "node": 0, "epoch": 3,
            "nodes": [
                {"id": 0, "addr": "10.0.0.1:5100", "state": "up"},
                {"id": 1, "addr": "10.0.0.2:5100", "state": "down"},
                {"id": 2, "addr": "10.0.0.3:5100", "state": "leaving"},
                {"id": 3, "addr": "10.0.0.4:5100", "state": "removed"},
                {"id": 4, "addr": "10.0.0.5:5100", "state": "up"},
            ],
            "removed": [4],
        }))
        .unwrap();
        assert_eq!(
            members.serving().collect::<Vec<_>>(),
            ["10.0.0.1:5100", "10.0.0.2:5100", "10.0.0.3:5100"]
        );
    }

    #[test]
    fn key_pages_end_with_a_null_cursor() {
        let page: KeysPage =
            serde_json::from_value(json!({"keys": ["a", "b"], "cursor": "opaque"})).unwrap();
        assert_eq!(page.cursor.as_deref(), Some("opaque"));
        let last: KeysPage = serde_json::from_value(json!({"keys": [], "cursor": null})).unwrap();
        assert_eq!(last, KeysPage::default());
    }

    #[test]
    fn a_conflict_keeps_the_current_entry_and_serializes_as_the_409_body() {
        let body = json!({
            "error": {"code": "version_mismatch", "message": "key \"v\" is at version 2"},
            "current": {"key": "v", "value": 42, "encoding": "integer", "version": 2},
        });
        let conflict = Conflict::from_answer("v", body.to_string().as_bytes()).unwrap();
        assert_eq!(conflict.code, ErrorCode::VersionMismatch);
        assert_eq!(conflict.current, Some(entry("v", Value::integer(42), 2)));
        assert_eq!(serde_json::to_value(&conflict).unwrap(), body);
        let absent = json!({"error": {"code": "key_exists", "message": "m"}, "current": null});
        let conflict = Conflict::from_answer("v", absent.to_string().as_bytes()).unwrap();
        assert_eq!(conflict.current, None);
        // A 409 of another kind is not a failed precondition.
        let other = json!({"error": {"code": "epoch_mismatch", "message": "m"}});
        assert!(Conflict::from_answer("v", other.to_string().as_bytes()).is_none());
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_millis(9_540)), "9.5s");
        assert_eq!(human_duration(Duration::from_secs(750)), "12m30s");
        assert_eq!(human_duration(Duration::from_secs(3 * 3600 + 300)), "3h5m");
    }

    #[test]
    fn durations_round_to_the_nearest_unit_shown() {
        let ms = Duration::from_millis;
        let cases = [
            (Duration::from_micros(1_499), "1ms"),
            (Duration::from_micros(999_600), "1.0s"),
            (ms(9_549), "9.5s"),
            (ms(9_550), "9.6s"),
            (ms(59_949), "59.9s"),
            (ms(59_950), "1m0s"),
            (ms(1_799_996), "30m0s"),
            (ms(1_800_499), "30m0s"),
            (ms(1_800_500), "30m1s"),
            (ms(90_000 - 500), "1m30s"),
            (ms(3_599_499), "59m59s"),
            (ms(3_599_500), "1h0m"),
            (ms(3 * 3_600_000 + 329_999), "3h5m"),
            (ms(3 * 3_600_000 + 330_000), "3h6m"),
            (ms(24 * 3_600_000 - 1), "24h0m"),
            (Duration::new(3 * 3600 + 329, 999_600_000), "3h5m"),
            (Duration::from_micros(9_549_600), "9.5s"),
        ];
        for (d, shown) in cases {
            assert_eq!(human_duration(d), shown, "{d:?}");
        }
    }
}
