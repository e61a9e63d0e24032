//! The fjall store: the only module that names fjall. It opens the database and implements the
//! key-value boundary (`storage::kv`): batches of [`Op`]s committed atomically across keyspaces,
//! point reads, bounded range scans, snapshots.
//!
//! fjall panics on empty keys, keys over 65,535 bytes and bad keyspace names; every key built in
//! `keys` is non-empty and far below that bound (session ids are at most 128 bytes), which
//! `write` asserts.

use std::path::{Path, PathBuf};

use ::fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Snapshot};

use crate::error::Error;
use crate::log::codec;
use crate::log::event::Event;
use crate::log::fold::Head;
use crate::log::ids::{Seq, SessionId};
use crate::storage::keys;
use crate::storage::kv::{Ks, Kv, Op, Read};

/// Memtable size of every keyspace (fixed when a keyspace is created).
const MEMTABLE_BYTES: u64 = 8 << 20;
/// Environment variable (feature `testing` only) that sets the memtable size of keyspaces created
/// by this process, so power-loss tests make fjall flush, compact and rotate often on little data.
#[cfg(feature = "testing")]
pub const MEMTABLE_BYTES_ENV: &str = "PALIMPSEST_MEMTABLE_BYTES";

/// The memtable size for new keyspaces: [`MEMTABLE_BYTES`], or the testing override.
fn memtable_bytes() -> u64 {
    #[cfg(feature = "testing")]
    if let Some(bytes) = std::env::var(MEMTABLE_BYTES_ENV).ok().and_then(|v| v.parse().ok()) {
        return bytes;
    }
    MEMTABLE_BYTES
}

/// Longest wait for memtables to flush when the store closes.
const CLOSE_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Most events a range read reserves room for before reading them (more grow the vector).
const MAX_PREALLOCATED_EVENTS: usize = 1_024;

/// fjall refuses (panics on) keys longer than this.
const MAX_KEY_BYTES: usize = 65_535;

/// Bytes read from the store: fjall's reference-counted slice, so a scan hands out what the block
/// cache or memtable holds without copying it (it derefs to `[u8]`).
pub(crate) type Bytes = ::fjall::Slice;

/// A stored key and its value.
pub(crate) type Row = (Bytes, Bytes);

/// An open fjall database.
pub(crate) struct FjallStore {
    db: Database,
    events: Keyspace,
    heads: Keyspace,
    splices: Keyspace,
    blobs: Keyspace,
    meta: Keyspace,
    memories: Keyspace,
    extractions: Keyspace,
    path: PathBuf,
}

fn storage(op: &'static str) -> impl Fn(fjall::Error) -> Error {
    move |e| Error::storage(op, e)
}

impl FjallStore {
    /// Opens (or creates) the database at `path`, running fjall's journal recovery, and checks
    /// the format marker.
    pub(crate) fn open(path: &Path, cache_mb: u64) -> Result<Self, Error> {
        refuse_foreign_directory(path)?;
        let db = Database::builder(path).cache_size(cache_mb << 20).open().map_err(|e| match e {
            fjall::Error::Locked => Error::Locked { path: path.to_path_buf() },
            fjall::Error::JournalRecovery(r) => Error::Corrupt {
                session: None,
                seq: None,
                detail: format!("journal recovery failed at open: {r:?}; restore from a backup or export"),
            },
            fjall::Error::InvalidVersion(v) => {
                Error::NotADatabase { path: path.to_path_buf(), reason: format!("unsupported fjall format {v:?}") }
            }
            other => Error::storage("open", other),
        })?;
        // A bounded memtable bounds what journal recovery must replay into memory at open, and
        // so the memory a restarted engine needs, whatever the sessions' lengths.
        let options = || KeyspaceCreateOptions::default().max_memtable_size(memtable_bytes());
        let open_ks = |name: &str| db.keyspace(name, options).map_err(storage("open keyspace"));
        let store = Self {
            events: open_ks(keys::EVENTS)?,
            heads: open_ks(keys::HEADS)?,
            splices: open_ks(keys::SPLICES)?,
            blobs: open_ks(keys::BLOBS)?,
            meta: open_ks(keys::META)?,
            memories: open_ks(keys::MEMORIES)?,
            // Created on first open by this version: older databases open unchanged.
            extractions: open_ks(keys::EXTRACTIONS)?,
            db,
            path: path.to_path_buf(),
        };
        sync_new_directories(path)?;
        store.check_format()?;
        Ok(store)
    }

