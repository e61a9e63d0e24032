//! The FUSE side: a pass-through over a backing directory whose file data goes through an
//! [`Overlay`] per inode until `fsync`, and whose metadata operations reach the backing directory
//! at once (see the crate docs for the exact rules).
//!
//! One mutex guards all state, so a power cut (from the control file or from [`crate::Mount`])
//! is atomic with respect to every file operation: an operation lands either before the cut or
//! after it, and after it every operation fails with `EIO` until power is restored.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};

use crate::overlay::Overlay;
use crate::{Cut, CutReport, Model};

/// Attributes and entries are never cached by the kernel: after a cut the sizes it saw are stale.
const TTL: Duration = Duration::ZERO;
/// The control file's name at the root of the mount.
pub const CONTROL_NAME: &str = ".powerloss";
/// The hidden directory in the backing directory where [`Model::strict_dirs`] keeps removed
/// entries until their removal is durable.
pub const TRASH_NAME: &str = ".powerloss-trash";
/// The control file's inode number, far from any number [`State::ino_for`] hands out.
const CONTROL_INO: u64 = u64::MAX >> 1;
/// Longest command the control file accepts.
const MAX_COMMAND_BYTES: usize = 64;

/// How to undo a directory operation that is not durable yet ([`Model::strict_dirs`]).
enum Undo {
    /// A new entry: remove it, and everything under it.
    Created(PathBuf),
    /// A removed entry, kept in the trash: put it back.
    Removed { rel: PathBuf, trash: PathBuf },
    /// A rename: move it back, and restore what it replaced.
    Renamed { from: PathBuf, to: PathBuf, replaced: Option<PathBuf> },
}

/// A directory operation that becomes durable when either of its parent directories is fsynced.
struct PendingOp {
    parents: (u64, u64),
    undo: Undo,
}

/// Everything the file system knows, behind one lock.
pub(crate) struct State {
    backing: PathBuf,
    model: Model,
    /// Directory operations not yet durable, oldest first (empty unless `model.strict_dirs`).
    pending: Vec<PendingOp>,
    trash_seq: u64,
    /// Inode number to path relative to `backing`; unlinked inodes are removed.
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    overlays: HashMap<u64, Overlay>,
    /// Open handles: the inode and the backing file, opened read-write.
    handles: HashMap<u64, (u64, File)>,
    next_fh: u64,
    /// Set by a cut: every operation fails until [`State::power_on`].
    off: bool,
    cuts: u64,
    /// A cut waiting for this many more writes, then made by the write that brings it to zero.
    armed: Option<(u64, Cut)>,
    /// What the last armed cut dropped, once it fired.
    pub(crate) fired: Option<CutReport>,
}

/// The state and the signal that an armed cut has fired.
pub(crate) struct Inner {
    pub(crate) state: Mutex<State>,
    pub(crate) fired: Condvar,
}

pub(crate) type Shared = Arc<Inner>;

pub(crate) fn shared(backing: PathBuf, model: Model) -> io::Result<Shared> {
    let state = State::new(backing, model);
    if model.strict_dirs {
        std::fs::create_dir_all(state.trash())?;
    }
    Ok(Arc::new(Inner { state: Mutex::new(state), fired: Condvar::new() }))
}

/// Locks the state; a panic in another FUSE callback does not make the state unusable for a test.
pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn errno(e: io::Error) -> Errno {
    let code = e.raw_os_error().unwrap_or(libc::EIO);
    Errno::from_i32(if code > 0 { code } else { libc::EIO })
}

fn time_of(secs: i64, nanos: i64) -> SystemTime {
    let nanos = u32::try_from(nanos).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::new(s, nanos),
        Err(_) => UNIX_EPOCH,
    }
}

/// The mode bits of a new file or directory.
fn created_mode(mode: u32, umask: u32) -> u32 {
    mode & !umask & 0o7777
}

