//! The router: routes, their parameters and bodies, and the layers around them (tracing, metrics,
//! timeout, the concurrency bound, bearer authentication, the body limit, compression).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::load_shed::error::Overloaded;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};

use crate::error::ApiError;
use crate::ids::SessionKey;
use crate::model::{AppendBody, UpdateBody};
use crate::service::{Service, Window};

/// Shared by every handler.
pub struct AppState {
    /// The operations.
    pub service: Service,
    /// Accepted token hashes; empty: no authentication.
    pub tokens: Vec<[u8; 32]>,
}

type Shared = Arc<AppState>;

/// The whole application.
pub fn router(state: Shared) -> Router {
    let config = &state.service.config;
    let layers = ServiceBuilder::new()
        // One `info` line per request (method, path, status, latency), filtered by RUST_LOG.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO))
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(middleware::from_fn_with_state(Arc::clone(&state), metrics_layer))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(config.request_timeout_ms),
        ))
        // Past the bound a request is refused at once (503, `Retry-After: 1`) rather than queued:
        // a queue would only add latency the client cannot see, and every wait must be bounded.
        .layer(HandleErrorLayer::new(overloaded))
        .layer(LoadShedLayer::new())
        .layer(GlobalConcurrencyLimitLayer::new(usize::try_from(config.max_concurrent_requests).unwrap_or(usize::MAX)))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), auth_layer))
        .layer(RequestBodyLimitLayer::new(usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX)))
        .layer(CompressionLayer::new());
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/working-memory/", get(list))
        .route("/v1/working-memory", get(list))
        .route("/v1/working-memory/{session_id}", get(get_memory).put(put_memory).delete(delete_memory))
        .route("/v1/working-memory/{session_id}/messages", post(append_messages))
        .route("/v1/memory/prompt", post(prompt))
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))) })
        // axum's own 2 MB default would otherwise cut bodies below `server.max_body_bytes`.
        .layer(DefaultBodyLimit::disable())
        .layer(layers)
        .with_state(state)
}

async fn overloaded(error: tower::BoxError) -> Response {
    if error.is::<Overloaded>() {
        let mut response =
            ApiError::Unavailable("too many requests in flight (server.max_concurrent_requests); retry".to_string())
                .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    } else {
        ApiError::Internal(error.to_string()).into_response()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn metrics_layer(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state.service.metrics.observe(&route, &method, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn auth_layer(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if state.tokens.is_empty() || request.uri().path() == "/v1/health" {
        return next.run(request).await;
    }
    let refuse = |why: &'static str| {
        state.service.metrics.auth_failures.inc();
        ApiError::Unauthorized(why).into_response()
    };
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return refuse("Missing authorization header");
    };
    let Some(token) =
        value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).filter(|t| !t.is_empty())
    else {
        return refuse("Missing bearer token");
    };
    let hash = crate::config::hash_token(token);
    let mut given = [0u8; 32];
    for (i, byte) in given.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    // Constant time per comparison, and every stored hash is compared.
    let ok = state.tokens.iter().fold(0u8, |acc, t| acc | t.ct_eq(&given).unwrap_u8());
    if ok == 1 { next.run(request).await } else { refuse("Invalid token") }
}

/// Parses a JSON body; malformed JSON, a wrong type, a missing field or nesting past serde_json's
/// recursion limit (128) is 422 with the path at fault; a body past the limit is 413.
fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge("request body too large".to_string()),
        _ => ApiError::BadRequest(e.body_text()),
    })?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = value.map_err(|e| {
        let mut loc = vec![json!("body")];
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => loc.push(json!(index)),
                serde_path_to_error::Segment::Map { key } => loc.push(json!(key)),
                serde_path_to_error::Segment::Enum { variant } => loc.push(json!(variant)),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let inner = e.into_inner();
        let kind = if inner.is_syntax() || inner.is_eof() {
            "json_invalid"
        } else if inner.to_string().starts_with("missing field") {
            "missing"
        } else {
            "value_error"
        };
        ApiError::invalid(kind, loc, inner.to_string(), Value::Null)
    })?;
    de.end().map_err(|e| ApiError::invalid("json_invalid", vec![json!("body")], e.to_string(), Value::Null))?;
    Ok(value)
}

/// Query parameters, parsed one by one so that each error names its parameter (422, `loc`
/// `["query", name]`).
struct Params(HashMap<String, String>);

impl Params {
    fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn int(&self, name: &'static str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
        let Some(raw) = self.text(name) else { return Ok(None) };
        let bad = |msg: String| ApiError::invalid("int_parsing", vec![json!("query"), json!(name)], msg, json!(raw));
        let n: u64 = raw.trim().parse().map_err(|_| bad("Input should be a valid integer".to_string()))?;
        if !(lo..=hi).contains(&n) {
            return Err(bad(format!("Input should be between {lo} and {hi}")));
        }
        Ok(Some(n))
    }

    fn window(&self) -> Result<Window<'_>, ApiError> {
        Ok(Window {
            model_name: self.text("model_name"),
            context_window_max: self.int("context_window_max", 1, u64::MAX)?,
        })
    }
}