    fn check_format(&self) -> Result<(), Error> {
        match self.meta.get(keys::META_FORMAT).map_err(storage("read format"))? {
            Some(v) if v.as_ref() == [codec::DB_FORMAT] => Ok(()),
            Some(v) => Err(Error::NotADatabase {
                path: self.path.clone(),
                reason: format!("database format {v:?}, this build reads [{}]", codec::DB_FORMAT),
            }),
            None => {
                if self.events.first_key_value().is_some() {
                    return Err(Error::NotADatabase {
                        path: self.path.clone(),
                        reason: "events without a format marker".to_string(),
                    });
                }
                let op = Op::Put(Ks::Meta, keys::META_FORMAT.to_vec(), vec![codec::DB_FORMAT]);
                self.commit(std::slice::from_ref(&op), true)
            }
        }
    }

    fn ks(&self, ks: Ks) -> &Keyspace {
        match ks {
            Ks::Events => &self.events,
            Ks::Heads => &self.heads,
            Ks::Splices => &self.splices,
            Ks::Blobs => &self.blobs,
            Ks::Meta => &self.meta,
            Ks::Memories => &self.memories,
            Ks::Extractions => &self.extractions,
        }
    }
}

fn scan_err(g: ::fjall::Guard) -> Result<Row, Error> {
    g.into_inner().map_err(storage("scan"))
}

impl Kv for FjallStore {
    type View<'a> = FjallView<'a>;

    fn view(&self) -> FjallView<'_> {
        FjallView { store: self, snapshot: self.db.snapshot() }
    }

    /// Written to the journal first and persisted by [`Kv::persist`], which is what fjall does
    /// inside a batch with `SyncData` durability; one persist covers every earlier write of every
    /// keyspace.
    fn write(&self, ops: &[Op]) -> Result<(), Error> {
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        for op in ops {
            let key_len = op.key().len();
            assert!(key_len > 0 && key_len <= MAX_KEY_BYTES, "key of {key_len} bytes reached the store");
            match op {
                Op::Put(ks, k, v) => batch.insert(self.ks(*ks), k.as_slice(), v.as_slice()),
                Op::Delete(ks, k) => batch.remove(self.ks(*ks), k.as_slice()),
            }
        }
        batch.commit().map_err(storage("commit"))
    }

    fn persist(&self) -> Result<(), Error> {
        self.db.persist(PersistMode::SyncData).map_err(storage("fsync"))
    }

    fn disk_space(&self, ks: Ks) -> u64 {
        self.ks(ks).disk_space()
    }

    fn keys_in(&self, ks: Ks, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Vec<u8>>, Error> {
        let mut out = Vec::new();
        for guard in self.ks(ks).range(from..=to).take(limit) {
            out.push(guard.key().map_err(storage("scan"))?.to_vec());
        }
        Ok(out)
    }
}

impl Read for FjallStore {
    fn get(&self, ks: Ks, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.ks(ks).get(key).map_err(storage("get"))?.map(|v| v.to_vec()))
    }

    fn scan_rev(&self, ks: Ks, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Row>, Error> {
        self.ks(ks).range(from..=to).rev().take(limit).map(scan_err).collect()
    }

    fn iter_from(&self, ks: Ks, after: Option<&[u8]>) -> impl Iterator<Item = Result<Row, Error>> + '_ {
        let iter = match after {
            Some(a) => self.ks(ks).range::<&[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.ks(ks).iter(),
        };
        iter.map(scan_err)
    }

    fn iter_prefix(&self, ks: Ks, prefix: &[u8]) -> impl Iterator<Item = Result<Row, Error>> + '_ {
        self.ks(ks).prefix(prefix).map(scan_err)
    }

    fn events(&self, session: &SessionId, from: Seq, to: Seq, limit: usize) -> Result<Vec<Event>, Error> {
        self.view().events(session, from, to, limit)
    }
}

