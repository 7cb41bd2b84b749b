//! The key commands of the `kvserver` binary: `get`, `set`, `delete`, `incr` and `keys`, sent
//! through a [`Client`].
//!
//! ```console
//! $ kvserver set visits 41 --encoding integer
//! visits = 41 (integer, version 1)
//! $ kvserver incr visits
//! visits = 42 (integer, version 2)
//! $ kvserver get visits --json
//! {"encoding":"integer","key":"visits","value":42,"version":2}
//! ```
//!
//! Output is one readable line by default, and the node's answer as JSON with `--json`. `keys`
//! prints each page as it arrives: a key a line, or with `--json` one object
//! `{"keys": [...], "cursor": ...}` written page by page (left unfinished if the listing fails
//! part-way, which the exit status says). Errors go to stderr with the node's message. The
//! exit status says what happened: [`exit`] has the numbers.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use kvcore::{Encoding, ErrorCode, Value, Version};
use serde_json::Value as Json;

use crate::client::{Client, ClientError, Conflict, Entry, SetOptions};

/// The node the commands ask when neither `--node` nor `KV_NODE` names one.
pub const DEFAULT_NODE: &str = "127.0.0.1:5100";

/// Exit statuses of the key commands.
pub mod exit {
    /// The key does not exist, or a condition (`--if-version`, `--if-absent`) did not hold.
    pub const NOT_FOUND_OR_CONFLICT: u8 = 1;
    /// A usage error, a request the node refused as bad (a 4xx status: a value that does not
    /// fit its encoding, a wrong encoding, a value too large...), or no usable answer: no node
    /// could be reached, or what answered is not a kv node.
    pub const USAGE_OR_UNREACHABLE: u8 = 2;
    /// The cluster failed to carry the request out: unavailable for now (503), a failure on
    /// the server's side (any other 5xx, such as 500 or 507 `memory_full`), or a write's
    /// outcome is unknown (504, or no answer after sending it): read the key to find out.
    pub const UNAVAILABLE: u8 = 3;
}

/// The exit statuses, as each key command's `--help` ends.
const EXIT_STATUS_HELP: &str = "\
Exit status: 0 on success; 1 if the key does not exist or a condition (--if-version,
--if-absent) did not hold; 2 on a usage error, a request the node refused as bad (4xx, such as
400 invalid_value or 413 value_too_large), or when no node could be reached; 3 when the cluster
failed to carry the request out (5xx: 503 unavailable, 500, 507 memory_full...) or a write's
outcome is unknown (504, or no answer after sending it: read the key to find out).";

/// The key commands, flattened into the binary's subcommands.
#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum KeyCommand {
    /// Print a key's value, encoding and version (exit status 1 if it does not exist).
    #[command(after_help = EXIT_STATUS_HELP)]
    Get(GetArgs),
    /// Write a key's value (exit status 1 if --if-version or --if-absent does not hold).
    #[command(after_help = EXIT_STATUS_HELP)]
    Set(SetArgs),
    /// Delete a key (exit status 1 if it does not exist).
    #[command(after_help = EXIT_STATUS_HELP)]
    Delete(DeleteArgs),
    /// Add to the integer at a key (a missing key counts as 0).
    #[command(after_help = EXIT_STATUS_HELP)]
    Incr(IncrArgs),
    /// List the keys, or those starting with a prefix, printing each page as it arrives: one
    /// key a line, or with --json one object {"keys": [...], "cursor": ...} written page by
    /// page (unfinished if the listing fails part-way; the exit status then says why).
    #[command(after_help = EXIT_STATUS_HELP)]
    Keys(KeysArgs),
}

/// Where to send a command, and how to print the answer.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The node to ask, as HOST:PORT (plain HTTP); several, comma-separated, are tried in turn
    /// when one is down. `keys` also learns the cluster's other members from the first node
    /// that answers, and moves on to them if that node goes down while it lists. Also from the
    /// KV_NODE environment variable [default: 127.0.0.1:5100].
    #[arg(long, value_name = "HOST:PORT[,...]", value_delimiter = ',')]
    pub node: Vec<String>,
    /// Print the node's answer as JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `kvserver get KEY`.