impl State {
    pub(crate) fn new(backing: PathBuf, model: Model) -> Self {
        let mut paths = HashMap::new();
        let mut inos = HashMap::new();
        paths.insert(INodeNo::ROOT.0, PathBuf::new());
        inos.insert(PathBuf::new(), INodeNo::ROOT.0);
        Self {
            backing,
            model,
            pending: Vec::new(),
            trash_seq: 0,
            paths,
            inos,
            next_ino: INodeNo::ROOT.0 + 1,
            overlays: HashMap::new(),
            handles: HashMap::new(),
            next_fh: 1,
            off: false,
            cuts: 0,
            armed: None,
            fired: None,
        }
    }

    fn ino_for(&mut self, rel: &Path) -> u64 {
        if let Some(&ino) = self.inos.get(rel) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.paths.insert(ino, rel.to_path_buf());
        self.inos.insert(rel.to_path_buf(), ino);
        ino
    }

    fn rel(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.rel(parent)?.join(name))
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    fn trash(&self) -> PathBuf {
        self.backing.join(TRASH_NAME)
    }

    /// Whether `name` under `parent` is the hidden trash directory.
    fn is_trash(parent: INodeNo, name: &OsStr) -> bool {
        parent == INodeNo::ROOT && name == TRASH_NAME
    }

    /// Records a directory operation to undo at a cut unless a parent is fsynced first.
    fn record(&mut self, parents: (INodeNo, INodeNo), undo: Undo) {
        if self.model.strict_dirs {
            self.pending.push(PendingOp { parents: (parents.0.0, parents.1.0), undo });
        }
    }

    /// Removes the entry at `rel`: into the trash under `strict_dirs` (returned, so a cut can
    /// put it back), for good otherwise.
    fn remove_entry(&mut self, rel: &Path, dir: bool) -> Result<Option<PathBuf>, Errno> {
        let abs = self.abs(rel);
        if !self.model.strict_dirs {
            let removed = if dir { std::fs::remove_dir(&abs) } else { std::fs::remove_file(&abs) };
            return removed.map(|()| None).map_err(errno);
        }
        let meta = std::fs::symlink_metadata(&abs).map_err(errno)?;
        if dir != meta.is_dir() {
            return Err(if dir { Errno::ENOTDIR } else { Errno::EISDIR });
        }
        if dir && std::fs::read_dir(&abs).map_err(errno)?.next().is_some() {
            return Err(Errno::ENOTEMPTY);
        }
        self.trash_seq += 1;
        let trash = self.trash().join(self.trash_seq.to_string());
        std::fs::rename(&abs, &trash).map_err(errno)?;
        Ok(Some(trash))
    }

