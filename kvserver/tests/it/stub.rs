//! A tiny HTTP server on port 0 that answers as a test says and records what it was asked:
//! the node that answers 503 or 504, or never answers, on demand.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value as Json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A request the stub received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The path and the query.
    pub path: String,
    pub body: String,
}

impl Seen {
    /// The body as JSON.
    pub fn json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// How the stub answers a request.
pub enum Reply {
    /// This status and JSON body.
    Json(u16, Json),
    /// Closes the connection without answering, after reading the whole request.
    Close,
}

impl Reply {
    /// An error answer in the API's shape.
    pub fn error(status: u16, code: &str) -> Reply {
        Reply::Json(
            status,
            json!({"error": {"code": code, "message": format!("stub says {code}")}}),
        )
    }
}

type Answer = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A running stub; stops when dropped.
pub struct Stub {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stub {
    /// Starts a stub that answers every request with `answer`.
    pub async fn start(answer: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (seen, answer) = (seen.clone(), answer.clone());
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (seen, answer) = (seen.clone(), answer.clone());
                        async move {
                            let method = req.method().to_string();
                            let path = req
                                .uri()
                                .path_and_query()
                                .map_or_else(String::new, |p| p.to_string());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let request = Seen {
                                method,
                                path,
                                body: String::from_utf8(body.to_vec()).unwrap(),
                            };
                            seen.lock().unwrap().push(request.clone());
                            match answer(&request) {
                                Reply::Json(status, body) => {
                                    let mut response =
                                        Response::new(Full::new(Bytes::from(body.to_string())));
                                    *response.status_mut() = status.try_into().unwrap();
                                    response.headers_mut().insert(
                                        "content-type",
                                        "application/json".parse().unwrap(),
                                    );
                                    Ok::<_, Closed>(response)
                                }
                                // An error from the service makes hyper drop the connection
                                // without an answer.
                                Reply::Close => Err(Closed),
                            }
                        }
                    });
                    tokio::spawn(async move {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Stub { addr, seen, task }
    }

    /// Starts a stub that answers every request with `status` and the API's error `code`.
    pub async fn failing(status: u16, code: &'static str) -> Stub {
        Stub::start(move |_| Reply::error(status, code)).await
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests were received.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// The error a stub's service fails with to close a connection unanswered.
#[derive(Debug)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed without an answer")
    }
}

impl std::error::Error for Closed {}

/// A port nothing listens on, held for as long as this lives: a socket bound to it that never
/// listens, so connections to it are refused (the kernel resets them) and no other test can bind
/// the port meanwhile, as it could if it were bound and released.
#[derive(Debug)]
pub struct ClosedPort(tokio::net::TcpSocket);

impl ClosedPort {
    /// The port's address.
    pub fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }
}

/// A [`ClosedPort`] on 127.0.0.1.
pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    ClosedPort(socket)
}
