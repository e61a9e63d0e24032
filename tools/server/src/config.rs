//! The server's configuration: the `[server]` table of `palimpsest serve --config FILE` (the
//! `[engine]` table of the same file is the library's [`palimpsest::Config`]). Every value is
//! bounded and checked at load, with the field's dotted name in the error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Why the configuration or the tokens are refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of range or of the wrong type.
    #[error("invalid config value {field}: {reason}")]
    Invalid {
        /// Dotted path, such as `server.request_timeout_ms`.
        field: String,
        /// Why.
        reason: String,
    },
    /// The token file could not be read.
    #[error("cannot read the token file {}: {source}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// `[server]`: limits, background work and authentication.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where to listen (the CLI's `--listen` overrides it). Default `127.0.0.1:8000`.
    pub listen: SocketAddr,
    /// Largest request body, bytes. Default 8 MiB, range 1 KiB..=256 MiB.
    pub max_body_bytes: u64,
    /// Longest a request may take, ms (then 408). Default 30,000, range 100..=600,000.
    pub request_timeout_ms: u64,
    /// Requests handled at once; more are refused with 503 and `Retry-After: 1`. Default 256, range
    /// 1..=65,536.
    pub max_concurrent_requests: u64,
    /// Longest shutdown waits for requests in flight, then for background work, ms. Default
    /// 10,000, range 100..=600,000.
    pub shutdown_timeout_ms: u64,
    /// Most messages a whole-session read returns (GET without `recent_messages_limit`, the PUT's
    /// comparison); a longer session answers 413 and must be read with a limit. Default 100,000,
    /// range 1..=10,000,000.
    pub max_session_messages: u64,
    /// Most sessions `GET /v1/working-memory/` walks to count and filter. Default 100,000, range
    /// 1..=10,000,000.
    pub max_list_scan: u64,
    /// Summarize in the background when messages pass 70% of the window (upstream's rule).
    /// Default true.
    pub summarization: bool,
    /// Background compactions in flight at once; past it a trigger is skipped (the next write
    /// triggers again). Default 64, range 1..=4,096.
    pub max_background_compactions: u64,
    /// Seconds between TTL sweeps. Default 60, range 1..=86,400.
    pub ttl_sweep_interval_s: u64,
    /// Sessions one TTL sweep looks at (it continues where the last one stopped). Default 1,000,
    /// range 1..=1,000,000.
    pub ttl_sweep_batch: u64,
    /// SHA-256 (hex) of each accepted bearer token.
    pub token_sha256: Vec<String>,
    /// A file with one SHA-256 (hex) of an accepted token per line (`#` comments allowed).
    pub token_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            max_body_bytes: 8 << 20,
            request_timeout_ms: 30_000,
            max_concurrent_requests: 256,
            shutdown_timeout_ms: 10_000,
            max_session_messages: 100_000,
            max_list_scan: 100_000,
            summarization: true,
            max_background_compactions: 64,
            ttl_sweep_interval_s: 60,
            ttl_sweep_batch: 1_000,
            token_sha256: Vec::new(),
            token_file: None,
        }
    }
}

fn in_range(field: &str, value: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field: format!("server.{field}"),
            reason: format!("{value} is outside {lo}..={hi}"),
        })
    }
}

/// The SHA-256 of a token, as hex: what the config stores.
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(field: &str, text: &str) -> Result<[u8; 32], ConfigError> {
    let bad = || ConfigError::Invalid { field: field.to_string(), reason: "not 64 hex digits (a SHA-256)".to_string() };
    let text = text.trim();
    if text.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

impl ServerConfig {
    /// Checks every range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        in_range("max_body_bytes", self.max_body_bytes, 1 << 10, 256 << 20)?;
        in_range("request_timeout_ms", self.request_timeout_ms, 100, 600_000)?;
        in_range("max_concurrent_requests", self.max_concurrent_requests, 1, 65_536)?;
        in_range("shutdown_timeout_ms", self.shutdown_timeout_ms, 100, 600_000)?;
        in_range("max_session_messages", self.max_session_messages, 1, 10_000_000)?;
        in_range("max_list_scan", self.max_list_scan, 1, 10_000_000)?;
        in_range("max_background_compactions", self.max_background_compactions, 1, 4_096)?;
        in_range("ttl_sweep_interval_s", self.ttl_sweep_interval_s, 1, 86_400)?;
        in_range("ttl_sweep_batch", self.ttl_sweep_batch, 1, 1_000_000)?;
        for (i, h) in self.token_sha256.iter().enumerate() {
            parse_hash(&format!("server.token_sha256[{i}]"), h)?;
        }
        Ok(())
    }

    /// The accepted token hashes: the config's and the token file's. Empty means no token.
    pub fn token_hashes(&self) -> Result<Vec<[u8; 32]>, ConfigError> {
        let mut out = Vec::new();
        for (i, h) in self.token_sha256.iter().enumerate() {
            out.push(parse_hash(&format!("server.token_sha256[{i}]"), h)?);
        }
        if let Some(path) = &self.token_file {
            out.extend(read_token_file(path)?);
        }
        Ok(out)
    }
}

fn read_token_file(path: &Path) -> Result<Vec<[u8; 32]>, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::TokenFile { path: path.to_path_buf(), source })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| parse_hash(&format!("{}:{}", path.display(), i + 1), l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_checked_and_ranges_named() {
        let mut c = ServerConfig { token_sha256: vec![hash_token("secret")], ..ServerConfig::default() };
        c.validate().expect("valid");
        assert_eq!(c.token_hashes().expect("one").len(), 1);
        c.token_sha256.push("xyz".into());
        assert!(c.validate().unwrap_err().to_string().contains("server.token_sha256[1]"));
        let c = ServerConfig { request_timeout_ms: 1, ..ServerConfig::default() };
        assert!(c.validate().unwrap_err().to_string().contains("server.request_timeout_ms"));
    }
}
