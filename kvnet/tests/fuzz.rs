//! Property tests of the peer protocol against untrusted input: arbitrary bytes and damaged frames
//! of every message kind go through `Incoming::parse` + `dispatch` (with a stub service that
//! handles every kind), and arbitrary or damaged reply frames through `decode_reply` for every
//! reply type.
//!
//! The property, for any input: no panic, and either the frame is refused with a `FrameError`
//! whose code is a client error (answered with a 400 over HTTP), or it decodes to a message that
//! re-encodes to a frame that decodes to the same message.
//!
//! CI runs a fixed number of cases per property from a fixed seed, so a failure reproduces on any
//! machine. For a longer local run, raise the count and vary the seed, e.g.
//! `PROPTEST_CASES=200000 PROPTEST_RNG_SEED=$RANDOM cargo test -p kvnet --test fuzz --release`.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Mutex;

use bytes::Bytes;
use kvcore::{
    Ballot, Entry, ErrorCode, Floor, NodeId, Precondition, Register, ReplicaState, Value, Version,
    MAX_KEY_BYTES,
};
use kvnet::rpc::{
    dispatch, Accept, AcceptReply, Backfill, Collect, Delete, DigestPage, DigestShard, Evict,
    FetchMap, FetchStatus, Get, Incr, KeysPage, MultiGet, MultiSet, NodeStatus, Ping, Pong,
    Prepare, PrepareReply, Read, Repair, RequestCounts, ScanKeys, Seed, Set, SetReply, SyncPage,
    SyncShard,
};
use kvnet::wire::{decode_reply, encode_reply, Incoming};
use kvnet::{
    BoxFuture, Frame, FrameError, Handle, Header, Kind, RemoteError, Rpc, MAX_HOPS,
    PROTOCOL_VERSION,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value as Json;

// ---------------------------------------------------------------------------------------------
// Running properties

/// The seed CI runs from; `PROPTEST_RNG_SEED` overrides it.
const SEED: u64 = 0x6b76_6e65_7466_757a;

/// `ci_cases` cases from [`SEED`], unless `PROPTEST_CASES` or `PROPTEST_RNG_SEED` say otherwise.
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

fn run<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: Debug,
{
    if let Err(e) = TestRunner::new(config(cases)).run(&strategy, test) {
        panic!("{e}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Generators

fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u64::MAX - 1),
        Just(u64::MAX),
        any::<u64>()
    ]
}

fn edge_u32() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(1), Just(u32::MAX), any::<u32>()]
}

fn header() -> impl Strategy<Value = Header> {
    (edge_u32(), edge_u64(), edge_u64(), edge_u64(), 1..=MAX_HOPS).prop_map(
        |(from, incarnation, epoch, request_id, hops)| Header {
            from: NodeId(from),
            incarnation,
            epoch,
            request_id,
            hops,
        },
    )
}

/// Keys the store accepts and some it does not: the frame format carries any string.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9:/]{1,12}",
        any::<String>(),
        Just("ключ/キー/🔑".to_owned()),
        // The longest valid key, in characters of 1, 2, 3 and 4 bytes.
        prop::sample::select(vec!['k', 'я', '€', '🔑'])
            .prop_map(|c| c.to_string().repeat(MAX_KEY_BYTES / c.len_utf8())),
        Just(String::new()),
        Just("k".repeat(MAX_KEY_BYTES + 1)),
    ]
}

fn version() -> impl Strategy<Value = Version> {
    edge_u64().prop_map(Version)
}

fn ballot() -> impl Strategy<Value = Ballot> {
    prop_oneof![
        Just(Ballot::ZERO),
        Just(Ballot::from_bits(u64::MAX)),
        Just(Ballot::new(Ballot::MAX_ROUND, NodeId(Ballot::MAX_NODE))),
        (edge_u64(), edge_u32()).prop_map(|(round, node)| Ballot::new(round, NodeId(node))),
        any::<u64>().prop_map(Ballot::from_bits),
    ]
}

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Json::Number)),
        any::<String>().prop_map(Json::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m: BTreeMap<String, Json>| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// Values of every encoding, extremes included.
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<String>().prop_map(Value::string),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0), any::<i64>()].prop_map(Value::integer),
        prop_oneof![
            Just(f64::MAX),
            Just(f64::MIN),
            Just(f64::MIN_POSITIVE),
            Just(-0.0),
            Just(5e-324),
            any::<f64>()
        ]
        .prop_filter_map("finite", Value::float),
        any::<bool>().prop_map(Value::boolean),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(Value::binary),
        json().prop_map(|j| Value::json(&j)),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (value(), version(), prop::option::of(edge_u64())).prop_map(|(value, version, expires)| Entry {
        value,
        version,
        expires,
    })
}

