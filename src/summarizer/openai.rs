//! The OpenAI-compatible summarizer: one non-streaming `POST {base_url}/v1/chat/completions` per
//! task, with the prompt from `prompt`. It works against OpenAI itself and against local servers
//! that speak the same protocol (llama.cpp, vLLM, Ollama). Every reply is treated as untrusted
//! input: the body is read with a size bound, parsed by hand, and any surprise becomes an
//! [`Error::Summarizer`] rather than a panic. Provider error text is cut to
//! [`MAX_PROVIDER_ERROR_BYTES`] so a provider cannot flood logs or events through us.
//! The reply text is cleaned (`sanitize`: a model may echo the terminal codes of the tool output it
//! read) but not otherwise changed: trimming and checking it is the compaction driver's job
//! (`check_summary`). Only a reply that is not text (no string content) is refused here.
//! Every call goes through the one retry policy (`retry`): a rate limit, an overloaded provider or a
//! dropped connection is tried again within the call's deadline; anything else fails at once.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde_json::{Value, json};

use super::retry::{Failure, RetryPolicy, Transient, is_retryable_status, parse_retry_after};
use super::{BoxFuture, MAX_PROVIDER_ERROR_BYTES, Summarizer, SummaryInput, sanitize, truncate_bytes};
use crate::config::OpenAiConfig;
use crate::error::Error;

/// Largest successful reply body read, bytes. A chat completion of a summary is a few KiB; a
/// larger body is a misbehaving server, refused before it can use our memory.
const MAX_REPLY_BYTES: usize = 4 << 20;

/// Largest error reply body read, bytes. Only [`MAX_PROVIDER_ERROR_BYTES`] of its message are
/// kept, but the whole JSON document is needed to find `error.message`; past this size the
/// body is taken as plain text and cut.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// What the timeout error names, so callers and logs can tell which wait ran out.
const TIMEOUT_WHAT: &str = "the summarizer request";

/// A summarizer backed by an OpenAI-compatible chat-completions endpoint.
///
/// Built once from [`OpenAiConfig`]; the HTTP client (and its connection pool) is shared by
/// every call, so concurrent chunk summaries reuse connections.
#[derive(Debug)]
pub struct OpenAiSummarizer {
    client: reqwest::Client,
    url: reqwest::Url,
    /// `url` without its password, if the base URL carried one: for logs and error messages.
    shown_url: reqwest::Url,
    auth: Option<HeaderValue>,
    model: String,
    max_tokens: u64,
    temperature: f64,
    request_timeout_ms: u64,
    retry: RetryPolicy,
    name: String,
}