#[derive(Args, Debug, PartialEq, Eq)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connection: Connection,
}

/// `kvserver set KEY VALUE`.
#[derive(Args, Debug, PartialEq, Eq)]
pub struct SetArgs {
    /// The key.
    pub key: String,
    /// The value, read as --encoding says: a number for integer and float, true or false for
    /// boolean, JSON text for json, standard base64 for binary. A value starting with `-`
    /// other than a number goes after `--`.
    #[arg(allow_negative_numbers = true)]
    pub value: String,
    /// string, integer, float, boolean, binary or json.
    #[arg(long, short, default_value = "string")]
    pub encoding: Encoding,
    /// Expire the key after this long: 500ms, 10s, 5m, 1h, or several such as 1h30m.
    #[arg(long, value_parser = parse_duration, conflicts_with = "keep_ttl")]
    pub ttl: Option<Duration>,
    /// Keep the key's current expiry (without it, a write makes the key never expire).
    #[arg(long)]
    pub keep_ttl: bool,
    /// Write only if the key is at this version.
    #[arg(long, value_name = "VERSION", conflicts_with = "if_absent")]
    pub if_version: Option<u64>,
    /// Write only if the key does not exist.
    #[arg(long)]
    pub if_absent: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connection: Connection,
}

/// `kvserver delete KEY`.
#[derive(Args, Debug, PartialEq, Eq)]
pub struct DeleteArgs {
    /// The key.
    pub key: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connection: Connection,
}

/// `kvserver incr KEY`.
#[derive(Args, Debug, PartialEq, Eq)]
pub struct IncrArgs {
    /// The key.
    pub key: String,
    /// What to add; may be negative.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub by: i64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connection: Connection,
}

/// `kvserver keys`.
#[derive(Args, Debug, PartialEq, Eq)]
pub struct KeysArgs {
    /// Only the keys starting with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// List at most this many keys (at least 1). With --json, "cursor" is then where the rest
    /// starts, or null if there is no more.
    #[arg(long, value_parser = parse_limit)]
    pub limit: Option<usize>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub connection: Connection,
}

impl KeyCommand {
    fn connection(&self) -> &Connection {
        match self {
            KeyCommand::Get(a) => &a.connection,
            KeyCommand::Set(a) => &a.connection,
            KeyCommand::Delete(a) => &a.connection,
            KeyCommand::Incr(a) => &a.connection,
            KeyCommand::Keys(a) => &a.connection,
        }
    }
}

/// Why a command did not succeed, and the exit status that says so.
#[derive(Debug)]
enum Failed {
    /// The key does not exist.
    NotFound(String),
    /// A precondition did not hold.
    Conflict(Conflict),
    /// The value given does not fit its encoding.
    Usage(String),
    /// The client's error.
    Client(ClientError),
}

impl From<ClientError> for Failed {
    fn from(e: ClientError) -> Self {
        Failed::Client(e)
    }
}

impl Failed {
    fn exit_status(&self) -> u8 {
        match self {
            Failed::NotFound(_) | Failed::Conflict(_) => exit::NOT_FOUND_OR_CONFLICT,
            Failed::Usage(_) => exit::USAGE_OR_UNREACHABLE,
            Failed::Client(e) => client_exit_status(e),
        }
    }

    fn message(&self) -> String {
        match self {
            Failed::NotFound(key) => format!("key {key:?} not found"),
            Failed::Conflict(c) => match &c.current {
                Some(current) => format!("{c}; it holds {current}"),
                None => format!("{c}; it does not exist"),
            },
            Failed::Usage(message) => message.clone(),
            Failed::Client(e) => e.to_string(),
        }
    }
}

