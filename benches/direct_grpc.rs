//! The baseline for the RPC benchmark: a plain gRPC server on hyper's HTTP/2
//! doing the `pricing` tier's work for `pricing.Pricing/Quote` (JSON message
//! in, JSON quote out), with nothing in between.
//!
//! `direct-grpc [ADDR]` (default 127.0.0.1:0) prints `listening on ADDR`.

#![forbid(unsafe_code)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;

#[derive(Deserialize)]
struct Quote {
    item: String,
    #[serde(default)]
    quantity: Option<u32>,
}

fn frame(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

fn status_only(code: u32) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    let mut resp = hyper::Response::new(Full::new(Bytes::new()).boxed());
    resp.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
    resp.headers_mut().insert("grpc-status", HeaderValue::from(code));
    resp
}

async fn handle(req: hyper::Request<Incoming>) -> Result<hyper::Response<BoxBody<Bytes, Infallible>>, Infallible> {
    if req.uri().path() != "/pricing.Pricing/Quote" {
        return Ok(status_only(12));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(status_only(13)),
    };
    let Some(quote) = body.get(5..).and_then(|m| serde_json::from_slice::<Quote>(m).ok()) else {
        return Ok(status_only(3));
    };
    let unit_price = match quote.item.as_str() {
        "widget" => 2.5,
        "gadget" => 10.0,
        "gizmo" => 0.75,
        _ => return Ok(status_only(5)),
    };
    let quantity = quote.quantity.unwrap_or(1);
    let answer = serde_json::json!({
        "item": quote.item, "quantity": quantity, "unit_price": unit_price,
        "total": unit_price * f64::from(quantity), "replica": 0,
    });
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Full::new(frame(answer.to_string().as_bytes())).with_trailers(async move { Some(Ok(trailers)) }).boxed();
    let mut resp = hyper::Response::new(body);
    resp.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
    Ok(resp)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}