/// A consistent read view across every keyspace: a fjall snapshot, so every read through one view
/// sees the database as of one instant. A read made of several lookups (a head, a blob, a range of
/// events) answers from one state even while writers commit, so a concurrent deletion or splice
/// cannot tear it. Keep views short-lived: a snapshot holds back garbage collection of old versions.
pub(crate) struct FjallView<'a> {
    store: &'a FjallStore,
    snapshot: Snapshot,
}

impl Read for FjallView<'_> {
    fn get(&self, ks: Ks, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.snapshot.get(self.store.ks(ks), key).map_err(storage("get"))?.map(|v| v.to_vec()))
    }

    fn scan_rev(&self, ks: Ks, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Row>, Error> {
        self.snapshot.range(self.store.ks(ks), from..=to).rev().take(limit).map(scan_err).collect()
    }

    fn iter_from(&self, ks: Ks, after: Option<&[u8]>) -> impl Iterator<Item = Result<Row, Error>> + '_ {
        let ks = self.store.ks(ks);
        let iter = match after {
            Some(a) => self.snapshot.range::<&[u8], _>(ks, (std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.snapshot.iter(ks),
        };
        iter.map(scan_err)
    }

    fn iter_prefix(&self, ks: Ks, prefix: &[u8]) -> impl Iterator<Item = Result<Row, Error>> + '_ {
        self.snapshot.prefix(self.store.ks(ks), prefix).map(scan_err)
    }

    /// Decoded straight from fjall's slice (the default method would copy it first).
    fn head(&self, session: &SessionId) -> Result<Option<Head>, Error> {
        let bytes = self.snapshot.get(&self.store.heads, keys::head_key(session)).map_err(storage("get"))?;
        bytes.map(|bytes| codec::decode_head(session.as_str(), &bytes)).transpose()
    }

    /// Decoded straight from fjall's slices (no intermediate copies).
    fn events(&self, session: &SessionId, from: Seq, to: Seq, limit: usize) -> Result<Vec<Event>, Error> {
        let (lo, hi) = (keys::seq_key(session, from), keys::seq_key(session, to));
        // Sized for the range up front (bounded): growing it by doubling moved every decoded event
        // several times (4% of a cold working-memory read in perf).
        let span = to.get().saturating_sub(from.get()).saturating_add(1);
        let mut out =
            Vec::with_capacity(limit.min(usize::try_from(span).unwrap_or(usize::MAX)).min(MAX_PREALLOCATED_EVENTS));
        for guard in self.snapshot.range(&self.store.events, lo..=hi).take(limit) {
            let (k, v) = scan_err(guard)?;
            let (_, seq) = keys::parse_seq_key(&k).ok_or_else(|| Error::Corrupt {
                session: Some(session.to_string()),
                seq: None,
                detail: "malformed event key".to_string(),
            })?;
            out.push(codec::decode_event(session.as_str(), seq, &v)?);
        }
        Ok(out)
    }
}

