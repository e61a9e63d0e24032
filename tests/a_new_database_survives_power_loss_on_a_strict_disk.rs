//! The first acknowledged write of a brand-new database survives a power cut on a disk where a
//! directory entry is durable only once its directory is fsynced (`powerloss::Model::strict_dirs`).
//! fjall creates the database directory and each keyspace's folder without syncing their parents;
//! before `Store::open` synced them, this cut took the whole database with the acknowledged event
//! (SPEC.md section 10, "Power loss"). Needs FUSE (fails, never skips, without it).

use std::path::Path;

use palimpsest::{Config, Durability, Engine, Message};
use powerloss::{Cut, Model, Mount};

fn open(dir: &Path) -> Engine {
    let mut config = Config::new(dir);
    config.durability = Durability::Sync;
    Engine::open(config).expect("open")
}

#[test]
fn an_acknowledged_write_to_a_new_database_survives_a_cut_that_reverts_unsynced_directories() {
    powerloss::preflight().expect("this test needs FUSE (run scripts/setup-fuse.sh)");
    let backing = tempfile::tempdir().expect("backing dir");
    let mountpoint = tempfile::tempdir().expect("mount point");
    let model = Model { strict_dirs: true, delalloc: true };
    let mount = Mount::with_model(backing.path(), mountpoint.path(), model).expect("mount");
    let db = mount.path().join("nested-db");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let engine = open(&db);
    let session = engine.session("s").expect("id");
    let seq = runtime.block_on(session.append(Message::user("acknowledged"))).expect("append");
    mount.cut(Cut::DropAll);
    drop(session);
    drop(engine);
    mount.power_on();
    let engine = open(&db);
    let session = engine.session("s").expect("id");
    let history = runtime.block_on(session.history(seq, 10)).expect("history");
    let contents: Vec<_> = history.iter().filter_map(|e| e.message()).map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["acknowledged"], "the acknowledged event survived the cut");
}
