//! gRPC framing on hyper for one unary method: which requests are gRPC calls, the
//! length-prefixed message in, the answer body (one message, then the `grpc-status` trailer),
//! and trailers-only answers.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Method, Request, Version};
use http_body::{Frame, SizeHint};
use prost::Message;

use super::CHECK_PATH;

/// The largest `CheckRequest` read. Envoy sends the request's headers (60 KiB at most by
/// default) and, here, no body.
pub const MAX_MESSAGE: usize = 1 << 20;

/// gRPC status codes used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    /// 0.
    Ok = 0,
    /// 3: the request is not a check usher can judge.
    InvalidArgument = 3,
    /// 7: refused, not signed in as needed.
    PermissionDenied = 7,
    /// 8: the message is larger than [`MAX_MESSAGE`].
    ResourceExhausted = 8,
    /// 12: compressed messages.
    Unimplemented = 12,
    /// 13.
    Internal = 13,
    /// 14: the state needed for the decision is unreachable.
    Unavailable = 14,
    /// 16: refused, no usable token.
    Unauthenticated = 16,
}

/// Whether `req` is a gRPC `Authorization/Check` call.
pub fn is_grpc<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_2
        && req.method() == Method::POST
        && req.uri().path() == CHECK_PATH
        && req.headers().get(CONTENT_TYPE).is_some_and(|v| {
            let v = v.as_bytes();
            v == b"application/grpc"
                || v.starts_with(b"application/grpc+")
                || v.starts_with(b"application/grpc;")
        })
}

/// A unary gRPC answer: at most one message, then the trailers (none for a trailers-only
/// answer, whose status is in the head).
#[derive(Debug, Default)]
pub struct Unary {
    message: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(message) = this.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.message.as_ref().map_or(0, |m| m.len() as u64))
    }
}

/// The one message of a unary request: a 5-byte prefix (compressed flag, big-endian length)
/// and exactly that many bytes.
#[allow(clippy::result_large_err)]
pub fn unframe(body: &Bytes) -> Result<Bytes, http::Response<Unary>> {
    let Some((head, message)) = body.split_first_chunk::<5>() else {
        return Err(status(Code::InvalidArgument, "no message"));
    };
    if head[0] != 0 {
        // Nothing advertises compression (`grpc-accept-encoding`), so a client must not use it.
        return Err(status(
            Code::Unimplemented,
            "compressed messages are not supported",
        ));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len != message.len() {
        return Err(status(
            Code::InvalidArgument,
            "exactly one message is expected",
        ));
    }
    Ok(body.slice(5..))
}

/// 200 with one message and `grpc-status: 0`.
pub fn message(response: &CheckResponse) -> http::Response<Unary> {
    let len = response.encoded_len();
    let mut buf = Vec::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    // A Vec grows as needed: encoding into it cannot fail.
    let _ = response.encode(&mut buf);
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    head(Unary {
        message: Some(Bytes::from(buf)),
        trailers: Some(trailers),
    })
}

/// A trailers-only answer: no message, the status in the head.
pub fn status(code: Code, message: &'static str) -> http::Response<Unary> {
    let mut response = head(Unary::default());
    let headers = response.headers_mut();
    headers.insert("grpc-status", http::HeaderValue::from(code as i32));
    headers.insert("grpc-message", http::HeaderValue::from_static(message));
    response
}

fn head(body: Unary) -> http::Response<Unary> {
    let mut response = http::Response::new(body);
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_checked() {
        let frame = |flag: u8, len: u32, body: &[u8]| {
            let mut b = vec![flag];
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(body);
            Bytes::from(b)
        };
        assert_eq!(unframe(&frame(0, 3, b"abc")).unwrap(), "abc");
        assert_eq!(unframe(&frame(0, 0, b"")).unwrap(), "");
        let code = |r: http::Response<Unary>| r.headers()["grpc-status"].clone();
        assert_eq!(code(unframe(&frame(1, 3, b"abc")).unwrap_err()), "12");
        assert_eq!(code(unframe(&frame(0, 4, b"abc")).unwrap_err()), "3");
        assert_eq!(code(unframe(&frame(0, 2, b"abc")).unwrap_err()), "3");
        assert_eq!(
            code(unframe(&Bytes::from_static(b"\0\0")).unwrap_err()),
            "3"
        );
    }

    #[test]
    fn only_grpc_posts_to_the_check_path_are_grpc() {
        let req = |version, method, path: &str, ct: &str| {
            Request::builder()
                .version(version)
                .method(method)
                .uri(path)
                .header(CONTENT_TYPE, ct)
                .body(())
                .unwrap()
        };
        let v2 = Version::HTTP_2;
        assert!(is_grpc(&req(
            v2,
            Method::POST,
            CHECK_PATH,
            "application/grpc"
        )));
        assert!(is_grpc(&req(
            v2,
            Method::POST,
            CHECK_PATH,
            "application/grpc+proto"
        )));
        assert!(!is_grpc(&req(
            v2,
            Method::POST,
            "/ext_authz/x",
            "application/grpc"
        )));
        assert!(!is_grpc(&req(
            v2,
            Method::POST,
            "/envoy.service.auth.v3.Authorization/Other",
            "application/grpc"
        )));
        assert!(!is_grpc(&req(
            v2,
            Method::GET,
            CHECK_PATH,
            "application/grpc"
        )));
        assert!(!is_grpc(&req(
            v2,
            Method::POST,
            CHECK_PATH,
            "application/json"
        )));
        assert!(!is_grpc(&req(
            v2,
            Method::POST,
            CHECK_PATH,
            "application/grpcx"
        )));
        assert!(!is_grpc(&req(
            Version::HTTP_11,
            Method::POST,
            CHECK_PATH,
            "application/grpc"
        )));
    }
}
