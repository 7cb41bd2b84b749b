//! Request ids: how one client request is followed through the logs of every node it touches.
//!
//! An id is 64 bits, written as 16 lowercase hex digits. A client request's id comes from its
//! `x-request-id` header when that is 1 to 16 hex digits (so a client choosing such ids can
//! search every node's logs for them), and is drawn at random otherwise. Any other printable
//! ASCII value of at most [`MAX_CLIENT_ID_BYTES`] is kept too: it is echoed back unchanged, and
//! the coordinating node's access log line records it beside the hex id, which leads to the other
//! nodes. A value that is longer or not printable ASCII is refused (400).
//!
//! The id travels in every peer frame's `Header::request_id`. Within the node that took the
//! client request, the id is scoped to the task serving it ([`scope`]); the node's operations
//! read it with [`current`] when they start, and pass it on explicitly from there.

use std::fmt;
use std::future::Future;

use hyper::header::HeaderValue;
use kvcore::ErrorCode;

use crate::error::Error;

/// The header a request id is read from and echoed in.
pub const HEADER: &str = "x-request-id";

/// The longest `x-request-id` a client may send.
pub const MAX_CLIENT_ID_BYTES: usize = 128;

/// A request's id, shown as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

impl RequestId {
    /// A fresh random id.
    pub fn random() -> Self {
        RequestId(rand::random())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The id a client request is served under, and the client's own value when it is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequestId {
    /// The id peer messages carry and logs show.
    pub id: RequestId,
    /// The client's `x-request-id` when it is not 1 to 16 hex digits (logged beside `id`).
    pub given: Option<String>,
    /// What the response's `x-request-id` says: the client's value, or `id` if it sent none.
    pub echo: HeaderValue,
}

impl ClientRequestId {
    /// A fresh random id, for a request without an `x-request-id` of its own.
    pub fn fresh() -> Self {
        let id = RequestId::random();
        ClientRequestId {
            id,
            given: None,
            echo: hex_header(id),
        }
    }

    /// Reads the request's `x-request-id` header (`None`: the request has none). A value of 1
    /// to 16 hex digits is the id; any other printable ASCII value of at most
    /// [`MAX_CLIENT_ID_BYTES`] gets a fresh id and is kept; an empty value counts as none.
    /// Anything else is an error (to answer under a [`fresh`](Self::fresh) id).
    pub fn from_header(value: Option<&HeaderValue>) -> Result<Self, Error> {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(Self::fresh());
        };
        let bytes = value.as_bytes();
        if bytes.len() > MAX_CLIENT_ID_BYTES || !bytes.iter().all(|b| (b' '..=b'~').contains(b)) {
            let error = Error::bad_request(
                ErrorCode::InvalidRequest,
                format!("{HEADER} must be printable ASCII of at most {MAX_CLIENT_ID_BYTES} bytes"),
            );
            return Err(error);
        }
        // Printable ASCII, so UTF-8.
        let text = String::from_utf8_lossy(bytes);
        let hex = bytes.len() <= 16 && bytes.iter().all(u8::is_ascii_hexdigit);
        match u64::from_str_radix(&text, 16) {
            Ok(id) if hex => Ok(ClientRequestId {
                id: RequestId(id),
                given: None,
                echo: value.clone(),
            }),
            _ => Ok(ClientRequestId {
                id: RequestId::random(),
                given: Some(text.into_owned()),
                echo: value.clone(),
            }),
        }
    }
}

fn hex_header(id: RequestId) -> HeaderValue {
    HeaderValue::from_str(&id.to_string()).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

tokio::task_local! {
    static CURRENT: RequestId;
}

/// Runs `task` as the serving of request `id`: [`current`] returns it within `task`.
pub async fn scope<F: Future>(id: RequestId, task: F) -> F::Output {
    CURRENT.scope(id, task).await
}

/// The id of the client request the calling task serves, or a fresh one outside any (a program
/// embedding a node, background work).
pub fn current() -> u64 {
    CURRENT
        .try_with(|id| id.0)
        .unwrap_or_else(|_| RequestId::random().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(value: &[u8]) -> Result<ClientRequestId, Error> {
        ClientRequestId::from_header(Some(&HeaderValue::from_bytes(value).unwrap()))
    }

    #[test]
    fn up_to_sixteen_hex_digits_are_the_id_itself() {
        let got = read(b"00000000deadbeef").unwrap();
        assert_eq!(
            (got.id, got.given, got.echo.as_bytes()),
            (RequestId(0xdead_beef), None, &b"00000000deadbeef"[..])
        );
        assert_eq!(got.id.to_string(), "00000000deadbeef");
        assert_eq!(read(b"F").unwrap().id, RequestId(15));
        assert_eq!(read(b"ffffffffffffffff").unwrap().id, RequestId(u64::MAX));
    }

    #[test]
    fn other_printable_values_are_kept_beside_a_fresh_id() {
        for value in [&b"abc-123"[..], b"fffffffffffffffff", b"+1", b"trace id 7"] {
            let got = read(value).unwrap();
            assert_eq!(got.given.as_deref().map(str::as_bytes), Some(value));
            assert_eq!(got.echo.as_bytes(), value);
        }
    }

    #[test]
    fn long_or_unprintable_values_are_refused() {
        let long = [b'a'; MAX_CLIENT_ID_BYTES + 1];
        for value in [&long[..], b"tab\there", b"caf\xc3\xa9"] {
            assert_eq!(read(value).unwrap_err().code(), ErrorCode::InvalidRequest);
        }
        assert!(read(&[b'a'; MAX_CLIENT_ID_BYTES]).is_ok());
    }

    #[test]
    fn a_missing_or_empty_header_gets_a_fresh_id() {
        let a = ClientRequestId::from_header(None).unwrap();
        let b = read(b"").unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(b.given, None);
        assert_eq!(a.echo.to_str().unwrap(), a.id.to_string());
    }

    #[tokio::test]
    async fn the_scoped_id_is_current_within_its_task_only() {
        let inside = scope(RequestId(7), async { current() }).await;
        assert_eq!(inside, 7);
        assert_ne!(current(), current());
    }
}