impl OpenAiSummarizer {
    /// Builds the client. The API key is `cfg.api_key`, or else the environment variable named
    /// by `cfg.api_key_env` read now; with neither, requests carry no `Authorization` header
    /// (local servers usually need none).
    ///
    /// Fails with [`Error::InvalidConfig`] when the base URL does not parse, a timeout is zero,
    /// or the key cannot be sent as a header; with [`Error::Summarizer`] if the HTTP client
    /// cannot be built.
    pub fn new(cfg: &OpenAiConfig) -> Result<Self, Error> {
        let endpoint = format!("{}/v1/chat/completions", cfg.base_url.trim_end_matches('/'));
        let url = reqwest::Url::parse(&endpoint)
            .map_err(|e| invalid("summarizer.openai.base_url", format!("{:?} is not a URL: {e}", cfg.base_url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(
                "summarizer.openai.base_url",
                format!("{:?} must start with http:// or https://", cfg.base_url),
            ));
        }
        // A zero timeout would fail every request; refuse it here rather than at the first call.
        if cfg.connect_timeout_ms == 0 {
            return Err(invalid("summarizer.openai.connect_timeout_ms", "must be at least 1".to_string()));
        }
        if cfg.request_timeout_ms == 0 {
            return Err(invalid("summarizer.openai.request_timeout_ms", "must be at least 1".to_string()));
        }

        let key = match &cfg.api_key {
            Some(key) => Some(key.clone()),
            // An empty variable is treated as unset: sending "Bearer " only earns a 401.
            None => std::env::var(&cfg.api_key_env).ok().filter(|k| !k.trim().is_empty()),
        };
        let auth = match key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.trim())).map_err(|_| {
                    // Never echo the key itself into an error message.
                    invalid(
                        "summarizer.openai.api_key",
                        "contains characters not allowed in an HTTP header".to_string(),
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };

        // reqwest is built with `rustls-no-provider`: a crypto provider must be installed
        // process-wide before the first client. An error only means one already is (ours from an
        // earlier call, or the embedding application's), which is what we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .timeout(Duration::from_millis(cfg.request_timeout_ms))
            .build()
            .map_err(|e| Error::Summarizer {
                status: None,
                message: truncate_bytes(
                    &format!("cannot build the HTTP client: {}", causes(&e)),
                    MAX_PROVIDER_ERROR_BYTES,
                ),
            })?;

        let mut shown_url = url.clone();
        let _ = shown_url.set_password(None);
        Ok(Self {
            client,
            url,
            shown_url,
            auth,
            model: cfg.model.clone(),
            max_tokens: cfg.max_tokens,
            temperature: cfg.temperature,
            request_timeout_ms: cfg.request_timeout_ms,
            retry: RetryPolicy::new(&cfg.retry),
            name: format!("openai:{}", cfg.model),
        })
    }

    async fn call(&self, input: SummaryInput) -> Result<String, Error> {
        let prompt = super::prompt::build(&input);
        let reply = self.complete(&prompt.system, &prompt.user, &format!("{:?}", input.task)).await?;
        Ok(sanitize(&reply).into_owned())
    }

    /// One chat completion of a system and a user message; returns the reply text unchecked.
    /// `task` names the request in logs. Shared by the summarizer and by the model-based episode
    /// classifier and memory extractor, so they reuse one client, its bounds, its error mapping and
    /// its retry policy (`summarizer.openai.retry`, within the deadline of the caller's
    /// `retry::CallScope` when there is one).
    pub(crate) async fn complete(&self, system: &str, user: &str, task: &str) -> Result<String, Error> {
        let body = json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": false,
        });
        // Encoding a `Value` cannot fail in practice; the error is mapped rather than unwrapped.
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| Error::Summarizer { status: None, message: format!("cannot encode the request: {e}") })?;
        tracing::debug!(
            url = %self.shown_url,
            model = %self.model,
            task,
            request_bytes = bytes.len(),
            "summarizer request"
        );
        // Each try sends its own copy: a request body is consumed by sending it.
        self.retry.run(task, || self.attempt(bytes.clone())).await
    }

    /// One try: send the request, read and parse the reply, and say whether a failure is passing.
    async fn attempt(&self, bytes: Vec<u8>) -> Result<String, Failure> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(bytes);
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let mut response = request.send().await.map_err(|e| self.transport_failure(&e, "sending the request"))?;

        let status = response.status();
        if !status.is_success() {
            let retry_after =
                response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
            let (body, complete) = read_bounded(&mut response, MAX_ERROR_BODY_BYTES)
                .await
                .map_err(|e| self.transport_failure(&e, "reading the error reply"))?;
            let message = provider_message(&body, complete, status.canonical_reason());
            tracing::warn!(status = status.as_u16(), provider_message = %message, "summarizer provider returned an error");
            let error = Error::Summarizer { status: Some(status.as_u16()), message };
            let transient = is_retryable_status(status.as_u16()).then(|| Transient {
                status: Some(status.as_u16()),
                cause: format!("HTTP {}", status.as_u16()),
                retry_after,
            });
            return Err(Failure { error, transient });
        }

        // A declared length over the limit is refused before reading any of it.
        if response.content_length().is_some_and(|n| n > MAX_REPLY_BYTES as u64) {
            return Err(Failure::fatal(malformed(format!("the reply body is over {MAX_REPLY_BYTES} bytes"))));
        }
        let (body, complete) = read_bounded(&mut response, MAX_REPLY_BYTES)
            .await
            .map_err(|e| self.transport_failure(&e, "reading the reply"))?;
        if !complete {
            return Err(Failure::fatal(malformed(format!("the reply body is over {MAX_REPLY_BYTES} bytes"))));
        }
        parse_reply(&body).map_err(Failure::fatal)
    }

    /// A transport failure, marked passing when the connection timed out while connecting or was
    /// reset or cut short: the provider may answer the next try. A refused connection (nothing
    /// listening: a wrong URL or a stopped server) and a request timeout are final.
    fn transport_failure(&self, e: &reqwest::Error, during: &str) -> Failure {
        let error = self.transport_error(e, during);
        let cause = if e.is_connect() && e.is_timeout() {
            Some("connect timeout")
        } else if is_dropped_connection(e) {
            Some("connection reset")
        } else {
            None
        };
        let transient = cause.map(|cause| Transient { status: None, cause: cause.to_string(), retry_after: None });
        Failure { error, transient }
    }

    /// Turns a reqwest failure into the error a caller can act on: a timeout to retry later, or
    /// an unreachable provider. `during` names the step that failed.
    fn transport_error(&self, e: &reqwest::Error, during: &str) -> Error {
        // A connect timeout is checked first: it says the host is unreachable, not that the
        // model is slow, so it is reported as such.
        if e.is_connect() {
            let message = format!("cannot reach {}: {}", self.shown_url, causes(e));
            return Error::Summarizer { status: None, message: truncate_bytes(&message, MAX_PROVIDER_ERROR_BYTES) };
        }
        if e.is_timeout() {
            return Error::Timeout { what: TIMEOUT_WHAT, after_ms: self.request_timeout_ms };
        }
        let message = format!("request to {} failed while {during}: {}", self.shown_url, causes(e));
        Error::Summarizer { status: None, message: truncate_bytes(&message, MAX_PROVIDER_ERROR_BYTES) }
    }
}