    /// An fsync of directory `ino`: the pending operations in it become durable.
    fn sync_dir(&mut self, ino: u64) {
        let (durable, pending): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.pending).into_iter().partition(|op| op.parents.0 == ino || op.parents.1 == ino);
        self.pending = pending;
        for op in durable {
            let trash = match op.undo {
                Undo::Removed { trash, .. } | Undo::Renamed { replaced: Some(trash), .. } => trash,
                _ => continue,
            };
            // The removal is durable: the trash copy is garbage. A failure only leaks a temp file.
            let _ = if trash.is_dir() { std::fs::remove_dir_all(&trash) } else { std::fs::remove_file(&trash) };
        }
    }

    /// [`Model::delalloc`]: an fsync commits every file's size (not its data), except `synced`'s,
    /// whose data went with it.
    fn commit_sizes(&self, synced: Option<u64>) {
        if !self.model.delalloc {
            return;
        }
        for (ino, overlay) in &self.overlays {
            if Some(*ino) == synced {
                continue;
            }
            let Some(rel) = self.paths.get(ino) else { continue };
            let Ok(file) = OpenOptions::new().write(true).open(self.abs(rel)) else { continue };
            let Ok(meta) = file.metadata() else { continue };
            if overlay.size() != meta.len() {
                // The truncations since the last sync are committed too, then the new length:
                // the bytes past the floor are zeros on disk until the data is written back.
                let _ = file.set_len(overlay.floor().min(meta.len())).and_then(|()| file.set_len(overlay.size()));
            }
        }
    }

    /// Undoes every pending directory operation, newest first (the cut of `strict_dirs`).
    fn revert_dirs(&mut self, report: &mut CutReport) {
        for op in std::mem::take(&mut self.pending).into_iter().rev() {
            let undone = match op.undo {
                Undo::Created(rel) => {
                    let abs = self.abs(&rel);
                    if abs.is_dir() { std::fs::remove_dir_all(&abs) } else { std::fs::remove_file(&abs) }
                }
                Undo::Removed { rel, trash } => std::fs::rename(&trash, self.abs(&rel)),
                Undo::Renamed { from, to, replaced } => {
                    std::fs::rename(self.abs(&to), self.abs(&from)).and_then(|()| match replaced {
                        Some(trash) => std::fs::rename(&trash, self.abs(&to)),
                        None => Ok(()),
                    })
                }
            };
            report.entries_reverted += 1;
            report.revert_errors += u64::from(undone.is_err());
        }
        let trash = self.trash();
        if std::fs::remove_dir_all(&trash).and_then(|()| std::fs::create_dir(&trash)).is_err() {
            report.revert_errors += 1;
        }
        // Paths moved under the kernel's feet: forget every inode number (they are never reused).
        self.paths.retain(|&ino, _| ino == INodeNo::ROOT.0);
        self.inos.retain(|_, &mut ino| ino == INodeNo::ROOT.0);
    }

    fn check_power(&self) -> Result<(), Errno> {
        if self.off { Err(Errno::EIO) } else { Ok(()) }
    }

    fn attr(&self, ino: u64, meta: &Metadata) -> FileAttr {
        let size = self.overlays.get(&ino).map_or(meta.len(), Overlay::size);
        let kind = FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time_of(meta.atime(), meta.atime_nsec()),
            mtime: time_of(meta.mtime(), meta.mtime_nsec()),
            ctime: time_of(meta.ctime(), meta.ctime_nsec()),
            crtime: time_of(meta.ctime(), meta.ctime_nsec()),
            kind,
            perm: (meta.mode() & 0o7777) as u16,
            nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn control_attr() -> FileAttr {
        FileAttr {
            ino: INodeNo(CONTROL_INO),
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: 0o600,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn attr_of(&self, ino: INodeNo, fh: Option<FileHandle>) -> Result<FileAttr, Errno> {
        if ino.0 == CONTROL_INO {
            return Ok(Self::control_attr());
        }
        if let Some((_, file)) = fh.and_then(|fh| self.handles.get(&fh.0)) {
            return file.metadata().map(|m| self.attr(ino.0, &m)).map_err(errno);
        }
        let rel = self.rel(ino)?;
        std::fs::symlink_metadata(self.abs(&rel)).map(|m| self.attr(ino.0, &m)).map_err(errno)
    }

    fn open_handle(&mut self, ino: u64, rel: &Path) -> Result<u64, Errno> {
        let file = OpenOptions::new().read(true).write(true).open(self.abs(rel)).map_err(errno)?;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, (ino, file));
        Ok(fh)
    }

    /// The overlay of `ino`, created over the durable content on first use.
    fn overlay(&mut self, ino: u64, durable_len: u64) -> &mut Overlay {
        self.overlays.entry(ino).or_insert_with(|| Overlay::new(durable_len))
    }

    /// Forgets an inode whose last name is gone; its unsynced data goes with it unless a handle
    /// still reads it.
    fn forget_path(&mut self, rel: &Path) {
        if let Some(ino) = self.inos.remove(rel) {
            self.paths.remove(&ino);
            if !self.handles.values().any(|(i, _)| *i == ino) {
                self.overlays.remove(&ino);
            }
        }
    }

    /// Drops every unsynced change (or keeps some pages, when torn) and turns the power off
    /// ([`Cut::ClearCache`]: leaves it on, with directories and handles as they are).
    pub(crate) fn cut(&mut self, cut: Cut) -> CutReport {
        let overlays = std::mem::take(&mut self.overlays);
        let mut report = CutReport { files: overlays.len() as u64, ..CutReport::default() };
        let mut rng = match cut {
            Cut::DropAll | Cut::ClearCache => None,
            Cut::Torn { seed } => Some(seed | 1),
        };
        for (ino, overlay) in overlays {
            report.dirty_bytes += overlay.dirty_bytes();
            if self.model.delalloc {
                let durable_len = self.paths.get(&ino).and_then(|rel| std::fs::metadata(self.abs(rel)).ok());
                report.zero_filled_files += u64::from(durable_len.is_some_and(|m| m.len() > overlay.floor()));
            }
            let Some(state) = rng.as_mut() else { continue };
            let Some(rel) = self.paths.get(&ino) else { continue };
            let mut keep = || {
                // xorshift64: enough randomness to pick pages, with no dependency.
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                *state & 1 == 1
            };
            let torn = OpenOptions::new().write(true).open(self.abs(rel)).and_then(|f| overlay.tear(&f, &mut keep));
            if torn.is_err() {
                report.torn_write_errors += 1;
            }
        }
        self.cuts += 1;
        if cut == Cut::ClearCache {
            return report;
        }
        if self.model.strict_dirs {
            self.revert_dirs(&mut report);
        }
        self.off = true;
        report
    }

    /// Arms a cut to happen inside the file system, right after `writes` more writes (0: the next).
    pub(crate) fn arm(&mut self, cut: Cut, writes: u64) {
        self.armed = Some((writes, cut));
        self.fired = None;
    }

    /// Counts a write against an armed cut; true when the cut fired.
    fn after_write(&mut self) -> bool {
        match self.armed {
            Some((0, cut)) => {
                self.armed = None;
                let report = self.cut(cut);
                self.fired = Some(report);
                true
            }
            Some((n, cut)) => {
                self.armed = Some((n - 1, cut));
                false
            }
            None => false,
        }
    }

    pub(crate) fn power_on(&mut self) {
        self.armed = None;
        self.off = false;
        // Handles opened before the cut belong to processes that died with the power.
        self.handles.clear();
    }

    fn status(&self) -> String {
        let dirty: u64 = self.overlays.values().map(Overlay::dirty_bytes).sum();
        format!(
            "power {}\ncuts {}\ndirty_files {}\ndirty_bytes {}\n",
            if self.off { "off" } else { "on" },
            self.cuts,
            self.overlays.len(),
            dirty
        )
    }

    fn control(&mut self, data: &[u8]) -> Result<(), Errno> {
        if data.len() > MAX_COMMAND_BYTES {
            return Err(Errno::EINVAL);
        }
        let command = std::str::from_utf8(data).map_err(|_| Errno::EINVAL)?.trim();
        match command.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["cut"] => {
                self.cut(Cut::DropAll);
            }
            ["torn", seed] => {
                let seed = seed.parse().map_err(|_| Errno::EINVAL)?;
                self.cut(Cut::Torn { seed });
            }
            ["clear-cache"] => {
                self.cut(Cut::ClearCache);
            }
            ["on"] => self.power_on(),
            _ => return Err(Errno::EINVAL),
        }
        Ok(())
    }
}