fn register() -> impl Strategy<Value = Register> {
    (
        ballot(),
        version(),
        prop::option::of(value()),
        prop::option::of(edge_u64()),
    )
        .prop_map(|(ballot, version, value, expires)| Register {
            ballot,
            version,
            expires: value.as_ref().and(expires),
            value,
        })
}

fn precondition() -> impl Strategy<Value = Precondition> {
    prop_oneof![
        Just(Precondition::None),
        Just(Precondition::IfAbsent),
        version().prop_map(Precondition::IfVersion),
    ]
}

fn repair() -> impl Strategy<Value = Repair> {
    (key(), register()).prop_map(|(key, register)| Repair { key, register })
}

fn remote_error() -> impl Strategy<Value = RemoteError> {
    (
        prop_oneof![
            prop::sample::select(ErrorCode::ALL),
            Just(ErrorCode::Unrecognized)
        ],
        any::<String>(),
    )
        .prop_map(|(code, message)| RemoteError::new(code, message))
}

/// A request of any kind.
#[derive(Debug, Clone)]
enum AnyRequest {
    Get(Get),
    Set(Set),
    Delete(Delete),
    Incr(Incr),
    Prepare(Prepare),
    Accept(Accept),
    Read(Read),
    Repair(Repair),
    SyncShard(SyncShard),
    DigestShard(DigestShard),
    Ping(Ping),
    Backfill(Backfill),
    Seed(Seed),
    Collect(Collect),
    FetchMap(FetchMap),
    MultiGet(MultiGet),
    MultiSet(MultiSet),
    ScanKeys(ScanKeys),
    FetchStatus(FetchStatus),
    Evict(Evict),
}

/// Calls `$f::<R>($args)` with the request inside an [`AnyRequest`].
macro_rules! with_request {
    ($request:expr, $f:ident($($args:expr),*)) => {
        match $request {
            AnyRequest::Get(r) => $f($($args,)* r),
            AnyRequest::Set(r) => $f($($args,)* r),
            AnyRequest::Delete(r) => $f($($args,)* r),
            AnyRequest::Incr(r) => $f($($args,)* r),
            AnyRequest::Prepare(r) => $f($($args,)* r),
            AnyRequest::Accept(r) => $f($($args,)* r),
            AnyRequest::Read(r) => $f($($args,)* r),
            AnyRequest::Repair(r) => $f($($args,)* r),
            AnyRequest::SyncShard(r) => $f($($args,)* r),
            AnyRequest::DigestShard(r) => $f($($args,)* r),
            AnyRequest::Ping(r) => $f($($args,)* r),
            AnyRequest::Backfill(r) => $f($($args,)* r),
            AnyRequest::Seed(r) => $f($($args,)* r),
            AnyRequest::Collect(r) => $f($($args,)* r),
            AnyRequest::FetchMap(r) => $f($($args,)* r),
            AnyRequest::MultiGet(r) => $f($($args,)* r),
            AnyRequest::MultiSet(r) => $f($($args,)* r),
            AnyRequest::ScanKeys(r) => $f($($args,)* r),
            AnyRequest::FetchStatus(r) => $f($($args,)* r),
            AnyRequest::Evict(r) => $f($($args,)* r),
        }
    };
}

fn encode<R: Rpc>(header: &Header, request: &R) -> Bytes {
    Frame::encode(header, request).bytes().clone()
}

impl AnyRequest {
    fn frame(&self, header: &Header) -> Bytes {
        with_request!(self, encode(header))
    }
}

fn set() -> impl Strategy<Value = Set> {
    (
        key(),
        value(),
        precondition(),
        prop::option::of(edge_u64()),
        any::<bool>(),
    )
        .prop_map(|(key, value, precondition, ttl_ms, keep_ttl)| Set {
            key,
            value,
            precondition,
            ttl_ms,
            keep_ttl,
        })
}