fn key(session_id: &str, params: &Params) -> Result<SessionKey, ApiError> {
    SessionKey::new(session_id, params.text("namespace"), params.text("user_id")).map_err(|e| {
        let place = if e.field == "session_id" { "path" } else { "query" };
        ApiError::invalid("value_error", vec![json!(place), json!(e.field)], e.reason, Value::Null)
    })
}

async fn health() -> Json<Value> {
    Json(json!({ "now": now_ms() }))
}

async fn list(State(state): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Result<Json<Value>, ApiError> {
    let p = Params(q);
    let limit = p.int("limit", 1, 100)?.unwrap_or(20);
    let offset = p.int("offset", 0, u64::MAX)?.unwrap_or(0);
    let (namespace, user_id) =
        (p.text("namespace").filter(|s| !s.is_empty()), p.text("user_id").filter(|s| !s.is_empty()));
    let service = &state.service;
    let (sessions, total) =
        service.list(limit as usize, usize::try_from(offset).unwrap_or(usize::MAX), namespace, user_id).await?;
    Ok(Json(json!({ "sessions": sessions, "total": total })))
}

async fn get_memory(
    State(state): State<Shared>,
    Path(session_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let p = Params(q);
    let key = key(&session_id, &p)?;
    // Upstream accepts any integer and applies it only when positive.
    let limit = match p.text("recent_messages_limit") {
        None => None,
        Some(raw) => {
            let n: i64 = raw.trim().parse().map_err(|_| {
                ApiError::invalid(
                    "int_parsing",
                    vec![json!("query"), json!("recent_messages_limit")],
                    "Input should be a valid integer",
                    json!(raw),
                )
            })?;
            usize::try_from(n).ok().filter(|&n| n > 0)
        }
    };
    let out = state.service.get(&key, limit, p.window()?).await?;
    Ok(Json(out).into_response())
}

async fn put_memory(
    State(state): State<Shared>,
    Path(session_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let p = Params(q);
    key(&session_id, &Params(HashMap::new()))?;
    let body: UpdateBody = parse_body(body)?;
    let (out, deprecated) = state.service.put(&session_id, body, p.window()?).await?;
    let mut headers = HeaderMap::new();
    if deprecated {
        headers.insert(
            "X-Deprecation-Warning",
            HeaderValue::from_static(
                "messages[].created_at will become required in the next major version. Please provide timestamps for all messages.",
            ),
        );
    }
    Ok((headers, Json(out)).into_response())
}

async fn delete_memory(
    State(state): State<Shared>,
    Path(session_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let key = key(&session_id, &Params(q))?;
    state.service.delete(&key).await?;
    Ok(Json(json!({ "status": "ok" })))
}

async fn append_messages(
    State(state): State<Shared>,
    Path(session_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = Params(q);
    let key = key(&session_id, &p)?;
    let body: AppendBody = parse_body(body)?;
    Ok(Json(state.service.append(&key, body, p.window()?).await?))
}

/// `POST /v1/memory/prompt`'s body: `query`, and `session` and/or `long_term_search`.
#[derive(serde::Deserialize)]
struct PromptBody {
    query: String,
    session: Option<PromptSession>,
    long_term_search: Option<Value>,
}

#[derive(serde::Deserialize)]
struct PromptSession {
    session_id: String,
    namespace: Option<String>,
    user_id: Option<String>,
    model_name: Option<String>,
    /// The client sends it as a string.
    context_window_max: Option<Value>,
}

async fn prompt(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let body: PromptBody = parse_body(body)?;
    if body.session.is_none() && body.long_term_search.is_none() {
        return Err(ApiError::BadRequest("Either session or long_term_search must be provided".to_string()));
    }
    let mut messages = Vec::new();
    if let Some(s) = &body.session {
        let key = SessionKey::new(&s.session_id, s.namespace.as_deref(), s.user_id.as_deref()).map_err(|e| {
            ApiError::invalid(
                "value_error",
                vec![json!("body"), json!("session"), json!(e.field)],
                e.reason,
                Value::Null,
            )
        })?;
        let max = match &s.context_window_max {
            None | Some(Value::Null) => None,
            Some(v) => {
                Some(v.as_u64().or_else(|| v.as_str().and_then(|t| t.trim().parse().ok())).ok_or_else(|| {
                    ApiError::invalid(
                        "int_parsing",
                        vec![json!("body"), json!("session"), json!("context_window_max")],
                        "Input should be a valid integer",
                        v.clone(),
                    )
                })?)
            }
        };
        let window = Window { model_name: s.model_name.as_deref(), context_window_max: max };
        messages = state.service.prompt_messages(&key, window).await?;
    }
    // Long-term search is not served: palimpsest keeps no vector index (the block stays null).
    messages.push(
        json!({"role": "user", "content": {"type": "text", "text": body.query, "annotations": null, "_meta": null}}),
    );
    Ok(Json(json!({ "messages": messages, "long_term_memories": null })))
}

async fn metrics(State(state): State<Shared>) -> Response {
    let text = state.service.metrics.render(&state.service.engine);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}