impl Summarizer for OpenAiSummarizer {
    fn name(&self) -> &str {
        &self.name
    }

    fn summarize(&self, input: SummaryInput) -> BoxFuture<'_, Result<String, Error>> {
        Box::pin(self.call(input))
    }
}

/// Whether the connection was dropped under the request: reset, aborted, or closed before the
/// reply ended (hyper reports the last as an incomplete message, without an I/O error).
fn is_dropped_connection(e: &reqwest::Error) -> bool {
    use std::io::ErrorKind;
    // A body read cut by our own request timeout is a slow model, not a dropped connection.
    if e.is_timeout() {
        return false;
    }
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        source = inner.source();
    }
    // A body cut short mid-reply: the reply was never read whole, so nothing was refused yet.
    // hyper is not a direct dependency, so its "incomplete message" (the server closed before
    // answering) is recognised by its text; missing it only means one failure is not retried.
    e.is_body() || (e.is_request() && causes(e).contains("connection closed before message completed"))
}

/// Reads at most `max` bytes of the body. Returns the bytes and whether the body ended within
/// the bound; the rest of an oversized body is never read (the connection is dropped with it).
async fn read_bounded(response: &mut reqwest::Response, max: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// Extracts `choices[0].message.content` from a successful reply, logging usage and the finish
/// reason. Any other shape is a malformed reply.
fn parse_reply(body: &[u8]) -> Result<String, Error> {
    let value: Value = serde_json::from_slice(body).map_err(|e| malformed(format!("not JSON ({e})")))?;
    let Some(choice) = value.get("choices").and_then(|c| c.get(0)) else {
        // Some providers answer 200 with an error document; its message is the useful part.
        return Err(match error_message(&value) {
            Some(m) => malformed(format!("no choices; the provider says: {m}")),
            None => malformed("no choices[0] in the reply".to_string()),
        });
    };
    let content = match choice.get("message").and_then(|m| m.get("content")) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => return Err(malformed("choices[0].message.content is null or missing".to_string())),
        Some(other) => {
            return Err(malformed(format!("choices[0].message.content is {}, not a string", kind_of(other))));
        }
    };

    let finish_reason = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("");
    let usage = value.get("usage");
    let tokens = |field: &str| usage.and_then(|u| u.get(field)).and_then(Value::as_u64);
    let (prompt_tokens, completion_tokens) = (tokens("prompt_tokens"), tokens("completion_tokens"));
    if finish_reason == "length" {
        // Accepted: a cut summary is still a summary, and the driver checks its size. Worth a
        // warning because max_tokens is probably too small for the configured summary size.
        tracing::warn!(?prompt_tokens, ?completion_tokens, "summary cut at max_tokens (finish_reason \"length\")");
    } else {
        tracing::debug!(?prompt_tokens, ?completion_tokens, finish_reason, "summarizer reply");
    }
    Ok(content)
}