impl Drop for FjallStore {
    /// Flushes memtables to tables on a clean close, so the next open replays (and holds in
    /// memory) nothing but what came after. Bounded: past `CLOSE_FLUSH_TIMEOUT` the rest is
    /// left to journal recovery, which is always correct, only slower.
    fn drop(&mut self) {
        // A directory removed under an open database (a test's temp dir, an operator's rm -rf)
        // has nowhere to flush to.
        if !self.path.join(FJALL_MARKER).exists() {
            return;
        }
        let all =
            [&self.events, &self.heads, &self.splices, &self.blobs, &self.meta, &self.memories, &self.extractions];
        for ks in all {
            if let Err(e) = ks.rotate_memtable() {
                tracing::warn!(error = ?e, "could not flush a memtable at close; recovery will replay it");
                return;
            }
        }
        let deadline = std::time::Instant::now() + CLOSE_FLUSH_TIMEOUT;
        while all.iter().any(|ks| ks.sealed_memtable_count() > 0) {
            if std::time::Instant::now() > deadline {
                tracing::warn!("memtables still flushing at close; recovery will replay them");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// Makes the directories fjall creates without syncing their parents durable, before the first
/// write can be acknowledged (SPEC.md section 10, "Power loss"): the database directory's own
/// entry (fjall `db.rs` 855 creates it, then fsyncs only the directory itself) and each keyspace's
/// folder in `keyspaces/` (fjall `keyspace/mod.rs` 340 and lsm-tree `tree/mod.rs` 1008-1015 create
/// it and fsync only the folder and its `tables/`). Without this, a power cut on a file system
/// that needs directory fsyncs (POSIX; ext4 without a later journal commit) can take the whole
/// database, or a keyspace with every table it holds, with acknowledged writes in them. Cheap:
/// three fsyncs per open.
fn sync_new_directories(path: &Path) -> Result<(), Error> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    for dir in [parent, path.to_path_buf(), path.join("keyspaces")] {
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| {
            Error::storage("fsync directory", std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
        })?;
    }
    Ok(())
}

/// fjall happily creates its files inside any directory; refuse one that already holds something
/// that is not a fjall database, so a wrong `--db` never scribbles into someone's folder.
///
/// One exception: fjall creates `lock`, `keyspaces/` and `0.jnl` before it writes (and fsyncs) its
/// `version` marker, and cannot itself reopen a directory where a crash stopped it in between. No
/// write can have been acknowledged there (the marker precedes any data, and an engine is not open
/// until it exists), so a directory holding exactly those creation artifacts, with `keyspaces/`
/// still empty, is an interrupted creation: it is cleared and created afresh.
fn refuse_foreign_directory(path: &Path) -> Result<(), Error> {
    let not_db = |reason: String| Error::NotADatabase { path: path.to_path_buf(), reason };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(not_db(format!("cannot read it: {e}"))),
        Ok(meta) if !meta.is_dir() => Err(not_db("it is not a directory".to_string())),
        Ok(_) => {
            if path.join(FJALL_MARKER).exists() {
                return Ok(());
            }
            let names = entry_names(path).map_err(|e| not_db(format!("cannot list it: {e}")))?;
            if names.is_empty() {
                return Ok(());
            }
            let creation_only = names.iter().all(|n| FJALL_CREATION_ARTIFACTS.contains(&n.as_str()))
                && entry_names(&path.join("keyspaces")).map_or(true, |k| k.is_empty());
            if !creation_only {
                return Err(not_db(format!("the directory is not empty and has no {FJALL_MARKER} file")));
            }
            tracing::warn!(path = %path.display(), "clearing a database whose creation was interrupted");
            for name in names {
                let entry = path.join(&name);
                let removed = if entry.is_dir() { std::fs::remove_dir(&entry) } else { std::fs::remove_file(&entry) };
                removed.map_err(|e| not_db(format!("cannot clear the interrupted creation ({name}): {e}")))?;
            }
            Ok(())
        }
    }
}

/// What fjall writes before its `version` marker when it creates a database.
const FJALL_CREATION_ARTIFACTS: [&str; 3] = ["lock", "keyspaces", "0.jnl"];

/// The names in a directory.
fn entry_names(dir: &Path) -> std::io::Result<Vec<String>> {
    std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned())).collect()
}

/// A file fjall writes at the root of every database it creates.
const FJALL_MARKER: &str = "version";
