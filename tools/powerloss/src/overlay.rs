//! The unsynced state of one file: dirty pages and pending size changes, held in memory over the
//! file's durable content in the backing directory, until `fsync` writes them through or a power
//! cut drops them.
//!
//! Pure bookkeeping over a [`std::fs::File`]: no FUSE here, so the rules are unit-tested directly.
//! Two numbers describe the size: `size` is the length readers see now, and `floor` is the lowest
//! length the file has had since its last sync. Backing bytes at or past `floor` are dead (a
//! truncation cut them off) and read as zeros unless a dirty page covers them; `floor <= size`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Granularity of dirty tracking and of torn writes: the page size of the kernel's page cache.
pub const PAGE_BYTES: u64 = 4096;

/// Unsynced changes of one file.
#[derive(Debug)]
pub struct Overlay {
    pages: BTreeMap<u64, Box<[u8]>>,
    size: u64,
    floor: u64,
}

/// Reads `buf.len()` bytes at `offset` from `file`, leaving zeros past its end.
fn read_backing(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Overlay {
    /// An empty overlay over a durable file of `durable_len` bytes.
    pub fn new(durable_len: u64) -> Self {
        Self { pages: BTreeMap::new(), size: durable_len, floor: durable_len }
    }

    /// The length readers see.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The lowest length the file has had since its last sync.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Bytes held in dirty pages.
    pub fn dirty_bytes(&self) -> u64 {
        self.pages.len() as u64 * PAGE_BYTES
    }

    /// The current content of page `index`, from the overlay or else the live part of the backing file.
    fn load_page(&self, backing: &File, index: u64) -> io::Result<Box<[u8]>> {
        let mut page = vec![0u8; PAGE_BYTES as usize].into_boxed_slice();
        let start = index * PAGE_BYTES;
        if start < self.floor {
            let live = (self.floor - start).min(PAGE_BYTES) as usize;
            read_backing(backing, start, &mut page[..live])?;
        }
        Ok(page)
    }

    /// Reads up to `len` bytes at `offset` as a reader sees them now.
    pub fn read(&self, backing: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        let end = self.size.min(offset.saturating_add(len));
        let mut out = vec![0u8; (end - offset) as usize];
        let live_end = end.min(self.floor);
        if offset < live_end {
            read_backing(backing, offset, &mut out[..(live_end - offset) as usize])?;
        }
        for (&index, page) in self.pages.range(offset / PAGE_BYTES..=(end - 1) / PAGE_BYTES) {
            let page_start = index * PAGE_BYTES;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE_BYTES);
            out[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&page[(from - page_start) as usize..(to - page_start) as usize]);
        }
        Ok(out)
    }

    /// Records a write of `data` at `offset`.
    pub fn write(&mut self, backing: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let index = pos / PAGE_BYTES;
            let page_start = index * PAGE_BYTES;
            let to = end.min(page_start + PAGE_BYTES);
            if !self.pages.contains_key(&index) {
                let page = self.load_page(backing, index)?;
                self.pages.insert(index, page);
            }
            let page = self.pages.get_mut(&index).expect("the page was inserted just above");
            page[(pos - page_start) as usize..(to - page_start) as usize]
                .copy_from_slice(&data[(pos - offset) as usize..(to - offset) as usize]);
            pos = to;
        }
        self.size = self.size.max(end);
        Ok(())
    }

    /// Records a size change (`ftruncate`, `O_TRUNC`).
    pub fn set_size(&mut self, size: u64) {
        if size < self.size {
            let first_gone = size.div_ceil(PAGE_BYTES);
            self.pages.retain(|&index, _| index < first_gone);
            if let Some(page) = self.pages.get_mut(&(size / PAGE_BYTES)) {
                page[(size % PAGE_BYTES) as usize..].fill(0);
            }
            self.floor = self.floor.min(size);
        }
        self.size = size;
    }

    /// Writes every pending change to `backing` (the `fsync` of this file); the overlay is spent.
    pub fn sync(self, backing: &File) -> io::Result<()> {
        if self.floor < backing.metadata()?.len() {
            backing.set_len(self.floor)?;
        }
        for (index, page) in &self.pages {
            let start = index * PAGE_BYTES;
            if start < self.size {
                let len = (self.size - start).min(PAGE_BYTES) as usize;
                backing.write_all_at(&page[..len], start)?;
            }
        }
        backing.set_len(self.size)
    }

    /// Writes back only the pages `keep` picks, as the kernel's writeback may have done before the
    /// power failed; sizes change only as far as those pages extend the file, so a kept page past a
    /// gap leaves zeros in between, and a pending truncation is forgotten.
    pub fn tear(self, backing: &File, mut keep: impl FnMut() -> bool) -> io::Result<()> {
        for (index, page) in &self.pages {
            let start = index * PAGE_BYTES;
            if start < self.size && keep() {
                let len = (self.size - start).min(PAGE_BYTES) as usize;
                backing.write_all_at(&page[..len], start)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn backing(content: &[u8]) -> File {
        let mut f = tempfile::tempfile().expect("temp file");
        f.write_all(content).expect("write");
        f
    }

    #[test]
    fn writes_read_back_over_durable_content_and_reach_disk_only_on_sync() {
        let file = backing(b"hello world");
        let mut o = Overlay::new(11);
        o.write(&file, 6, b"WORLD!!").expect("write");
        assert_eq!(o.read(&file, 0, 100).expect("read"), b"hello WORLD!!");
        assert_eq!(file.metadata().expect("meta").len(), 11);
        o.sync(&file).expect("sync");
        let o = Overlay::new(13);
        assert_eq!(o.read(&file, 0, 100).expect("read"), b"hello WORLD!!");
    }

    #[test]
    fn truncation_then_extension_reads_zeros_where_the_old_bytes_were() {
        let file = backing(&[7u8; 10_000]);
        let mut o = Overlay::new(10_000);
        o.set_size(100);
        o.set_size(9_000);
        let content = o.read(&file, 0, 10_000).expect("read");
        assert_eq!(content.len(), 9_000);
        assert!(content[..100].iter().all(|&b| b == 7));
        assert!(content[100..].iter().all(|&b| b == 0));
        o.sync(&file).expect("sync");
        let mut durable = vec![0u8; 9_000];
        read_backing(&file, 0, &mut durable).expect("read");
        assert_eq!(durable, content);
    }

    #[test]
    fn a_write_past_the_end_leaves_a_hole_of_zeros() {
        let file = backing(b"ab");
        let mut o = Overlay::new(2);
        o.write(&file, 10_000, b"z").expect("write");
        let content = o.read(&file, 0, 20_000).expect("read");
        assert_eq!(content.len(), 10_001);
        assert_eq!(&content[..2], b"ab");
        assert!(content[2..10_000].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_torn_write_keeps_only_the_chosen_pages() {
        let file = backing(b"");
        let mut o = Overlay::new(0);
        o.write(&file, 0, &[1u8; 3 * PAGE_BYTES as usize]).expect("write");
        let mut n = 0;
        o.tear(&file, || {
            n += 1;
            n != 2
        })
        .expect("tear");
        let mut durable = vec![9u8; 3 * PAGE_BYTES as usize];
        read_backing(&file, 0, &mut durable).expect("read");
        let p = PAGE_BYTES as usize;
        assert!(durable[..p].iter().all(|&b| b == 1));
        assert!(durable[p..2 * p].iter().all(|&b| b == 0), "the dropped middle page is a hole");
        assert!(durable[2 * p..].iter().all(|&b| b == 1));
    }
}
