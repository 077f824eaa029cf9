//! The answers the proxy gives itself (no target involved): errors that say what went wrong,
//! fixed responses and redirects. Every error answer has a short text body naming the cause,
//! so a client (and its operator) can tell a 503 of the load balancer from a target's.

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Response, StatusCode,
    body::Bytes,
    header::{CONNECTION, CONTENT_TYPE, HeaderValue, LOCATION},
};

use super::{
    rules::FixedAnswer,
    target_client::{BoxError, ProxyBody},
};

/// Why the load balancer answered a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No target of the chosen group is in service.
    NoTarget,
    /// The group has no client (its settings could not be built) or does not exist.
    NoGroup,
    /// The target refused the connection, or it broke.
    TargetFailed,
    /// The target did not answer within the group's response timeout.
    TargetTimeout,
    /// A request the proxy will not forward (ambiguous framing, a bad body).
    BadRequest,
    /// A redirect would send the client back to the same URL.
    RedirectLoop,
    /// A request head longer than the listener's `max_header_bytes`.
    HeadTooLarge,
    /// A redirect needs a host and the request named none.
    NoHost,
    /// The request head did not arrive within the listener's `request_header_timeout`.
    HeadTimeout,
}

impl Failure {
    /// The status it answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoTarget | Self::NoGroup => StatusCode::SERVICE_UNAVAILABLE,
            Self::TargetFailed => StatusCode::BAD_GATEWAY,
            Self::TargetTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest | Self::NoHost => StatusCode::BAD_REQUEST,
            Self::RedirectLoop => StatusCode::INTERNAL_SERVER_ERROR,
            Self::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::HeadTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The access log's name for it.
    pub fn code(self) -> &'static str {
        match self {
            Self::NoTarget => "no_target_in_service",
            Self::NoGroup => "no_target_group",
            Self::TargetFailed => "target_failed",
            Self::TargetTimeout => "target_timeout",
            Self::BadRequest => "bad_request",
            Self::RedirectLoop => "redirect_loop",
            Self::NoHost => "no_host",
            Self::HeadTooLarge => "head_too_large",
            Self::HeadTimeout => "request_header_timeout",
        }
    }

    /// The body: what happened, in a line.
    fn text(self) -> &'static str {
        match self {
            Self::NoTarget => {
                "503 Service Unavailable: no target of the target group is in service\n"
            }
            Self::NoGroup => "503 Service Unavailable: the target group cannot be reached\n",
            Self::TargetFailed => {
                "502 Bad Gateway: the target refused the connection or failed to answer\n"
            }
            Self::TargetTimeout => "504 Gateway Timeout: the target did not answer in time\n",
            Self::BadRequest => "400 Bad Request: the request is malformed or ambiguous\n",
            Self::RedirectLoop => {
                "500 Internal Server Error: the redirect would lead back to this URL\n"
            }
            Self::NoHost => "400 Bad Request: the request has no Host\n",
            Self::HeadTooLarge => {
                "431 Request Header Fields Too Large: the request head is longer than this listener allows\n"
            }
            Self::HeadTimeout => {
                "408 Request Timeout: the request head did not arrive within this listener's request_header_timeout\n"
            }
        }
    }

    /// The whole answer. `close`: the connection ends after it (the request was refused for
    /// its framing, so nothing after it on the connection can be trusted).
    pub fn response(self, close: bool) -> Response<ProxyBody> {
        let mut response = text_response(self.status(), self.text());
        if close {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// The whole answer as HTTP/1.1 bytes, closing the connection: for the framing guard,
    /// which answers below hyper a head it never lets hyper see.
    pub fn http1_closing_bytes(self) -> Vec<u8> {
        let status = self.status();
        let text = self.text();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            text.len(),
        )
        .into_bytes()
    }
}

/// A `text/plain` answer.
fn text_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(body(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A fixed-response action's answer.
pub fn fixed(answer: &FixedAnswer) -> Response<ProxyBody> {
    let mut response = Response::new(body(answer.body.clone()));
    *response.status_mut() = answer.status;
    if let Some(content_type) = &answer.content_type {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, content_type.clone());
    }
    response
}

/// A redirect to `location`.
pub fn redirect(status: StatusCode, location: HeaderValue) -> Response<ProxyBody> {
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    response.headers_mut().insert(LOCATION, location);
    response
}

/// A body of these bytes.
pub fn body(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never| -> BoxError { match never {} })
        .boxed()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    body(Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_answers_its_status_with_a_body_naming_the_cause() {
        for (failure, status, words) in [
            (Failure::NoTarget, 503, "no target"),
            (Failure::TargetFailed, 502, "refused"),
            (Failure::TargetTimeout, 504, "in time"),
            (Failure::BadRequest, 400, "malformed"),
        ] {
            let response = failure.response(false);
            assert_eq!(response.status().as_u16(), status);
            assert!(failure.text().contains(words), "{failure:?}");
            assert!(failure.text().starts_with(&status.to_string()));
        }
        let closing = Failure::BadRequest.response(true);
        assert_eq!(closing.headers()[CONNECTION], "close");
    }

    #[test]
    fn http1_closing_bytes_are_a_whole_answer_with_its_length_and_close() {
        let bytes = Failure::HeadTooLarge.http1_closing_bytes();
        let text = String::from_utf8(bytes).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        assert!(
            body.starts_with("431 ") && body.contains("longer than"),
            "{body}"
        );
    }
}
