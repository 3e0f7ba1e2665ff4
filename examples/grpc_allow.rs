//! An allow-all gRPC ext_authz stub, the gRPC counterpart of `bare_hyper` in the gateway
//! protocol benchmark (benches/gateway.sh): every request gets the same precomputed
//! `CheckResponse` (status OK, an empty `OkHttpResponse`) and `grpc-status: 0`, on the same
//! runtime and connection setup as usher's listeners.
//!
//! `cargo run --release --example grpc_allow -- 127.0.0.1:9393`

use std::convert::Infallible;

use bytes::{BufMut, Bytes};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckResponse, OkHttpResponse};
use envoy_types::pb::google::rpc;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prost::Message;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9393".into());
    let response = CheckResponse {
        status: Some(rpc::Status::default()),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
        ..Default::default()
    };
    let mut framed = Vec::new();
    framed.put_u8(0);
    framed.put_u32(response.encoded_len() as u32);
    response
        .encode(&mut framed)
        .map_err(std::io::Error::other)?;
    let framed = Bytes::from(framed);
    let listener = TcpListener::bind(&addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let framed = framed.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let framed = framed.clone();
                async move {
                    // Read the request to its end, as a server must before trailers.
                    let _ = req.into_body().collect().await;
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let body = Full::new(framed).with_trailers(async { Some(Ok(trailers)) });
                    let mut response = hyper::Response::new(body);
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
