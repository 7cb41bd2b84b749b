//! Baseline servers for benchmarks: what HTTP alone costs on this machine, without the store.
//!
//! ```console
//! # Answers every request with a fixed small JSON body: the one-hop HTTP limit.
//! cargo run --release -p examples --example bare_server -- --listen 127.0.0.1:7000
//! # Answers every request by making the same request to ADDR through a pooled client and
//! # returning its answer: the two-hop limit (server -> pooled client -> server).
//! cargo run --release -p examples --example bare_server -- --forward-to 127.0.0.1:7000
//! ```
//!
//! Both serve HTTP/1.1 exactly as `kvserver` does (same hyper builder settings, kept-alive
//! connections, `TCP_NODELAY`, a multi-threaded Tokio runtime, request bodies read in full), and
//! the fixed body is the size of a kvserver answer for a 16-byte key and a 32-byte value, so a
//! benchmark's ratio against them is the cost of everything kvserver does besides HTTP. The
//! forwarding client is configured like kvnet's `HttpTransport`. The bound address is printed on
//! the first line of standard output; Ctrl-C or SIGTERM stops the server.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// A minimal HTTP server for baselines: a fixed JSON answer, or one forwarded request.
#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Answer each request by sending it on to this `host:port` and returning its answer.
    #[arg(long, value_name = "ADDR")]
    forward_to: Option<String>,
}

/// The answer of the plain server: a kvserver entry for a 16-byte key and 32-byte value.
const BODY: &[u8] = b"{\"encoding\":\"string\",\"key\":\"key:000000000042\",\"value\":\"00000000000000000000000000000042\",\"version\":1}\n";

type Pooled = Client<HttpConnector, Full<Bytes>>;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bare_server: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let forward = args.forward_to.map(|to| {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(500)));
        let client: Pooled = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector);
        (to, client)
    });
    match &forward {
        Some((to, _)) => println!("bare_server: listening on http://{addr}, forwarding to {to}"),
        None => println!("bare_server: listening on http://{addr}"),
    }
    let _ = std::io::stdout().flush();

    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true);
    let serve = async {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let forward = forward.clone();
            let service = service_fn(move |req| {
                let forward = forward.clone();
                async move {
                    Ok::<_, Infallible>(match forward {
                        Some((to, client)) => forward_one(&to, &client, req).await,
                        None => answer(req).await,
                    })
                }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    };
    tokio::select! {
        () = serve => {}
        () = kvserver::shutdown_signal() => {}
    }
    ExitCode::SUCCESS
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn answer(req: Request<Incoming>) -> Response<Full<Bytes>> {
    // Read the body as kvserver does, so SETs cost the same bytes here.
    let _ = req.into_body().collect().await;
    json(StatusCode::OK, Bytes::from_static(BODY))
}

async fn forward_one(to: &str, client: &Pooled, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return json(StatusCode::BAD_REQUEST, Bytes::from_static(b"{}\n"));
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::builder()
        .method(parts.method)
        .uri(format!("http://{to}{path}"))
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(Full::new(body));
    let Ok(request) = request else {
        return json(StatusCode::BAD_REQUEST, Bytes::from_static(b"{}\n"));
    };
    match client.request(request).await {
        Ok(response) => {
            let status = response.status();
            match response.into_body().collect().await {
                Ok(body) => json(status, body.to_bytes()),
                Err(_) => json(StatusCode::BAD_GATEWAY, Bytes::from_static(b"{}\n")),
            }
        }
        Err(_) => json(StatusCode::BAD_GATEWAY, Bytes::from_static(b"{}\n")),
    }
}