/// The message of an error reply: the provider's `error.message` when the body is OpenAI-shaped
/// JSON, else the body text; cut to [`MAX_PROVIDER_ERROR_BYTES`].
fn provider_message(body: &[u8], complete: bool, reason: Option<&str>) -> String {
    let parsed = if complete { serde_json::from_slice::<Value>(body).ok() } else { None };
    let text = match parsed.as_ref().and_then(error_message) {
        Some(message) => message.to_string(),
        None => String::from_utf8_lossy(body).trim().to_string(),
    };
    let text = if text.is_empty() {
        format!("empty error reply ({})", reason.unwrap_or("unknown status"))
    } else if !complete {
        format!("{text}...")
    } else {
        text
    };
    truncate_bytes(&text, MAX_PROVIDER_ERROR_BYTES)
}

/// `error.message` (OpenAI), or `error` when it is a bare string (some compatible servers).
fn error_message(value: &Value) -> Option<&str> {
    match value.get("error")? {
        Value::String(message) => Some(message),
        error => error.get("message")?.as_str(),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn malformed(detail: String) -> Error {
    Error::Summarizer {
        status: None,
        message: truncate_bytes(&format!("malformed reply: {detail}"), MAX_PROVIDER_ERROR_BYTES),
    }
}

fn invalid(field: &str, reason: String) -> Error {
    Error::InvalidConfig { field: field.to_string(), reason }
}

/// What caused an error: its sources joined as `outer: inner: root`, or its own text when it has
/// none. reqwest's top-level text ("error sending request for url (...)") repeats the URL and
/// hides the cause (connection refused, DNS, reset) in the chain.
fn causes(e: &dyn std::error::Error) -> String {
    let Some(first) = e.source() else {
        return e.to_string();
    };
    let mut text = first.to_string();
    let mut source = first.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_of(result: Result<String, Error>) -> String {
        match result {
            Err(Error::Summarizer { status: None, message }) => message,
            other => panic!("expected a malformed-reply error, got {other:?}"),
        }
    }

    #[test]
    fn reply_shapes() {
        let ok = br#"{"choices":[{"message":{"content":"sum"},"finish_reason":"length"}],"usage":{"prompt_tokens":3}}"#;
        assert_eq!(parse_reply(ok).unwrap(), "sum");
        assert!(message_of(parse_reply(b"<html>")).starts_with("malformed reply: not JSON"));
        assert!(message_of(parse_reply(br#"{"choices":[]}"#)).contains("no choices"));
        assert!(message_of(parse_reply(br#"{"choices":[{"message":{"content":null}}]}"#)).contains("null"));
        assert!(message_of(parse_reply(br#"{"choices":[{"message":{"content":[1]}}]}"#)).contains("an array"));
        assert!(message_of(parse_reply(br#"{"error":{"message":"quota"}}"#)).contains("quota"));
        assert!(message_of(parse_reply(b"[1,2]")).contains("no choices"));
    }

    #[test]
    fn provider_messages_are_bounded() {
        assert_eq!(provider_message(br#"{"error":{"message":"bad key"}}"#, true, None), "bad key");
        assert_eq!(provider_message(br#"{"error":"overloaded"}"#, true, None), "overloaded");
        assert_eq!(provider_message(b"  oops \n", true, None), "oops");
        assert_eq!(provider_message(b"", true, Some("Bad Gateway")), "empty error reply (Bad Gateway)");
        let long = "é".repeat(5_000);
        let cut = provider_message(long.as_bytes(), true, None);
        assert!(cut.len() <= MAX_PROVIDER_ERROR_BYTES && cut.ends_with("..."));
        let partial = provider_message(br#"{"error":{"message":"x"#, false, None);
        assert!(partial.starts_with("{\"error\""));
    }
}