fn request() -> impl Strategy<Value = AnyRequest> {
    prop_oneof![
        key().prop_map(|key| AnyRequest::Get(Get { key })),
        set().prop_map(AnyRequest::Set),
        (key(), prop::option::of(version()))
            .prop_map(|(key, if_version)| { AnyRequest::Delete(Delete { key, if_version }) }),
        (
            key(),
            prop_oneof![Just(i64::MIN), Just(i64::MAX), any::<i64>()]
        )
            .prop_map(|(key, by)| AnyRequest::Incr(Incr { key, by })),
        (key(), ballot(), edge_u32())
            .prop_map(|(key, ballot, grow)| AnyRequest::Prepare(Prepare { key, ballot, grow })),
        (
            key(),
            register(),
            prop::collection::vec((edge_u32().prop_map(NodeId), edge_u64()), 0..5),
            prop::option::of(ballot()),
        )
            .prop_map(|(key, register, promisers, promise_next)| {
                AnyRequest::Accept(Accept {
                    key,
                    register,
                    promisers,
                    promise_next,
                })
            }),
        key().prop_map(|key| AnyRequest::Read(Read { key })),
        repair().prop_map(AnyRequest::Repair),
        (edge_u32(), prop::option::of(key()), any::<bool>()).prop_map(|(shard, after, moving)| {
            AnyRequest::SyncShard(SyncShard {
                shard,
                after,
                moving,
            })
        }),
        (edge_u32(), prop::option::of(key()))
            .prop_map(|(shard, after)| AnyRequest::DigestShard(DigestShard { shard, after })),
        Just(AnyRequest::Ping(Ping)),
        Just(AnyRequest::FetchMap(FetchMap)),
        Just(AnyRequest::FetchStatus(FetchStatus)),
        (key(), version(), edge_u64()).prop_map(|(key, version, digest)| {
            AnyRequest::Evict(Evict {
                key,
                version,
                digest,
            })
        }),
        prop::collection::vec(repair(), 0..4)
            .prop_map(|repairs| AnyRequest::Backfill(Backfill { repairs })),
        (key(), value()).prop_map(|(key, value)| AnyRequest::Seed(Seed { key, value })),
        prop::collection::vec((key(), ballot()), 0..4)
            .prop_map(|keys| AnyRequest::Collect(Collect { keys })),
        prop::collection::vec(key(), 0..5).prop_map(|keys| AnyRequest::MultiGet(MultiGet { keys })),
        prop::collection::vec(set(), 0..4)
            .prop_map(|items| AnyRequest::MultiSet(MultiSet { items })),
        (
            key(),
            prop::option::of((edge_u32(), key())),
            edge_u32(),
            edge_u64()
        )
            .prop_map(|(prefix, after, limit, now_ms)| {
                AnyRequest::ScanKeys(ScanKeys {
                    prefix,
                    after,
                    limit,
                    now_ms,
                })
            }),
    ]
}

/// A reply of any type, or an error answer in place of one.
#[derive(Debug, Clone)]
enum AnyReply {
    Get(Result<Option<Entry>, RemoteError>),
    Set(Result<SetReply, RemoteError>),
    Incr(Result<Entry, RemoteError>),
    Prepare(Result<PrepareReply, RemoteError>),
    Accept(Result<AcceptReply, RemoteError>),
    Read(Result<Register, RemoteError>),
    Repair(Result<bool, RemoteError>),
    Backfill(Result<Vec<bool>, RemoteError>),
    SyncShard(Result<SyncPage, RemoteError>),
    DigestShard(Result<DigestPage, RemoteError>),
    Ping(Result<Pong, RemoteError>),
    MultiGet(Result<Vec<Result<Option<Entry>, RemoteError>>, RemoteError>),
    MultiSet(Result<Vec<Result<SetReply, RemoteError>>, RemoteError>),
    ScanKeys(Result<KeysPage, RemoteError>),
    FetchStatus(Result<NodeStatus, RemoteError>),
}

