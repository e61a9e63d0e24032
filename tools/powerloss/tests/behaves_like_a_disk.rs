//! The power-loss file system behaves like a disk across a power cut: what was fsynced survives,
//! what was not is gone, metadata operations are durable at once, and a torn cut keeps whole
//! pages or none. These tests need FUSE and fail (never skip) where `/dev/fuse` or `fusermount3`
//! is missing: run `scripts/setup-fuse.sh`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use powerloss::{Cut, Mount, PAGE_BYTES};

/// A mounted file system over a fresh backing directory; the temp dirs outlive the mount.
struct Rig {
    mount: Mount,
    _backing: tempfile::TempDir,
    _mountpoint: tempfile::TempDir,
}

fn rig() -> Rig {
    powerloss::preflight().expect("FUSE is required for this test (run scripts/setup-fuse.sh)");
    let backing = tempfile::tempdir().expect("backing dir");
    let mountpoint = tempfile::tempdir().expect("mount point");
    let mount = Mount::new(backing.path(), mountpoint.path()).expect("mount the power-loss file system");
    Rig { mount, _backing: backing, _mountpoint: mountpoint }
}

fn read_all(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    File::open(path).expect("open").read_to_end(&mut out).expect("read");
    out
}

fn cut_and_restore(rig: &Rig, cut: Cut) {
    rig.mount.cut(cut);
    rig.mount.power_on();
}

#[test]
fn synced_data_survives_a_cut_and_unsynced_data_does_not() {
    let rig = rig();
    let path = rig.mount.path().join("log");
    let mut f = File::create(&path).expect("create");
    f.write_all(b"durable").expect("write");
    f.sync_data().expect("fdatasync");
    f.write_all(b" and lost").expect("write");
    assert_eq!(read_all(&path), b"durable and lost", "unsynced data is visible before the cut");
    drop(f);
    cut_and_restore(&rig, Cut::DropAll);
    assert_eq!(read_all(&path), b"durable");
}

#[test]
fn a_file_never_synced_reads_back_empty() {
    let rig = rig();
    let path = rig.mount.path().join("new");
    File::create(&path).expect("create").write_all(&[1u8; 10_000]).expect("write");
    cut_and_restore(&rig, Cut::DropAll);
    assert!(path.exists(), "creating a file is a metadata operation and survives");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 0);
    assert!(read_all(&path).is_empty());
}

#[test]
fn an_unsynced_truncation_is_undone_by_a_cut() {
    let rig = rig();
    let path = rig.mount.path().join("table");
    let f = File::create(&path).expect("create");
    f.write_all_at(&[5u8; 9_000], 0).expect("write");
    f.sync_all().expect("fsync");
    f.set_len(100).expect("truncate");
    f.write_all_at(b"x", 5_000).expect("write past the new end");
    let now = read_all(&path);
    assert_eq!(now.len(), 5_001);
    assert!(now[100..5_000].iter().all(|&b| b == 0), "bytes cut off by the truncation read as zeros");
    drop(f);
    cut_and_restore(&rig, Cut::DropAll);
    assert_eq!(read_all(&path), vec![5u8; 9_000]);
}

#[test]
fn fsync_of_one_file_does_not_sync_another() {
    let rig = rig();
    let (a, b) = (rig.mount.path().join("a"), rig.mount.path().join("b"));
    let fa = File::create(&a).expect("create a");
    let fb = File::create(&b).expect("create b");
    fa.write_all_at(b"aaa", 0).expect("write a");
    fb.write_all_at(b"bbb", 0).expect("write b");
    fa.sync_all().expect("fsync a");
    drop((fa, fb));
    cut_and_restore(&rig, Cut::DropAll);
    assert_eq!(read_all(&a), b"aaa");
    assert!(read_all(&b).is_empty());
}

#[test]
fn renames_and_unlinks_are_durable_at_once() {
    let rig = rig();
    let dir = rig.mount.path().join("dir");
    std::fs::create_dir(&dir).expect("mkdir");
    let tmp = dir.join("tmp");
    let mut f = File::create(&tmp).expect("create");
    f.write_all(b"version 2").expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    std::fs::write(dir.join("doomed"), b"x").expect("write doomed");
    std::fs::rename(&tmp, dir.join("current")).expect("rename");
    std::fs::remove_file(dir.join("doomed")).expect("unlink");
    cut_and_restore(&rig, Cut::DropAll);
    assert_eq!(read_all(&dir.join("current")), b"version 2");
    assert!(!tmp.exists());
    assert!(!dir.join("doomed").exists());
}

#[test]
fn nothing_works_while_the_power_is_off() {
    let rig = rig();
    let path = rig.mount.path().join("f");
    let mut f = File::create(&path).expect("create");
    rig.mount.cut(Cut::DropAll);
    let err = f.write_all(b"after the cut").and_then(|()| f.sync_all()).expect_err("no write lands after a cut");
    assert_eq!(err.raw_os_error(), Some(5), "EIO, got {err}");
    assert!(File::open(&path).is_err());
    rig.mount.power_on();
    assert!(read_all(&path).is_empty(), "the write after the cut never reached the disk");
    assert!(f.sync_all().is_err(), "a handle from before the cut died with the power");
}