/// The exit status of a command that failed with `e`.
pub fn client_exit_status(e: &ClientError) -> u8 {
    match e {
        ClientError::OutcomeUnknown { .. } => exit::UNAVAILABLE,
        ClientError::Api { status, .. } | ClientError::BadAnswer { status, .. }
            if *status >= 500 =>
        {
            exit::UNAVAILABLE
        }
        ClientError::Api {
            code: ErrorCode::NotFound | ErrorCode::VersionMismatch | ErrorCode::KeyExists,
            ..
        } => exit::NOT_FOUND_OR_CONFLICT,
        ClientError::Api { .. }
        | ClientError::Unreachable { .. }
        | ClientError::BadAnswer { .. }
        | ClientError::Config { .. } => exit::USAGE_OR_UNREACHABLE,
    }
}

/// The nodes to ask: `--node`, else the environment's (`KV_NODE`, read by `main`), else
/// [`DEFAULT_NODE`]. Both may list several, comma-separated.
pub fn nodes(flag: &[String], from_env: Option<&str>) -> Vec<String> {
    let listed = |list: Vec<&str>| -> Vec<String> {
        list.into_iter()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let flag = listed(flag.iter().map(String::as_str).collect());
    if !flag.is_empty() {
        return flag;
    }
    let env = listed(from_env.unwrap_or_default().split(',').collect());
    if !env.is_empty() {
        return env;
    }
    vec![DEFAULT_NODE.to_owned()]
}

/// Runs `command` against the nodes `--node` names, else `node_env` (the `KV_NODE` variable),
/// printing the answer to stdout and any error to stderr.
pub async fn run(command: KeyCommand, node_env: Option<String>) -> ExitCode {
    let connection = command.connection().clone();
    // Only `keys` makes more than one call: learning the other members after the first would
    // be a wasted request for a command that is done by then.
    let discover = matches!(command, KeyCommand::Keys(_));
    let client = Client::builder(nodes(&connection.node, node_env.as_deref()))
        .discover(discover)
        .build();
    let client = match client {
        Ok(client) => client,
        Err(e) => return fail(&Failed::Client(e)),
    };
    let mut out = Output::new(std::io::stdout());
    let done = execute(&client, command, &mut out).await;
    out.flush();
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(failed) => fail(&failed),
    }
}

fn fail(failed: &Failed) -> ExitCode {
    eprintln!("kvserver: {}", failed.message());
    ExitCode::from(failed.exit_status())
}

/// Where the answer is printed. A write that fails (stdout closed: `kvserver keys | head`)
/// ends the output, not the command's success.
struct Output<W: Write> {
    out: std::io::BufWriter<W>,
    closed: bool,
}

impl<W: Write> Output<W> {
    fn new(out: W) -> Self {
        Output {
            out: std::io::BufWriter::new(out),
            closed: false,
        }
    }

    fn write(&mut self, text: &str) {
        if !self.closed && self.out.write_all(text.as_bytes()).is_err() {
            self.closed = true;
        }
    }

    fn line(&mut self, text: &str) {
        self.write(text);
        self.write("\n");
    }

    /// Sends what was written on, so that a page shows before the next is asked for.
    fn flush(&mut self) {
        if !self.closed && self.out.flush().is_err() {
            self.closed = true;
        }
    }
}