macro_rules! with_reply {
    ($reply:expr, $f:ident($($args:expr),*)) => {
        match $reply {
            AnyReply::Get(r) => $f($($args,)* r),
            AnyReply::Set(r) => $f($($args,)* r),
            AnyReply::Incr(r) => $f($($args,)* r),
            AnyReply::Prepare(r) => $f($($args,)* r),
            AnyReply::Accept(r) => $f($($args,)* r),
            AnyReply::Read(r) => $f($($args,)* r),
            AnyReply::Repair(r) => $f($($args,)* r),
            AnyReply::Backfill(r) => $f($($args,)* r),
            AnyReply::SyncShard(r) => $f($($args,)* r),
            AnyReply::DigestShard(r) => $f($($args,)* r),
            AnyReply::Ping(r) => $f($($args,)* r),
            AnyReply::MultiGet(r) => $f($($args,)* r),
            AnyReply::MultiSet(r) => $f($($args,)* r),
            AnyReply::ScanKeys(r) => $f($($args,)* r),
            AnyReply::FetchStatus(r) => $f($($args,)* r),
        }
    };
}

fn answer<T: Debug + Clone + 'static>(
    ok: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Result<T, RemoteError>> {
    prop_oneof![
        3 => ok.prop_map(Ok),
        1 => remote_error().prop_map(Err),
    ]
}

fn set_reply() -> impl Strategy<Value = SetReply> {
    prop_oneof![
        (version(), prop::option::of(edge_u64()))
            .prop_map(|(version, expires)| SetReply::Written { version, expires }),
        prop::option::of(entry()).prop_map(SetReply::Conflict),
    ]
}

fn reply() -> impl Strategy<Value = AnyReply> {
    let page = || prop::option::of(key());
    let floor = (ballot(), version()).prop_map(|(promised, version)| Floor { promised, version });
    let state = (key(), ballot(), register()).prop_map(|(key, promised, register)| ReplicaState {
        key,
        promised,
        register,
    });
    prop_oneof![
        answer(prop::option::of(entry())).prop_map(AnyReply::Get),
        answer(set_reply()).prop_map(AnyReply::Set),
        answer(entry()).prop_map(AnyReply::Incr),
        answer(prop_oneof![
            (edge_u64(), register()).prop_map(|(incarnation, register)| {
                PrepareReply::Promised {
                    incarnation,
                    register,
                }
            }),
            ballot().prop_map(|promised| PrepareReply::Rejected { promised }),
        ])
        .prop_map(AnyReply::Prepare),
        answer(prop_oneof![
            prop::option::of(edge_u64())
                .prop_map(|promised_next| AcceptReply::Accepted { promised_next }),
            ballot().prop_map(|promised| AcceptReply::Rejected { promised }),
        ])
        .prop_map(AnyReply::Accept),
        answer(register()).prop_map(AnyReply::Read),
        answer(any::<bool>()).prop_map(AnyReply::Repair),
        answer(prop::collection::vec(any::<bool>(), 0..8)).prop_map(AnyReply::Backfill),
        answer(
            (
                prop::collection::vec(state, 0..4),
                floor,
                page(),
                edge_u64(),
                edge_u64()
            )
                .prop_map(|(states, floor, next, incarnation, known)| SyncPage {
                    states,
                    floor,
                    next,
                    incarnation,
                    known,
                })
        )
        .prop_map(AnyReply::SyncShard),
        answer(
            (prop::collection::vec((key(), ballot()), 0..4), page())
                .prop_map(|(ballots, next)| DigestPage { ballots, next })
        )
        .prop_map(AnyReply::DigestShard),
        answer(
            (
                edge_u32(),
                edge_u64(),
                edge_u64(),
                any::<bool>(),
                edge_u64()
            )
                .prop_map(|(node, epoch, incarnation, ready, drift)| Pong {
                    node: NodeId(node),
                    epoch,
                    incarnation,
                    ready,
                    drift,
                })
        )
        .prop_map(AnyReply::Ping),
        answer(prop::collection::vec(
            answer(prop::option::of(entry())),
            0..4
        ))
        .prop_map(AnyReply::MultiGet),
        answer(prop::collection::vec(answer(set_reply()), 0..4)).prop_map(AnyReply::MultiSet),
        answer(
            (
                prop::collection::vec((edge_u32(), key()), 0..4),
                any::<bool>()
            )
                .prop_map(|(keys, more)| KeysPage { keys, more })
        )
        .prop_map(AnyReply::ScanKeys),
        answer(node_status()).prop_map(AnyReply::FetchStatus),
    ]
}