#[test]
fn a_torn_cut_keeps_whole_pages_or_none() {
    let rig = rig();
    let path = rig.mount.path().join("torn");
    let pages = 64u64;
    let f = File::create(&path).expect("create");
    for p in 0..pages {
        f.write_all_at(&vec![p as u8 + 1; PAGE_BYTES as usize], p * PAGE_BYTES).expect("write page");
    }
    drop(f);
    cut_and_restore(&rig, Cut::Torn { seed: 7 });
    let content = read_all(&path);
    assert_eq!(content.len() as u64 % PAGE_BYTES, 0);
    let mut kept = 0;
    for (p, page) in content.chunks(PAGE_BYTES as usize).enumerate() {
        let whole = page.iter().all(|&b| b == p as u8 + 1);
        let hole = page.iter().all(|&b| b == 0);
        assert!(whole || hole, "page {p} is neither written back nor a hole");
        kept += usize::from(whole);
    }
    assert!(kept > 0 && (kept as u64) < pages, "a torn cut keeps some pages and drops others: kept {kept}");
}

#[test]
fn the_control_file_cuts_the_power_from_another_process() {
    let rig = rig();
    let path = rig.mount.path().join("f");
    File::create(&path).expect("create").write_all(b"unsynced").expect("write");
    let control = rig.mount.path().join(powerloss::CONTROL_NAME);
    let status = String::from_utf8(read_all(&control)).expect("status is text");
    assert!(status.contains("dirty_files 1"), "status before the cut: {status}");
    OpenOptions::new().write(true).open(&control).expect("open control").write_all(b"cut\n").expect("cut");
    assert!(String::from_utf8(read_all(&control)).expect("text").contains("power off"));
    OpenOptions::new().write(true).open(&control).expect("open control").write_all(b"on\n").expect("on");
    assert!(read_all(&path).is_empty());
}

#[test]
fn an_armed_cut_fires_after_the_given_number_of_writes() {
    let rig = rig();
    let path = rig.mount.path().join("armed");
    let f = File::create(&path).expect("create");
    f.write_all_at(b"a", 0).expect("write 1");
    f.sync_data().expect("fdatasync");
    rig.mount.arm_cut(Cut::DropAll, 2);
    f.write_all_at(b"b", 1).expect("write 2");
    f.write_all_at(b"c", 2).expect("write 3");
    f.write_all_at(b"d", 3).expect("write 4 lands, then the power fails");
    assert!(f.write_all_at(b"e", 4).is_err(), "the power is off after the armed write");
    let report = rig.mount.wait_for_armed_cut(std::time::Duration::from_secs(5)).expect("the cut fired");
    assert_eq!(report.files, 1);
    rig.mount.power_on();
    assert_eq!(read_all(&path), b"a");
}

/// LazyFS's `clear-cache` is not a power cut: the writer lives on, and its next fsync makes later
/// data durable behind a hole of zeros where the dropped data was (the mechanism behind both
/// failures of issue 16; SPEC section 10). Also reachable through the control file.
#[test]
fn a_cleared_cache_under_a_live_writer_leaves_a_hole_before_later_synced_data() {
    let rig = rig();
    let path = rig.mount.path().join("journal");
    let mut f = File::create(&path).expect("create");
    f.write_all(&[1u8; PAGE_BYTES as usize]).expect("write the first page");
    f.sync_data().expect("fdatasync");
    f.write_all(&[2u8; 3 * PAGE_BYTES as usize]).expect("write three pages, unsynced");
    let report = rig.mount.cut(Cut::ClearCache);
    assert_eq!((report.files, report.dirty_bytes), (1, 3 * PAGE_BYTES));
    f.write_all(&[3u8; PAGE_BYTES as usize]).expect("the power is still on: the writer goes on");
    f.sync_data().expect("and its fsync succeeds");
    drop(f);
    cut_and_restore(&rig, Cut::DropAll);
    let durable = read_all(&path);
    let page = PAGE_BYTES as usize;
    assert_eq!(durable.len(), 5 * page, "the later page is durable at its offset");
    assert!(durable[..page].iter().all(|&b| b == 1));
    assert!(durable[page..4 * page].iter().all(|&b| b == 0), "the dropped pages are a hole of zeros");
    assert!(durable[4 * page..].iter().all(|&b| b == 3));

    let other = rig.mount.path().join("other");
    let mut g = File::create(&other).expect("create");
    g.write_all(b"unsynced").expect("write");
    let control = rig.mount.path().join(powerloss::CONTROL_NAME);
    OpenOptions::new().write(true).open(&control).expect("open control").write_all(b"clear-cache\n").expect("clear");
    assert!(String::from_utf8(read_all(&control)).expect("text").contains("power on"));
    g.write_all(b"!").expect("the handle still works");
    g.sync_data().expect("fdatasync");
    drop(g);
    assert_eq!(read_all(&other), b"\0\0\0\0\0\0\0\0!");
}