/// Carries the command out, printing its answer to `out`.
async fn execute<W: Write>(
    client: &Client,
    command: KeyCommand,
    out: &mut Output<W>,
) -> Result<(), Failed> {
    let json = command.connection().json;
    let show = |entry: &Entry| {
        if json {
            to_json(entry)
        } else {
            entry.to_string()
        }
    };
    match command {
        KeyCommand::Get(args) => match client.get(&args.key).await? {
            Some(entry) => out.line(&show(&entry)),
            None => return Err(Failed::NotFound(args.key)),
        },
        KeyCommand::Set(args) => {
            let value = parse_value(args.encoding, &args.value).map_err(Failed::Usage)?;
            let mut options = SetOptions {
                ttl: args.ttl,
                keep_ttl: args.keep_ttl,
                ..SetOptions::default()
            };
            if let Some(version) = args.if_version {
                options = options.if_version(Version(version));
            }
            if args.if_absent {
                options = options.if_absent();
            }
            match client.set_with(&args.key, value, options).await? {
                Ok(entry) => out.line(&show(&entry)),
                Err(conflict) => return Err(Failed::Conflict(conflict)),
            }
        }
        KeyCommand::Delete(args) => match client.delete(&args.key).await? {
            Some(deleted) if json => out.line(&to_json(&deleted)),
            Some(deleted) => out.line(&format!(
                "deleted {} (version {})",
                deleted.key, deleted.version
            )),
            None => return Err(Failed::NotFound(args.key)),
        },
        KeyCommand::Incr(args) => out.line(&show(&client.incr(&args.key, args.by).await?)),
        KeyCommand::Keys(args) => keys(client, &args.prefix, args.limit, json, out).await?,
    }
    Ok(())
}

/// Lists the keys page by page, printing each page as it arrives. With `--json`, one object
/// in the API's shape, written as the pages come: the keys and, when `--limit` stopped the
/// listing early, the cursor the rest starts at.
async fn keys<W: Write>(
    client: &Client,
    prefix: &str,
    limit: Option<usize>,
    json: bool,
    out: &mut Output<W>,
) -> Result<(), Failed> {
    let mut listed = 0;
    let mut cursor: Option<String> = None;
    loop {
        let left = limit.map(|limit| limit - listed);
        if left == Some(0) || out.closed {
            break;
        }
        let page = client.keys_page(prefix, left, cursor.as_deref()).await?;
        for key in page.keys.iter().take(left.unwrap_or(usize::MAX)) {
            if json {
                out.write(if listed == 0 { "{\"keys\":[" } else { "," });
                out.write(&to_json(key));
            } else {
                out.line(key);
            }
            listed += 1;
        }
        out.flush();
        cursor = page.cursor;
        if cursor.is_none() {
            break;
        }
    }
    if json {
        if listed == 0 {
            out.write("{\"keys\":[");
        }
        out.line(&format!("],\"cursor\":{}}}", to_json(&cursor)));
    }
    Ok(())
}

fn to_json(answer: &impl serde::Serialize) -> String {
    serde_json::to_string(answer).unwrap_or_else(|e| format!("{{\"unprintable\": \"{e}\"}}"))
}

/// Reads the text of a value as `encoding` says: numbers and booleans as written, JSON as JSON
/// text, binary as standard base64, a string as it is.
pub fn parse_value(encoding: Encoding, text: &str) -> Result<Value, String> {
    match encoding {
        Encoding::String => Ok(Value::string(text)),
        Encoding::Json => serde_json::from_str::<Json>(text)
            .map(|json| Value::json(&json))
            .map_err(|e| format!("the value is not JSON: {e}")),
        _ => Value::from_json(encoding, &Json::String(text.to_owned())).map_err(|e| e.to_string()),
    }
}

/// Reads `--limit`: a whole number from 1 (0 would list nothing).
pub fn parse_limit(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("the limit must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a whole number")),
    }
}