fn node_status() -> impl Strategy<Value = NodeStatus> {
    let counts = prop::array::uniform7(edge_u64()).prop_map(|c| RequestCounts {
        reads: c[0],
        writes: c[1],
        batches: c[2],
        scans: c[3],
        peer: c[4],
        client_errors: c[5],
        server_errors: c[6],
    });
    (
        (
            edge_u32(),
            edge_u64(),
            edge_u64(),
            any::<bool>(),
            edge_u64(),
        ),
        (
            edge_u64(),
            edge_u64(),
            prop::option::of(edge_u64()),
            edge_u64(),
        ),
        counts,
    )
        .prop_map(
            |(
                (node, incarnation, epoch, ready, uptime_ms),
                (keys, bytes, max_memory, under_replicated),
                requests,
            )| NodeStatus {
                node: NodeId(node),
                incarnation,
                epoch,
                ready,
                uptime_ms,
                keys,
                bytes,
                max_memory,
                under_replicated,
                requests,
            },
        )
}

/// One way to damage a frame.
#[derive(Debug, Clone)]
enum Damage {
    /// XORs a byte with a non-zero mask.
    Flip(Index, u8),
    /// Cuts the frame short.
    Truncate(Index),
    /// Appends bytes.
    Extend(Vec<u8>),
    /// Inserts bytes.
    Insert(Index, Vec<u8>),
    /// Removes up to this many bytes.
    Remove(Index, usize),
    /// Overwrites the kind byte (request frames only).
    SetKind(u8),
    /// Replaces the body with the body of another message, possibly of another kind, keeping
    /// this frame's kind (request frames only).
    SwapBody(AnyRequest),
}

fn damage(requests: bool) -> BoxedStrategy<Damage> {
    let bytes = || prop::collection::vec(any::<u8>(), 1..16);
    let common = prop_oneof![
        4 => (any::<Index>(), 1..=u8::MAX).prop_map(|(at, mask)| Damage::Flip(at, mask)),
        2 => any::<Index>().prop_map(Damage::Truncate),
        1 => bytes().prop_map(Damage::Extend),
        1 => (any::<Index>(), bytes()).prop_map(|(at, b)| Damage::Insert(at, b)),
        1 => (any::<Index>(), 1..8usize).prop_map(|(at, n)| Damage::Remove(at, n)),
    ];
    if !requests {
        return common.boxed();
    }
    prop_oneof![
        6 => common,
        1 => any::<u8>().prop_map(Damage::SetKind),
        2 => request().prop_map(Damage::SwapBody),
    ]
    .boxed()
}

/// Where the kind byte of a request frame under `header` is.
fn kind_offset(header: &Header) -> usize {
    // A ping's body is empty, so its frame ends with the kind byte.
    encode(header, &Ping).len() - 1
}

fn apply(frame: &mut Vec<u8>, header: &Header, damage: &Damage) {
    let at = |i: &Index, len: usize| i.index(len.max(1)).min(len);
    match damage {
        Damage::Flip(i, mask) => {
            if !frame.is_empty() {
                let i = i.index(frame.len());
                frame[i] ^= mask;
            }
        }
        Damage::Truncate(i) => frame.truncate(at(i, frame.len())),
        Damage::Extend(bytes) => frame.extend_from_slice(bytes),
        Damage::Insert(i, bytes) => {
            let i = at(i, frame.len() + 1);
            frame.splice(i..i, bytes.iter().copied());
        }
        Damage::Remove(i, n) => {
            let i = at(i, frame.len());
            let end = (i + n).min(frame.len());
            frame.drain(i..end);
        }
        Damage::SetKind(kind) => {
            let offset = kind_offset(header);
            if let Some(byte) = frame.get_mut(offset) {
                *byte = *kind;
            }
        }
        Damage::SwapBody(other) => {
            let offset = kind_offset(header);
            let body = other.frame(header).slice(offset + 1..);
            frame.truncate(offset + 1);
            frame.extend_from_slice(&body);
        }
    }
}