fn rig_with(model: powerloss::Model) -> Rig {
    powerloss::preflight().expect("FUSE is required for this test (run scripts/setup-fuse.sh)");
    let backing = tempfile::tempdir().expect("backing dir");
    let mountpoint = tempfile::tempdir().expect("mount point");
    let mount = Mount::with_model(backing.path(), mountpoint.path(), model).expect("mount the power-loss file system");
    Rig { mount, _backing: backing, _mountpoint: mountpoint }
}

fn sync_dir(path: &Path) {
    File::open(path).expect("open dir").sync_all().expect("fsync dir");
}

#[test]
fn strict_dirs_a_new_file_survives_a_cut_only_once_its_directory_is_synced() {
    let rig = rig_with(powerloss::Model { strict_dirs: true, delalloc: false });
    let root = rig.mount.path();
    let dir = root.join("tables");
    std::fs::create_dir(&dir).expect("mkdir");
    sync_dir(root);
    let (kept, lost) = (dir.join("kept"), dir.join("lost"));
    let f = File::create(&kept).expect("create");
    f.write_all_at(b"table", 0).expect("write");
    f.sync_all().expect("fsync");
    sync_dir(&dir);
    let g = File::create(&lost).expect("create");
    g.write_all_at(b"synced, but its entry is not", 0).expect("write");
    g.sync_all().expect("fsync of the file alone");
    drop((f, g));
    let report = rig.mount.cut(Cut::DropAll);
    rig.mount.power_on();
    assert_eq!(report.entries_reverted, 1);
    assert_eq!(read_all(&kept), b"table");
    assert!(!lost.exists(), "a file fsynced in a directory never fsynced since its creation is gone");
    let names: Vec<_> = std::fs::read_dir(root).expect("ls").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("tables")], "the trash stays hidden");
}

#[test]
fn strict_dirs_an_unsynced_rename_goes_back_and_the_replaced_file_returns() {
    let rig = rig_with(powerloss::Model { strict_dirs: true, delalloc: false });
    let root = rig.mount.path();
    let (current, tmp, gone) = (root.join("current"), root.join("current.tmp"), root.join("gone"));
    for (path, content) in [(&current, &b"v1"[..]), (&gone, &b"old"[..])] {
        let f = File::create(path).expect("create");
        f.write_all_at(content, 0).expect("write");
        f.sync_all().expect("fsync");
    }
    sync_dir(root);
    let f = File::create(&tmp).expect("create");
    f.write_all_at(b"v2", 0).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    std::fs::rename(&tmp, &current).expect("rename over");
    std::fs::remove_file(&gone).expect("unlink");
    assert_eq!(read_all(&current), b"v2");
    cut_and_restore(&rig, Cut::DropAll);
    assert_eq!(read_all(&current), b"v1", "the rename was never made durable");
    assert!(!tmp.exists(), "and the temp file's creation was not durable either");
    assert_eq!(read_all(&gone), b"old", "an unlink not made durable is undone");
    // The same steps with the directory synced after them survive the cut.
    let f = File::create(&tmp).expect("create");
    f.write_all_at(b"v2", 0).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    std::fs::rename(&tmp, &current).expect("rename over");
    std::fs::remove_file(&gone).expect("unlink");
    sync_dir(root);
    cut_and_restore(&rig, Cut::DropAll);
    assert_eq!(read_all(&current), b"v2");
    assert!(!tmp.exists() && !gone.exists());
}

#[test]
fn delalloc_another_fsync_makes_an_unsynced_file_long_and_full_of_zeros() {
    let rig = rig_with(powerloss::Model { strict_dirs: false, delalloc: true });
    let root = rig.mount.path();
    let (table, journal) = (root.join("table"), root.join("journal"));
    let t = File::create(&table).expect("create");
    t.write_all_at(&[7u8; 3 * PAGE_BYTES as usize], 0).expect("write, never synced");
    let j = File::create(&journal).expect("create");
    j.write_all_at(b"batch", 0).expect("write");
    j.sync_data().expect("fdatasync of another file commits every file's size");
    drop((t, j));
    let report = rig.mount.cut(Cut::DropAll);
    rig.mount.power_on();
    assert_eq!(report.zero_filled_files, 1);
    assert_eq!(read_all(&journal), b"batch");
    let content = read_all(&table);
    assert_eq!(content.len(), 3 * PAGE_BYTES as usize, "the size reached the disk");
    assert!(content.iter().all(|&b| b == 0), "the data did not");
}

#[test]
fn a_model_is_parsed_from_a_comma_separated_list() {
    let both = powerloss::Model { strict_dirs: true, delalloc: true };
    assert_eq!(powerloss::Model::parse("strict_dirs,delalloc"), Ok(both));
    assert_eq!(powerloss::Model::parse(""), Ok(powerloss::Model::default()));
    assert!(powerloss::Model::parse("ext4").is_err());
}
