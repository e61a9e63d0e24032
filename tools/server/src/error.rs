//! [`ApiError`]: every error the API answers, with upstream's status and body shape: handled
//! errors are `{"detail": "<text>"}`, validation errors 422 `{"detail": [{"type", "loc", "msg",
//! "input"}]}`, and 401 carries `WWW-Authenticate: Bearer`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One entry of a 422 `detail` list.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// Pydantic's error type, such as `missing` or `value_error`.
    pub kind: &'static str,
    /// Where: `["body", "messages", 0, "content"]`, `["query", "limit"]`, `["path", "session_id"]`.
    pub loc: Vec<Value>,
    /// Why.
    pub msg: String,
    /// The value at fault (null when absent).
    pub input: Value,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// 404 `Session <id> not found`.
    NotFound(String),
    /// 400 with the text.
    BadRequest(String),
    /// 422 with the list.
    Validation(Vec<Invalid>),
    /// 401 with the text and `WWW-Authenticate: Bearer`.
    Unauthorized(&'static str),
    /// 409: the session kept changing under a read-modify-write; retry.
    Conflict(String),
    /// 413 with the text (a body or a session too large).
    TooLarge(String),
    /// 503: the database refuses writes (poisoned, closed) or a bounded wait ran out; retry later.
    Unavailable(String),
    /// 500.
    Internal(String),
}

impl ApiError {
    /// One 422 entry.
    pub fn invalid(kind: &'static str, loc: Vec<Value>, msg: impl Into<String>, input: Value) -> Self {
        Self::Validation(vec![Invalid { kind, loc, msg: msg.into(), input }])
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<palimpsest::Error> for ApiError {
    fn from(e: palimpsest::Error) -> Self {
        use palimpsest::Error as E;
        let text = e.to_string();
        match e {
            E::NotFound { session } => Self::NotFound(session),
            E::InvalidMessage { index, reason } => {
                Self::invalid("value_error", vec![json!("body"), json!("messages"), json!(index)], reason, Value::Null)
            }
            E::InvalidArgument { what, reason } => {
                Self::invalid("value_error", vec![json!("body"), json!(what)], reason, Value::Null)
            }
            E::InvalidSessionId { .. } => {
                Self::invalid("value_error", vec![json!("path"), json!("session_id")], text, Value::Null)
            }
            E::Conflict { .. } => Self::Conflict(text),
            E::Timeout { .. } | E::LockTimeout { .. } | E::Poisoned | E::Closed => Self::Unavailable(text),
            _ => Self::Internal(text),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            Self::Validation(list) => json!({
                "detail": list.iter().map(|i| json!({"type": i.kind, "loc": i.loc, "msg": i.msg, "input": i.input})).collect::<Vec<_>>()
            }),
            Self::NotFound(id) => json!({ "detail": format!("Session {id} not found") }),
            Self::BadRequest(t) | Self::Conflict(t) | Self::TooLarge(t) | Self::Unavailable(t) | Self::Internal(t) => {
                json!({ "detail": t })
            }
            Self::Unauthorized(t) => json!({ "detail": t }),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(self, Self::Unauthorized(_)) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