/// Bytes that look more and more like a request frame: anything, then a valid version, then a
/// valid header and any kind byte, each followed by anything.
fn request_garbage() -> impl Strategy<Value = Vec<u8>> {
    let tail = || prop::collection::vec(any::<u8>(), 0..48);
    prop_oneof![
        tail(),
        tail().prop_map(|t| [&PROTOCOL_VERSION.to_le_bytes()[..], &t].concat()),
        (header(), any::<u8>(), tail()).prop_map(|(h, kind, t)| {
            let frame = encode(&h, &Ping);
            [&frame[..frame.len() - 1], &[kind], &t].concat()
        }),
    ]
}

fn reply_garbage() -> impl Strategy<Value = Vec<u8>> {
    let tail = || prop::collection::vec(any::<u8>(), 0..48);
    prop_oneof![
        tail(),
        tail().prop_map(|t| [&PROTOCOL_VERSION.to_le_bytes()[..], &t].concat()),
    ]
}

// ---------------------------------------------------------------------------------------------
// The stub service and the checks

/// What the stub saw of one request.
struct Call {
    kind: Kind,
    header: Header,
    request: Box<dyn Any + Send>,
    /// Whether the request, encoded again under the same header, decodes to itself.
    round_trip: Result<(), String>,
    /// Checks that a reply frame is the stub's answer, decoded as this kind's reply type.
    reply_is_stub_answer: fn(&[u8]) -> Result<(), String>,
}

/// Handles every kind of request by recording it and answering [`stub_answer`].
#[derive(Default)]
struct Stub {
    calls: Mutex<Vec<Call>>,
}

fn stub_answer() -> RemoteError {
    RemoteError::new(ErrorCode::Internal, "stub")
}

impl<R: Rpc + PartialEq + Debug> Handle<R> for Stub {
    fn handle<'a>(
        &'a self,
        header: &'a Header,
        request: R,
    ) -> BoxFuture<'a, Result<R::Reply, RemoteError>> {
        let round_trip = re_decode(header, &request);
        self.calls.lock().unwrap().push(Call {
            kind: R::KIND,
            header: *header,
            request: Box::new(request),
            round_trip,
            reply_is_stub_answer: reply_is_stub_answer::<R>,
        });
        Box::pin(async { Err(stub_answer()) })
    }
}

fn re_decode<R: Rpc + PartialEq + Debug>(header: &Header, request: &R) -> Result<(), String> {
    let frame = Frame::encode(header, request);
    let incoming =
        Incoming::parse(frame.bytes()).map_err(|e| format!("re-encoded frame refused: {e}"))?;
    let parts = (incoming.version, incoming.header, incoming.kind);
    if parts != (PROTOCOL_VERSION, *header, R::KIND) {
        return Err(format!("re-encoded frame parsed as {parts:?}"));
    }
    let again: R = incoming
        .body()
        .map_err(|e| format!("re-encoded body refused: {e}"))?;
    if &again != request {
        return Err(format!("{request:?} came back as {again:?}"));
    }
    Ok(())
}

fn reply_is_stub_answer<R: Rpc>(reply: &[u8]) -> Result<(), String> {
    match decode_reply::<R::Reply>(reply) {
        Ok(Err(e)) if e == stub_answer() => Ok(()),
        Ok(Err(e)) => Err(format!("reply decoded to another error: {e}")),
        Ok(Ok(_)) => Err("reply decoded to a success".into()),
        Err(e) => Err(format!("reply frame refused: {e}")),
    }
}

/// Refusals of unreadable input must be the client's fault: a 400 over HTTP, never a 5xx.
fn assert_client_error(e: &FrameError) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(
            e.code(),
            ErrorCode::InvalidRequest | ErrorCode::UnsupportedProtocol
        ),
        "{e} has code {}, not a client error",
        e.code()
    );
    Ok(())
}

