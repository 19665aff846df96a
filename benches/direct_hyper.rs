//! The baseline for the HTTP benchmarks: a minimal hyper server doing the
//! backend tier's work directly (parse `{"message": M}`, answer
//! `{"message": "Hello Python!", "data": M}`), one HTTP hop and nothing else.
//!
//! `direct-hyper [ADDR]` prints `listening on ADDR`. The address defaults to
//! `127.0.0.1:$PORT` when `PORT` is set (as a process tier), else `127.0.0.1:0`.

#![forbid(unsafe_code)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Incoming_ {
    message: serde_json::Value,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    message: &'a str,
    data: serde_json::Value,
}

async fn handle(req: hyper::Request<Incoming>) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let (status, body) = match serde_json::from_slice::<Incoming_>(&body) {
        Ok(m) => (200, serde_json::to_vec(&Outgoing { message: "Hello Python!", data: m.message }).unwrap_or_default()),
        Err(_) => (400, br#"{"error":"bad request"}"#.to_vec()),
    };
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    Ok(resp)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| match std::env::var("PORT") {
        Ok(port) => format!("127.0.0.1:{port}"),
        Err(_) => "127.0.0.1:0".to_owned(),
    });
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}
