//! powerloss: a FUSE pass-through file system that loses, on command, exactly what a power cut
//! loses, so tests can check what `fsync` promises (the approach of LazyFS, in Rust, in-process).
//!
//! - `overlay`: the unsynced state of one file (dirty pages, pending size changes).
//! - `fs`: the FUSE callbacks over a backing directory, and the control file.
//! - [`Mount`]: mounts the file system on a thread of the calling process and cuts its power.
//!
//! # What survives a cut
//! - **File data and file sizes** (writes, `ftruncate`, `O_TRUNC`, growth by writing past the end)
//!   stay in memory, per file, until `fsync` or `fdatasync` of that file writes them to the
//!   backing directory. A cut ([`Cut::DropAll`]) drops all of it. A file whose data was never
//!   synced reads back with its last synced length and content: a file created and written but
//!   never synced is empty. [`Cut::Torn`] instead writes back a random half of the dirty pages
//!   first, as the kernel's writeback may have done before the power failed: a torn file may hold
//!   zeros where a page was not written back, and a pending truncation is forgotten.
//! - **Metadata operations** (create, mkdir, unlink, rmdir, rename, chmod) reach the backing
//!   directory at once. By default ([`Model::default`], as in LazyFS) they survive every cut, so
//!   `fsync` of a directory is a no-op and a harness does not catch a missing directory sync.
//! - [`Model::strict_dirs`]: a directory entry is durable only once its directory is fsynced, as
//!   POSIX allows and `fsync(2)` warns. A cut undoes, newest first, every create, mkdir, unlink,
//!   rmdir and rename whose parent directory (either one, for a rename) was not fsynced since: a
//!   created file or directory vanishes with everything in it (even if the file itself was
//!   fsynced), an unlinked one comes back with its durable content, a renamed one goes back to its
//!   old name and the file it replaced comes back. Removed files wait in a hidden trash directory
//!   (`.powerloss-trash` in the backing directory, invisible through the mount) until their
//!   removal is durable.
//! - [`Model::delalloc`]: sizes can be durable while data is not, the "NULL files" of XFS and of
//!   ext4 with `data=writeback`. Every `fsync` (of a file or a directory) commits the metadata of
//!   all files: each other file's grown size reaches the disk at once, while its unsynced data
//!   does not, so a cut leaves it at its new length with zeros where the data was.
//! - After a cut the power is off: every operation fails with `EIO` until [`Mount::power_on`], so
//!   a process still running after the cut cannot make anything durable. [`Cut::ClearCache`] is the
//!   exception, kept to reproduce LazyFS's `clear-cache`: it drops the same data and leaves the
//!   power on.
//!
//! Data is served with direct I/O and attributes are never cached, so the kernel's page cache
//! cannot keep showing what a cut dropped. Hard links, symlinks and extended attributes are not
//! supported (nothing under test uses them).
//!
//! # Control
//! In-process, [`Mount::cut`] and [`Mount::power_on`], and [`Mount::arm_cut`], which makes the file
//! system cut the power itself right after a given number of further writes: the cut then lands
//! mid-work, not in the quiet moment after a writer reported an fsync. From any process, the file `.powerloss` at
//! the root of the mount: writing `cut` drops unsynced data, `torn <seed>` tears it, `on` restores
//! power, `clear-cache` drops unsynced data with the power left on ([`Cut::ClearCache`]); reading it shows the power state, the number of cuts and the unsynced bytes.

mod fs;
mod overlay;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use fs::{CONTROL_NAME, TRASH_NAME};
pub use overlay::PAGE_BYTES;

/// How a power cut treats unsynced data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Nothing unsynced survives.
    DropAll,
    /// A random half of the dirty pages (chosen from `seed`) reach the disk, the rest do not.
    Torn {
        /// Seeds the choice of pages, so the same seed tears the same way.
        seed: u64,
    },
    /// **Not a power cut**: LazyFS's `clear-cache`. Unsynced data is dropped as in [`Cut::DropAll`],
    /// but the power stays on and open handles keep working, so a process that goes on writing
    /// and syncing afterwards makes its later data durable over a hole of zeros where the dropped
    /// data was, and nothing tells it. No disk does that: a real cut stops every writer at the same
    /// instant. It is here to reproduce what a LazyFS run that clears the cache before killing the
    /// writer reports (SPEC section 10, issue 16).
    ClearCache,
}