/// Feeds `frame` to [`dispatch`]; returns the kind it decoded to, `None` if it was refused.
fn check_frame(
    rt: &tokio::runtime::Runtime,
    frame: &[u8],
) -> Result<Option<(Kind, Call)>, TestCaseError> {
    let stub = Stub::default();
    let answer = rt.block_on(dispatch(&stub, frame));
    let mut calls = std::mem::take(&mut *stub.calls.lock().unwrap());
    match answer {
        Err(e) => {
            assert_client_error(&e)?;
            prop_assert!(calls.is_empty(), "a refused frame reached a handler");
            Ok(None)
        }
        Ok(reply) => {
            prop_assert_eq!(calls.len(), 1, "one frame, one handler call");
            let call = calls.pop().unwrap();
            let incoming = Incoming::parse(frame).map_err(|e| {
                TestCaseError::fail(format!("dispatched a frame that does not parse: {e}"))
            })?;
            prop_assert_eq!((incoming.header, incoming.kind), (call.header, call.kind));
            if let Err(e) = &call.round_trip {
                return Err(TestCaseError::fail(format!(
                    "decoded {:?}, which does not round trip: {e}",
                    call.kind
                )));
            }
            (call.reply_is_stub_answer)(&reply).map_err(TestCaseError::fail)?;
            Ok(Some((call.kind, call)))
        }
    }
}

/// Decodes `bytes` as a `T` reply: refused as a client error, or a reply that round trips.
fn check_reply<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    bytes: &[u8],
) -> Result<bool, TestCaseError> {
    match decode_reply::<T>(bytes) {
        Err(e) => {
            assert_client_error(&e)?;
            Ok(false)
        }
        Ok(reply) => {
            let again = encode_reply(&reply);
            prop_assert_eq!(decode_reply::<T>(&again), Ok(reply));
            Ok(true)
        }
    }
}

type ReplyCheck = fn(&[u8]) -> Result<bool, TestCaseError>;

/// Every reply type, as each request kind's [`Rpc::Reply`] names it.
const REPLY_CHECKS: [ReplyCheck; 20] = [
    check_reply::<<Get as Rpc>::Reply>,
    check_reply::<<Set as Rpc>::Reply>,
    check_reply::<<Delete as Rpc>::Reply>,
    check_reply::<<Incr as Rpc>::Reply>,
    check_reply::<<Prepare as Rpc>::Reply>,
    check_reply::<<Accept as Rpc>::Reply>,
    check_reply::<<Read as Rpc>::Reply>,
    check_reply::<<Repair as Rpc>::Reply>,
    check_reply::<<SyncShard as Rpc>::Reply>,
    check_reply::<<DigestShard as Rpc>::Reply>,
    check_reply::<<Ping as Rpc>::Reply>,
    check_reply::<<Backfill as Rpc>::Reply>,
    check_reply::<<Seed as Rpc>::Reply>,
    check_reply::<<Collect as Rpc>::Reply>,
    check_reply::<<FetchMap as Rpc>::Reply>,
    check_reply::<<MultiGet as Rpc>::Reply>,
    check_reply::<<MultiSet as Rpc>::Reply>,
    check_reply::<<ScanKeys as Rpc>::Reply>,
    check_reply::<<FetchStatus as Rpc>::Reply>,
    check_reply::<<Evict as Rpc>::Reply>,
];

/// Counts of outcomes, so a property that only ever saw one outcome fails instead of passing
/// vacuously.
#[derive(Default)]
struct Tally {
    refused: usize,
    decoded: BTreeMap<String, usize>,
}