/// Parses a duration such as `500ms`, `10s`, `5m`, `1h` or `1h30m` (a number and a unit, as
/// many times as wanted; fractions work: `1.5s`). Zero is refused: a TTL must be positive.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration such as 500ms, 10s, 5m or 1h30m");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let n: f64 = number.parse().map_err(|_| invalid())?;
        let unit_seconds = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => return Err(invalid()),
        };
        total += Duration::try_from_secs_f64(n * unit_seconds).map_err(|_| invalid())?;
        rest = tail;
    }
    if total.is_zero() {
        return Err(format!("{text:?}: a TTL must be longer than zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_take_a_number_and_a_unit_as_many_times_as_wanted() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok(" 2d "), Duration::from_secs(2 * 86_400));
        for bad in [
            "", "10", "s", "5x", "-1s", "1s-", "0s", "0ms0s", "1 s", "1.2.3s", "ms5",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_duration("0s")
            .unwrap_err()
            .contains("longer than zero"));
    }

    #[test]
    fn values_are_read_as_their_encoding_says() {
        let ok = |e, s| parse_value(e, s).unwrap().to_json();
        assert_eq!(ok(Encoding::String, "42"), json!("42"));
        assert_eq!(ok(Encoding::Integer, "-42"), json!(-42));
        assert_eq!(ok(Encoding::Float, "2.5"), json!(2.5));
        assert_eq!(ok(Encoding::Boolean, "true"), json!(true));
        assert_eq!(ok(Encoding::Binary, "3q2+7w=="), json!("3q2+7w=="));
        assert_eq!(ok(Encoding::Json, r#"{"a": [1]}"#), json!({"a": [1]}));
        for (e, bad) in [
            (Encoding::Integer, "many"),
            (Encoding::Float, "NaN"),
            (Encoding::Boolean, "yes"),
            (Encoding::Binary, "not base64!"),
            (Encoding::Json, "{"),
        ] {
            assert!(parse_value(e, bad).is_err(), "{e} {bad}");
        }
    }

    #[test]
    fn a_limit_is_a_whole_number_from_1() {
        assert_eq!(parse_limit("1"), Ok(1));
        assert_eq!(parse_limit("250"), Ok(250));
        for bad in ["0", "-1", "x", ""] {
            assert!(parse_limit(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_nodes_are_the_flag_then_the_environment_then_the_default() {
        let flag = vec!["a:1".to_owned(), "b:1".to_owned()];
        assert_eq!(nodes(&flag, Some("c:1")), flag);
        assert_eq!(nodes(&[], Some("c:1, d:1")), ["c:1", "d:1"]);
        assert_eq!(nodes(&[], Some(" ")), [DEFAULT_NODE]);
        assert_eq!(nodes(&[], None), [DEFAULT_NODE]);
    }

    #[test]
    fn exit_statuses_tell_missing_keys_from_refusals_and_unavailability() {
        let api = |status, code| ClientError::Api {
            status,
            code,
            message: String::new(),
        };
        assert_eq!(client_exit_status(&api(404, ErrorCode::NotFound)), 1);
        assert_eq!(client_exit_status(&api(404, ErrorCode::NoRoute)), 2);
        assert_eq!(client_exit_status(&api(400, ErrorCode::NotAnInteger)), 2);
        assert_eq!(
            client_exit_status(&api(503, ErrorCode::QuorumUnavailable)),
            3
        );
        assert_eq!(client_exit_status(&api(504, ErrorCode::OwnerTimeout)), 3);
        // Server-side failures are the cluster's, refusals of a bad request the caller's.
        assert_eq!(client_exit_status(&api(500, ErrorCode::Internal)), 3);
        assert_eq!(client_exit_status(&api(507, ErrorCode::MemoryFull)), 3);
        assert_eq!(client_exit_status(&api(413, ErrorCode::ValueTooLarge)), 2);
        assert_eq!(client_exit_status(&api(400, ErrorCode::InvalidValue)), 2);
        let unknown = ClientError::OutcomeUnknown {
            node: "n:1".into(),
            code: None,
            reason: String::new(),
        };
        assert_eq!(client_exit_status(&unknown), 3);
        let unreachable = ClientError::Unreachable {
            node: "n:1".into(),
            attempts: 1,
            reason: String::new(),
        };
        assert_eq!(client_exit_status(&unreachable), 2);
        // What answered is not a kv node (a proxy, say): its 5xx is still the server side's.
        let foreign = |status| ClientError::BadAnswer {
            node: "n:1".into(),
            status,
            reason: String::new(),
        };
        assert_eq!(client_exit_status(&foreign(502)), 3);
        assert_eq!(client_exit_status(&foreign(404)), 2);
    }
}