/// The FUSE file system; [`crate::Mount`] holds the same state to cut the power.
pub(crate) struct PowerLossFs {
    pub(crate) shared: Shared,
}

impl PowerLossFs {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// `unlink` (`dir` false) and `rmdir` (`dir` true): the entry goes to the trash, recorded so a
    /// cut before its directory is fsynced brings it back (`strict_dirs`).
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let mut s = self.state();
        let done = s.check_power().and_then(|()| s.child(parent, name)).and_then(|rel| {
            if let Some(trash) = s.remove_entry(&rel, dir)? {
                s.record((parent, parent), Undo::Removed { rel: rel.clone(), trash });
            }
            s.forget_path(&rel);
            Ok(())
        });
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for PowerLossFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.state();
        if parent == INodeNo::ROOT && name == CONTROL_NAME {
            return reply.entry(&TTL, &State::control_attr(), Generation(0));
        }
        if State::is_trash(parent, name) {
            return reply.error(Errno::ENOENT);
        }
        let found = s.check_power().and_then(|()| s.child(parent, name)).and_then(|rel| {
            let meta = std::fs::symlink_metadata(s.abs(&rel)).map_err(errno)?;
            let ino = s.ino_for(&rel);
            Ok(s.attr(ino, &meta))
        });
        match found {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = self.state();
        // The root and the control file stay reachable with the power off, so the power can be
        // turned back on through the control file.
        let power = if ino == INodeNo::ROOT { Ok(()) } else { s.check_power() };
        match power.and_then(|()| s.attr_of(ino, fh)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        if ino.0 == CONTROL_INO {
            return reply.attr(&TTL, &State::control_attr());
        }
        let done = s.check_power().and_then(|()| {
            let rel = s.rel(ino)?;
            if let Some(mode) = mode {
                let perms = std::fs::Permissions::from_mode(mode & 0o7777);
                std::fs::set_permissions(s.abs(&rel), perms).map_err(errno)?;
            }
            if let Some(size) = size {
                let durable_len = std::fs::metadata(s.abs(&rel)).map_err(errno)?.len();
                s.overlay(ino.0, durable_len).set_size(size);
            }
            s.attr_of(ino, fh)
        });
        match done {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut s = self.state();
        let made = s.check_power().and_then(|()| s.child(parent, name)).and_then(|rel| {
            if State::is_trash(parent, name) {
                return Err(Errno::EACCES);
            }
            let abs = s.abs(&rel);
            std::fs::create_dir(&abs).map_err(errno)?;
            s.record((parent, parent), Undo::Created(rel.clone()));
            std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(created_mode(mode, umask)))
                .map_err(errno)?;
            let meta = std::fs::symlink_metadata(&abs).map_err(errno)?;
            let ino = s.ino_for(&rel);
            Ok(s.attr(ino, &meta))
        });
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        let done = s.check_power().and_then(|()| {
            let from = s.child(parent, name)?;
            let to = s.child(newparent, newname)?;
            if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT) {
                return Err(Errno::EINVAL);
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) && std::fs::symlink_metadata(s.abs(&to)).is_ok() {
                return Err(Errno::EEXIST);
            }
            if State::is_trash(parent, name) || State::is_trash(newparent, newname) {
                return Err(Errno::EACCES);
            }
            let mut replaced = None;
            if s.model.strict_dirs
                && let Ok(meta) = std::fs::symlink_metadata(s.abs(&to))
            {
                replaced = s.remove_entry(&to, meta.is_dir())?;
            }
            if let Err(e) = std::fs::rename(s.abs(&from), s.abs(&to)) {
                if let Some(trash) = &replaced {
                    // Best effort: the replaced entry goes back where it was.
                    let _ = std::fs::rename(trash, s.abs(&to));
                }
                return Err(errno(e));
            }
            s.record((parent, newparent), Undo::Renamed { from: from.clone(), to: to.clone(), replaced });
            s.forget_path(&to);
            // The renamed entry and, for a directory, everything under it move to the new path.
            let moved: Vec<(PathBuf, u64)> =
                s.inos.iter().filter(|(p, _)| p.starts_with(&from)).map(|(p, i)| (p.clone(), *i)).collect();
            for (old, ino) in moved {
                let suffix = old.strip_prefix(&from).expect("filtered on this prefix").to_path_buf();
                let new = if suffix.as_os_str().is_empty() { to.clone() } else { to.join(suffix) };
                s.inos.remove(&old);
                s.inos.insert(new.clone(), ino);
                s.paths.insert(ino, new);
            }
            Ok(())
        });
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.state();
        if ino.0 == CONTROL_INO {
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }
        let opened = s.check_power().and_then(|()| s.rel(ino)).and_then(|rel| {
            let fh = s.open_handle(ino.0, &rel)?;
            if flags.0 & libc::O_TRUNC != 0 {
                s.overlay(ino.0, 0).set_size(0);
            }
            Ok(fh)
        });
        match opened {
            // Direct I/O: the kernel's page cache would otherwise keep serving data a cut dropped.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state();
        let created = s.check_power().and_then(|()| s.child(parent, name)).and_then(|rel| {
            if State::is_trash(parent, name) {
                return Err(Errno::EACCES);
            }
            let abs = s.abs(&rel);
            let existed = std::fs::symlink_metadata(&abs).is_ok();
            let mut options = OpenOptions::new();
            options.read(true).write(true).mode(created_mode(mode, umask));
            if flags & libc::O_EXCL != 0 {
                options.create_new(true);
            } else {
                options.create(true);
            }
            let file = options.open(&abs).map_err(errno)?;
            if !existed {
                s.record((parent, parent), Undo::Created(rel.clone()));
            }
            let meta = file.metadata().map_err(errno)?;
            let ino = s.ino_for(&rel);
            if flags & libc::O_TRUNC != 0 {
                s.overlay(ino, meta.len()).set_size(0);
            }
            let fh = s.next_fh;
            s.next_fh += 1;
            s.handles.insert(fh, (ino, file));
            Ok((s.attr(ino, &meta), fh))
        });
        match created {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = self.state();
        if ino.0 == CONTROL_INO {
            let status = s.status().into_bytes();
            let from = usize::try_from(offset).unwrap_or(usize::MAX).min(status.len());
            let to = from.saturating_add(size as usize).min(status.len());
            return reply.data(&status[from..to]);
        }
        let data = s.check_power().and_then(|()| {
            let (_, file) = s.handles.get(&fh.0).ok_or(Errno::EBADF)?;
            match s.overlays.get(&ino.0) {
                Some(overlay) => overlay.read(file, offset, u64::from(size)).map_err(errno),
                None => {
                    let len = file.metadata().map_err(errno)?.len();
                    Overlay::new(len).read(file, offset, u64::from(size)).map_err(errno)
                }
            }
        });
        match data {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        let len = u32::try_from(data.len()).expect("the kernel writes at most max_write bytes at once");
        if ino.0 == CONTROL_INO {
            return match s.control(data) {
                Ok(()) => reply.written(len),
                Err(e) => reply.error(e),
            };
        }
        let done = s.check_power().and_then(|()| {
            let state = &mut *s;
            let (_, file) = state.handles.get(&fh.0).ok_or(Errno::EBADF)?;
            let durable_len = file.metadata().map_err(errno)?.len();
            let overlay = state.overlays.entry(ino.0).or_insert_with(|| Overlay::new(durable_len));
            overlay.write(file, offset, data).map_err(errno)
        });
        // The write lands in the overlay first, so an armed cut drops it with the rest; the writer
        // still sees success, as it would when the power fails right after a write() returned.
        if done.is_ok() && s.after_write() {
            self.shared.fired.notify_all();
        }
        match done {
            Ok(()) => reply.written(len),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close() is not a sync: the data stays unsynced, as on a real disk.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        s.handles.remove(&fh.0);
        let unlinked = !s.paths.contains_key(&ino.0);
        if unlinked && !s.handles.values().any(|(i, _)| *i == ino.0) {
            s.overlays.remove(&ino.0);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut s = self.state();
        if ino.0 == CONTROL_INO {
            return reply.ok();
        }
        let done = s.check_power().and_then(|()| {
            let state = &mut *s;
            let (_, file) = state.handles.get(&fh.0).ok_or(Errno::EBADF)?;
            if let Some(overlay) = state.overlays.remove(&ino.0) {
                overlay.sync(file).map_err(errno)?;
            }
            state.commit_sizes(Some(ino.0));
            Ok(())
        });
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let s = self.state();
        match s.check_power() {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut s = self.state();
        let listed = s.check_power().and_then(|()| s.rel(ino)).and_then(|rel| {
            let mut names: Vec<(std::ffi::OsString, FileType)> = Vec::new();
            for entry in std::fs::read_dir(s.abs(&rel)).map_err(errno)? {
                let entry = entry.map_err(errno)?;
                if ino == INodeNo::ROOT && entry.file_name() == TRASH_NAME {
                    continue;
                }
                let kind = entry.file_type().ok().and_then(FileType::from_std).unwrap_or(FileType::RegularFile);
                names.push((entry.file_name(), kind));
            }
            names.sort_by(|a, b| a.0.cmp(&b.0));
            let mut entries = vec![(ino.0, FileType::Directory, ".".into()), (ino.0, FileType::Directory, "..".into())];
            for (name, kind) in names {
                let child = s.ino_for(&rel.join(&name));
                entries.push((child, kind, name));
            }
            Ok(entries)
        });
        match listed {
            Ok(entries) => {
                let skip = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(skip) {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Directory operations reached the backing directory when they happened; under
        // `strict_dirs` this makes the ones in this directory durable (see the crate docs).
        let mut s = self.state();
        match s.check_power() {
            Ok(()) => {
                s.sync_dir(ino.0);
                s.commit_sizes(None);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}
