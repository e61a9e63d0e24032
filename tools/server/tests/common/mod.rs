//! An in-process server on a free loopback port, over an engine the test also holds.
#![allow(dead_code)]

use std::net::SocketAddr;

use palimpsest::{Config, Durability, Engine};
use palimpsest_server::{ServeOptions, ServerConfig, ShutdownReport};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: Engine,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    pub handle: Option<JoinHandle<Result<ShutdownReport, palimpsest_server::ServeError>>>,
    pub dir: Option<tempfile::TempDir>,
}

pub fn engine() -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::new(dir.path().join("db"));
    config.durability = Durability::Buffered;
    (Engine::open(config).expect("open"), dir)
}

impl TestServer {
    pub async fn start(tune: impl FnOnce(&mut ServerConfig)) -> Self {
        let (engine, dir) = engine();
        let mut s = Self::start_on(engine, tune).await;
        s.dir = Some(dir);
        s
    }

    pub async fn start_on(engine: Engine, tune: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = ServerConfig::default();
        tune(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel();
        let handle =
            tokio::spawn(palimpsest_server::serve(engine.clone(), config, listener, ServeOptions::default(), async {
                let _ = rx.await;
            }));
        Self { addr, engine, client: client(), stop: Some(tx), handle: Some(handle), dir: None }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, _, value) = self.call_full(method, path, body).await;
        (status, value)
    }

    pub async fn call_full(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, self.url(path));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn stop(&mut self) -> ShutdownReport {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.handle.take().expect("running").await.expect("no panic").expect("clean shutdown")
    }

    pub fn trigger_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A reqwest client (the workspace builds reqwest without a TLS provider; plain HTTP needs none,
/// but the builder wants one installed).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub fn msg(id: &str, role: &str, content: &str) -> Value {
    serde_json::json!({"id": id, "role": role, "content": content, "created_at": "2024-05-01T10:00:00Z"})
}