/// Which failure modes of a real disk the file system adds to the default (LazyFS's) model; see
/// the crate docs. Both off is [`Model::default`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Model {
    /// Directory entries are durable only after an `fsync` of their directory.
    pub strict_dirs: bool,
    /// Every `fsync` makes all files' grown sizes durable without their data.
    pub delalloc: bool,
}

impl Model {
    /// Parses a comma-separated list of `strict_dirs` and `delalloc` (empty or `default`: neither).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut model = Self::default();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "strict_dirs" => model.strict_dirs = true,
                "delalloc" => model.delalloc = true,
                "default" => {}
                other => return Err(format!("unknown power-loss model {other:?} (strict_dirs, delalloc, default)")),
            }
        }
        Ok(model)
    }
}

/// What a cut dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files that had unsynced changes.
    pub files: u64,
    /// Bytes in their dirty pages.
    pub dirty_bytes: u64,
    /// Torn write-backs that failed (the file had vanished); their pages are lost, as in `DropAll`.
    pub torn_write_errors: u64,
    /// Files the cut left longer than their durable data, zero-filled past it ([`Model::delalloc`]).
    pub zero_filled_files: u64,
    /// Directory operations undone ([`Model::strict_dirs`]).
    pub entries_reverted: u64,
    /// Undos that could not be applied (a later durable operation had moved the entry away).
    pub revert_errors: u64,
}

/// Why the file system cannot be mounted here.
pub fn preflight() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing: this machine or container has no FUSE device".to_string());
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("fusermount3").is_file()));
    if !on_path {
        return Err("fusermount3 is not on PATH: run scripts/setup-fuse.sh (installs Debian's fuse3)".to_string());
    }
    Ok(())
}

/// A mounted power-loss file system, unmounted on drop.
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    shared: fs::Shared,
    mountpoint: PathBuf,
}

impl Mount {
    /// Mounts a pass-through of `backing` (an existing directory) at `mountpoint` (an existing,
    /// empty directory), served by a thread of this process.
    pub fn new(backing: &Path, mountpoint: &Path) -> io::Result<Self> {
        Self::with_model(backing, mountpoint, Model::default())
    }

    /// [`Mount::new`] with the failure modes of `model`.
    pub fn with_model(backing: &Path, mountpoint: &Path, model: Model) -> io::Result<Self> {
        preflight().map_err(io::Error::other)?;
        let backing = backing.canonicalize()?;
        let shared = fs::shared(backing, model)?;
        let filesystem = fs::PowerLossFs { shared: shared.clone() };
        let mut config = fuser::Config::default();
        config.mount_options = vec![fuser::MountOption::FSName("powerloss".to_string())];
        let session = fuser::spawn_mount(filesystem, mountpoint, &config)?;
        Ok(Self { session: Some(session), shared, mountpoint: mountpoint.to_path_buf() })
    }

    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Cuts the power: unsynced data is dropped (or torn) and every operation fails until
    /// [`Mount::power_on`] (with [`Cut::ClearCache`], dropped and the power left on).
    pub fn cut(&self, cut: Cut) -> CutReport {
        fs::lock(&self.shared).cut(cut)
    }

    /// Arms a cut that the file system itself makes right after `writes` more file writes (0: the
    /// next one), so it lands in the middle of a writer's work, with unsynced data in flight.
    /// Replaces any cut armed before.
    pub fn arm_cut(&self, cut: Cut, writes: u64) {
        fs::lock(&self.shared).arm(cut, writes);
    }

    /// Waits up to `timeout` for the armed cut to fire; what it dropped, or `None` if no write came.
    pub fn wait_for_armed_cut(&self, timeout: Duration) -> Option<CutReport> {
        let guard = fs::lock(&self.shared);
        let (mut guard, _) = self
            .shared
            .fired
            .wait_timeout_while(guard, timeout, |state| state.fired.is_none())
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.fired.take()
    }

    /// Restores power after a cut; handles opened before it stay dead and an armed cut is disarmed.
    pub fn power_on(&self) {
        fs::lock(&self.shared).power_on();
    }

    /// Serves until the file system is unmounted from outside (`fusermount3 -u`).
    pub fn serve_until_unmounted(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(session) => session.join(),
            None => Ok(()),
        }
    }

    /// Unmounts and waits for the serving thread.
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Nothing to report to in a destructor; a failed unmount leaves a stale mount point
            // that the next mount of a fresh temp dir does not touch.
            let _ = session.umount_and_join();
        }
    }
}
