//! `palimpsest serve` killed with SIGKILL in the middle of a stream of appends (the extension and
//! the client's GET+PUT, from several tasks to several sessions): after a restart every append that
//! was acknowledged (HTTP 200 received) is there, exactly once, and `palimpsest audit` is clean.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// Bound on every wait of this test.
const WAIT: Duration = Duration::from_secs(120);
/// Acknowledged appends before the kill.
const ACKS_BEFORE_KILL: usize = 120;

async fn start(db: &std::path::Path) -> (Child, String) {
    let db = db.to_str().expect("a UTF-8 temp path");
    common::serve(&["--db", db, "--listen", "127.0.0.1:0"]).await
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client")
}

fn message(id: &str) -> Value {
    json!({"role": "user", "content": format!("message {id}"), "id": id, "created_at": "2024-05-01T10:00:00Z"})
}

/// One append; `Ok(true)` when acknowledged with 200.
async fn append(
    client: &reqwest::Client,
    url: &str,
    session: &str,
    id: &str,
    extension: bool,
) -> Result<bool, reqwest::Error> {
    if extension {
        let r = client
            .post(format!("{url}/v1/working-memory/{session}/messages"))
            .json(&json!({"messages": [message(id)]}))
            .send()
            .await?;
        return Ok(r.status().as_u16() == 200);
    }
    let got: Value = client.get(format!("{url}/v1/working-memory/{session}")).send().await?.json().await?;
    let mut body = got;
    if let Some(messages) = body["messages"].as_array_mut() {
        messages.push(message(id));
    }
    let r = client.put(format!("{url}/v1/working-memory/{session}")).json(&body).send().await?;
    Ok(r.status().as_u16() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_appends_survive_a_sigkill_of_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");
    let (mut server, url) = start(&db).await;
    let http = client();
    let sessions = ["k0", "k1", "k2"];
    for s in sessions {
        let r = http
            .put(format!("{url}/v1/working-memory/{s}"))
            .json(&json!({"messages": []}))
            .send()
            .await
            .expect("create");
        assert_eq!(r.status().as_u16(), 200);
    }
    let acked = Arc::new(acks::AckLog::default());
    let count = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (http, url, acked, count) = (http.clone(), url.clone(), Arc::clone(&acked), Arc::clone(&count));
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let session = sessions[(w + n) % sessions.len()];
                let id = format!("w{w}-{n}");
                match append(&http, &url, session, &id, n % 2 == 0).await {
                    Ok(true) => {
                        acked.push(session, id);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(false) => {}
                    // The server is gone: the stream ends.
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::timeout(WAIT, async {
        while count.load(Ordering::SeqCst) < ACKS_BEFORE_KILL {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("appends are acknowledged");
    let pid = i32::try_from(server.id().expect("running")).expect("pid");
    // SAFETY: kill(2) on the child we started; it has not been waited for, so the pid is ours.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let status = tokio::time::timeout(WAIT, server.wait()).await.expect("dies").expect("wait");
    assert!(!status.success(), "killed: {status:?}");
    for w in writers {
        tokio::time::timeout(WAIT, w).await.expect("writers stop").expect("no panic");
    }

    let (mut server, url) = start(&db).await;
    let mut checked = 0;
    for s in sessions {
        let got: Value =
            http.get(format!("{url}/v1/working-memory/{s}")).send().await.expect("get").json().await.expect("json");
        let ids: Vec<&str> =
            got["messages"].as_array().expect("messages").iter().filter_map(|m| m["id"].as_str()).collect();
        let unique: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "{s}: no message twice");
        for id in acked.of(s) {
            assert!(unique.contains(id.as_str()), "{s}: acknowledged append {id} is lost");
            checked += 1;
        }
    }
    assert!(checked >= ACKS_BEFORE_KILL, "{checked}");
    let pid = i32::try_from(server.id().expect("running")).expect("pid");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(WAIT, server.wait()).await.expect("stops").expect("wait");
    assert!(status.success(), "a SIGTERM is a clean stop: {status:?}");
    let audit =
        Command::new(env!("CARGO_BIN_EXE_palimpsest")).args(["audit", "--db"]).arg(&db).output().await.expect("audit");
    assert!(audit.status.success(), "audit: {}", String::from_utf8_lossy(&audit.stdout));
}

mod acks {
    use std::sync::Mutex;

    /// Acknowledged appends by session.
    #[derive(Default)]
    pub struct AckLog(Mutex<Vec<(String, String)>>);

    impl AckLog {
        pub fn push(&self, session: &str, id: String) {
            self.0.lock().expect("not poisoned").push((session.to_string(), id));
        }
        pub fn of(&self, session: &str) -> Vec<String> {
            self.0
                .lock()
                .expect("not poisoned")
                .iter()
                .filter(|(s, _)| s == session)
                .map(|(_, id)| id.clone())
                .collect()
        }
    }
}