impl Tally {
    fn assert_saw_both(&self, what: &str, ci_cases: u32, kinds: usize) {
        // Only meaningful with enough cases; `PROPTEST_CASES=1` must still pass.
        if config(ci_cases).cases < 500 {
            return;
        }
        assert!(self.refused > 0, "{what}: no input was refused");
        assert_eq!(
            self.decoded.len(),
            kinds,
            "{what}: not every kind decoded at least once: {:?}",
            self.decoded
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

#[test]
fn arbitrary_bytes_are_refused_as_client_errors_or_round_trip() {
    let rt = runtime();
    run(1000, request_garbage(), |bytes| {
        check_frame(&rt, &bytes)?;
        for check in REPLY_CHECKS {
            check(&bytes)?;
        }
        Ok(())
    });
}

#[test]
fn damaged_frames_of_every_kind_are_refused_as_client_errors_or_round_trip() {
    let rt = runtime();
    let tally = Mutex::new(Tally::default());
    let case = (
        header(),
        request(),
        prop::collection::vec(damage(true), 1..4),
    );
    let cases = 2000;
    run(cases, case, |(header, request, damages)| {
        let mut frame = request.frame(&header).to_vec();
        for d in &damages {
            apply(&mut frame, &header, d);
        }
        let outcome = check_frame(&rt, &frame)?;
        let mut tally = tally.lock().unwrap();
        match outcome {
            None => tally.refused += 1,
            Some((kind, _)) => *tally.decoded.entry(format!("{kind:?}")).or_default() += 1,
        }
        Ok(())
    });
    let kinds = (0..=u8::MAX).filter_map(Kind::from_u8).count();
    tally
        .into_inner()
        .unwrap()
        .assert_saw_both("damaged request frames", cases, kinds);
}

#[test]
fn valid_frames_of_random_messages_decode_to_the_same_message() {
    fn same<R: Rpc + PartialEq + Debug>(
        rt: &tokio::runtime::Runtime,
        header: &Header,
        request: &R,
    ) -> Result<(), TestCaseError> {
        let frame = Frame::encode(header, request);
        let incoming = Incoming::parse(frame.bytes())
            .map_err(|e| TestCaseError::fail(format!("valid frame refused: {e}")))?;
        prop_assert_eq!(
            (incoming.version, incoming.header, incoming.kind),
            (PROTOCOL_VERSION, *header, R::KIND)
        );
        let body: R = incoming
            .body()
            .map_err(|e| TestCaseError::fail(format!("valid body refused: {e}")))?;
        prop_assert_eq!(&body, request);
        // And through dispatch: the handler gets exactly what was sent.
        let Some((kind, call)) = check_frame(rt, frame.bytes())? else {
            return Err(TestCaseError::fail("dispatch refused a valid frame"));
        };
        prop_assert_eq!(kind, R::KIND);
        prop_assert_eq!(call.request.downcast_ref::<R>(), Some(request));
        Ok(())
    }
    let rt = runtime();
    run(1000, (header(), request()), |(header, request)| {
        with_request!(&request, same(&rt, &header))
    });
}

#[test]
fn replies_of_every_type_round_trip() {
    fn same<T: Serialize + DeserializeOwned + PartialEq + Debug>(
        reply: &Result<T, RemoteError>,
    ) -> Result<(), TestCaseError> {
        let bytes = encode_reply(reply);
        prop_assert_eq!(&bytes[..2], &PROTOCOL_VERSION.to_le_bytes()[..]);
        let decoded = decode_reply::<T>(&bytes);
        prop_assert_eq!(decoded.as_ref(), Ok(reply));
        Ok(())
    }
    run(1000, reply(), |reply| with_reply!(&reply, same()));
}

#[test]
fn damaged_and_arbitrary_replies_are_refused_as_client_errors_or_round_trip() {
    fn encoded<T: Serialize>(reply: &Result<T, RemoteError>) -> Bytes {
        encode_reply(reply)
    }
    let tally = Mutex::new(Tally::default());
    let damaged =
        (reply(), prop::collection::vec(damage(false), 1..4)).prop_map(|(reply, damages)| {
            let mut bytes = with_reply!(&reply, encoded()).to_vec();
            let unused = Header {
                from: NodeId(0),
                incarnation: 0,
                epoch: 0,
                request_id: 0,
                hops: 1,
            };
            for d in &damages {
                apply(&mut bytes, &unused, d);
            }
            bytes
        });
    let cases = 1000;
    run(
        cases,
        prop_oneof![3 => damaged, 1 => reply_garbage()],
        |bytes| {
            let decoded = REPLY_CHECKS
                .iter()
                .map(|check| check(&bytes))
                .collect::<Result<Vec<bool>, _>>()?;
            let mut tally = tally.lock().unwrap();
            for (i, decoded) in decoded.into_iter().enumerate() {
                if decoded {
                    *tally.decoded.entry(format!("reply type {i}")).or_default() += 1;
                } else {
                    tally.refused += 1;
                }
            }
            Ok(())
        },
    );
    tally
        .into_inner()
        .unwrap()
        .assert_saw_both("damaged replies", cases, REPLY_CHECKS.len());
}
