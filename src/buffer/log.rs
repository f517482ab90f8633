//! The segmented log on disk: segment files named by the position of their first byte
//! (`00000000000000000000.seg`), appended by one writer, read by any number of readers.
//! A position is a byte offset in the whole log (segment base + offset in the file), so
//! positions only grow and compare across segments.

use super::payload;
use super::record::{self, Scan, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::model::SampleBatch;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub base: u64,
    /// Bytes in the file, header included.
    pub len: u64,
    pub catalog: u64,
}

impl Segment {
    pub fn end(&self) -> u64 {
        self.base + self.len
    }
}

pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// What start-up found and repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut off the end of the last segment (a record torn by a crash).
    pub truncated_bytes: u64,
    /// Segments set aside because their header is damaged (renamed `*.seg.quarantined`).
    pub quarantined: Vec<PathBuf>,
}

/// Lists the segments of `dir`, quarantines those with a damaged header, and cuts a torn record
/// off the end of the last one.
pub fn recover(dir: &Path) -> io::Result<(Vec<Segment>, Recovery)> {
    fs::create_dir_all(dir)?;
    let mut bases: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .collect();
    bases.sort_unstable();
    let mut rec = Recovery::default();
    let mut segments = Vec::new();
    for base in bases {
        let path = segment_path(dir, base);
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        let len = fs::metadata(&path)?.len();
        let ok = File::open(&path)
            .and_then(|mut f| f.read_exact(&mut header))
            .is_ok();
        match record::parse_segment_header(&header).filter(|_| ok) {
            Some(catalog) => segments.push(Segment { base, len, catalog }),
            None => {
                let q = path.with_extension("seg.quarantined");
                fs::rename(&path, &q)?;
                rec.quarantined.push(q);
            }
        }
    }
    if let Some(last) = segments.last_mut() {
        let path = segment_path(dir, last.base);
        let bytes = fs::read(&path)?;
        let mut at = SEGMENT_HEADER_LEN as usize;
        let valid_end = loop {
            match record::scan(&bytes, at) {
                Scan::Record(_, r) => at = r.end,
                Scan::BadPayload { next, .. } => at = next,
                Scan::BadHeader => match record::resync(&bytes, at + 1) {
                    Some(n) => at = n,
                    None => break at,
                },
                Scan::Incomplete => break at,
            }
        };
        if (valid_end as u64) < last.len {
            rec.truncated_bytes = last.len - valid_end as u64;
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(valid_end as u64)?;
            f.sync_all()?;
            last.len = valid_end as u64;
        }
    }
    Ok((segments, rec))
}

/// Appends to the newest segment.
pub struct LogWriter {
    dir: PathBuf,
    file: File,
    pub segment: Segment,
}

impl LogWriter {
    /// Starts a new segment at `base`.
    pub fn create(dir: &Path, base: u64, catalog: u64) -> io::Result<LogWriter> {
        let path = segment_path(dir, base);
        let opened = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&record::segment_header(catalog)).map(|_| f));
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                // A full disk: do not leave a header-less file for recovery to quarantine.
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        sync_dir(dir);
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            segment: Segment {
                base,
                len: SEGMENT_HEADER_LEN,
                catalog,
            },
        })
    }

    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Err(e) = self.file.write_all(bytes) {
            // A partial write (disk full) would leave bytes the log does not account for:
            // cut them so file offsets and log positions keep matching.
            let _ = self.file.set_len(self.segment.len);
            let _ = self.file.seek(SeekFrom::Start(self.segment.len));
            return Err(e);
        }
        self.segment.len += bytes.len() as u64;
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Gives the disk space of everything appended so far back to the file system, keeping the
    /// file's length (and so every position): only for data every reader has passed. The
    /// segment becomes a hole that reads as zeros, which recovery and readers skip.
    pub fn release_delivered(&mut self) -> io::Result<()> {
        self.file.set_len(SEGMENT_HEADER_LEN)?;
        self.file.set_len(self.segment.len)?;
        self.file.seek(SeekFrom::Start(self.segment.len))?;
        Ok(())
    }

    /// Seals this segment (synced) and starts the next one.
    pub fn roll(&mut self, catalog: u64) -> io::Result<Segment> {
        self.sync()?;
        let sealed = self.segment;
        *self = LogWriter::create(&self.dir, sealed.end(), catalog)?;
        Ok(sealed)
    }
}

/// Best effort: make a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// One record read back.
#[derive(Debug)]
pub struct Item {
    pub batch: std::sync::Arc<SampleBatch>,
    pub catalog: u64,
    /// The position just after this record: acknowledging it means "delivered up to here".
    pub end: u64,
    pub written_ms: u64,
}

/// What a read found damaged.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// Samples of records whose header was intact but payload damaged.
    pub samples: u64,
    /// Bytes skipped where no intact header could be found.
    pub bytes: u64,
}

/// Reads records sequentially from a position. Owns its file handle and a read-ahead buffer.
pub struct LogReader {
    dir: PathBuf,
    pub pos: u64,
    buf: Vec<u8>,
    /// The log position of `buf[0]`.
    buf_pos: u64,
    file: Option<(u64, File)>,
}

const CHUNK: usize = 256 << 10;

impl LogReader {
    pub fn new(dir: &Path, pos: u64) -> Self {
        LogReader {
            dir: dir.to_path_buf(),
            pos,
            buf: Vec::new(),
            buf_pos: pos,
            file: None,
        }
    }

    /// Moves to `pos` (e.g. when the data before it was dropped).
    pub fn seek(&mut self, pos: u64) {
        self.pos = pos;
        self.buf.clear();
        self.buf_pos = pos;
    }

    /// Reads records up to `limit` (exclusive), stopping after `max_samples` samples.
    /// `segments` is a snapshot of the log's segments (the last one's `len` as far as written).
    pub fn read(
        &mut self,
        segments: &[Segment],
        limit: u64,
        max_samples: usize,
        out: &mut Vec<Item>,
        damage: &mut Damage,
    ) -> io::Result<()> {
        let mut samples = 0usize;
        while self.pos < limit && samples < max_samples {
            let Some(seg) = segments
                .iter()
                .find(|s| s.base <= self.pos && self.pos < s.end())
                .copied()
            else {
                // Not inside any segment: the data here was dropped or quarantined; go to the next.
                match segments.iter().find(|s| s.base > self.pos) {
                    Some(next) => self.seek(next.base),
                    None => break,
                }
                continue;
            };
            if self.pos < seg.base + SEGMENT_HEADER_LEN {
                self.seek(seg.base + SEGMENT_HEADER_LEN);
                continue;
            }
            let seg_end = seg.end().min(limit);
            if self.buf.is_empty()
                || self.pos < self.buf_pos
                || self.pos > self.buf_pos + self.buf.len() as u64
            {
                self.buf.clear();
                self.buf_pos = self.pos;
            }
            let at = (self.pos - self.buf_pos) as usize;
            match record::scan(&self.buf, at) {
                Scan::Record(h, r) => {
                    let end = self.buf_pos + r.end as u64;
                    match payload::decode_batch(&self.buf[r.clone()])
                        .filter(|b| b.samples.len() == h.samples as usize)
                    {
                        Some(batch) => {
                            samples += batch.samples.len();
                            out.push(Item {
                                batch: std::sync::Arc::new(batch),
                                catalog: seg.catalog,
                                end,
                                written_ms: h.written_ms,
                            });
                        }
                        None => damage.samples += h.samples as u64,
                    }
                    self.pos = end;
                }
                Scan::BadPayload {
                    samples: lost,
                    next,
                } => {
                    damage.samples += lost as u64;
                    self.pos = self.buf_pos + next as u64;
                }
                Scan::BadHeader | Scan::Incomplete => {
                    let buffered_end = self.buf_pos + self.buf.len() as u64;
                    if buffered_end < seg_end {
                        self.fill(seg, seg_end)?;
                        continue;
                    }
                    if matches!(record::scan(&self.buf, at), Scan::Incomplete)
                        && seg_end == seg.end()
                        && seg.end() >= limit
                    {
                        // The newest record is still being written.
                        break;
                    }
                    // Damaged: resume at the next intact record of this segment, or the next segment.
                    match record::resync(&self.buf, at + 1) {
                        Some(n) => {
                            damage.bytes += (n - at) as u64;
                            self.pos = self.buf_pos + n as u64;
                        }
                        None => {
                            damage.bytes += seg_end - self.pos;
                            self.seek(seg_end);
                        }
                    }
                }
            }
            // Drop what has been consumed once it is large.
            let consumed = (self.pos - self.buf_pos) as usize;
            if consumed > CHUNK && consumed <= self.buf.len() {
                self.buf.drain(..consumed);
                self.buf_pos = self.pos;
            }
        }
        // Caught up: a caught-up sink reads from memory, so the chunk buffer is given back
        // rather than kept for good (the next read from the file starts a new one at `pos`,
        // the end of a whole record).
        if self.pos >= limit {
            self.buf = Vec::new();
            self.buf_pos = self.pos;
        }
        Ok(())
    }

    /// Reads the next chunk of `seg` (up to `seg_end`) into the buffer.
    fn fill(&mut self, seg: Segment, seg_end: u64) -> io::Result<()> {
        let from = self.buf_pos + self.buf.len() as u64;
        if self.file.as_ref().map(|(b, _)| *b) != Some(seg.base) {
            self.file = Some((seg.base, File::open(segment_path(&self.dir, seg.base))?));
        }
        let Some((_, f)) = self.file.as_mut() else {
            return Ok(());
        };
        f.seek(SeekFrom::Start(from - seg.base))?;
        let want = ((seg_end - from) as usize).min(CHUNK.max(RECORD_HEADER_LEN));
        let old = self.buf.len();
        self.buf.resize(old + want, 0);
        let mut got = 0;
        while got < want {
            match f.read(&mut self.buf[old + got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(old + got);
                    return Err(e);
                }
            }
        }
        self.buf.truncate(old + got);
        if got == 0 {
            // The file is shorter than the log says (removed or truncated underneath us).
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "segment shorter than expected",
            ));
        }
        Ok(())
    }
}

/// When the record at `pos` was written (Unix ms), from its header.
pub fn written_at(dir: &Path, segments: &[Segment], pos: u64) -> Option<u64> {
    let seg = segments.iter().find(|s| s.base <= pos && pos < s.end())?;
    let at = pos.max(seg.base + SEGMENT_HEADER_LEN);
    let mut f = File::open(segment_path(dir, seg.base)).ok()?;
    f.seek(SeekFrom::Start(at - seg.base)).ok()?;
    let mut h = [0u8; RECORD_HEADER_LEN];
    f.read_exact(&mut h).ok()?;
    record::RecordHeader::decode(&h).map(|h| h.written_ms)
}

/// Counts the samples of the intact records in `[from, to)` of one segment, reading headers only
/// (for counting what a dropped segment held for a sink).
pub fn count_samples(dir: &Path, seg: Segment, from: u64, to: u64) -> u64 {
    let Ok(mut f) = File::open(segment_path(dir, seg.base)) else {
        return 0;
    };
    let mut pos = from.max(seg.base + SEGMENT_HEADER_LEN);
    let mut total = 0u64;
    let mut h = [0u8; RECORD_HEADER_LEN];
    while pos + RECORD_HEADER_LEN as u64 <= to {
        if f.seek(SeekFrom::Start(pos - seg.base)).is_err() || f.read_exact(&mut h).is_err() {
            break;
        }
        let Some(header) = record::RecordHeader::decode(&h) else {
            break;
        };
        total += header.samples as u64;
        pos += RECORD_HEADER_LEN as u64 + header.len as u64;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Sample, Value};
    use proptest::prelude::*;
    use prost::Message;

    fn batch(seq: u64, n: usize) -> SampleBatch {
        SampleBatch {
            device: 0,
            seq,
            timestamp_ns: 0,
            samples: (0..n)
                .map(|i| Sample {
                    point: i as u32,
                    timestamp_ns: seq as i64,
                    quality: 0,
                    value: Some(Value::IntValue(seq as i64)),
                })
                .collect(),
        }
    }

    proptest! {
        /// Write records (rolling segments), crash at a random byte of the newest segment,
        /// recover, and read from a random acknowledged cursor: the reader yields exactly the
        /// records after the cursor that were wholly written before the crash, in order.
        #[test]
        fn recovery_and_cursor_after_a_crash(sizes in proptest::collection::vec(1usize..20, 1..40), roll_every in 3usize..15, cut_frac in 0.0f64..1.0, cursor_pick in 0usize..40) {
            let dir = tempfile::tempdir().unwrap();
            let mut w = LogWriter::create(dir.path(), 0, 7).unwrap();
            let mut ends = Vec::new();
            for (i, n) in sizes.iter().enumerate() {
                if i > 0 && i % roll_every == 0 {
                    w.roll(7).unwrap();
                }
                let mut bytes = Vec::new();
                record::append_record(&mut bytes, &batch(i as u64 + 1, *n).encode_to_vec(), *n as u32, 0);
                w.append(&bytes).unwrap();
                ends.push(w.segment.end());
            }
            // The crash: the newest segment is cut at a random point past its header.
            let last = w.segment;
            drop(w);
            let cut_len = SEGMENT_HEADER_LEN + ((last.len - SEGMENT_HEADER_LEN) as f64 * cut_frac) as u64;
            let f = OpenOptions::new().write(true).open(segment_path(dir.path(), last.base)).unwrap();
            f.set_len(cut_len).unwrap();
            drop(f);
            let (segments, rec) = recover(dir.path()).unwrap();
            prop_assert!(rec.quarantined.is_empty());
            let head = segments.last().unwrap().end();
            let survived: Vec<usize> = (0..sizes.len()).filter(|&i| ends[i] <= head).collect();
            prop_assert_eq!(survived.len(), survived.last().map(|l| l + 1).unwrap_or(0), "survivors form a prefix");
            // A cursor at a record boundary that was acknowledged before the crash.
            let k = if survived.is_empty() { 0 } else { cursor_pick % (survived.len() + 1) };
            let cursor = if k == 0 { 0 } else { ends[k - 1] };
            let mut reader = LogReader::new(dir.path(), cursor);
            let mut items = Vec::new();
            let mut damage = Damage::default();
            reader.read(&segments, head, usize::MAX, &mut items, &mut damage).unwrap();
            prop_assert_eq!(damage, Damage::default());
            let seqs: Vec<u64> = items.iter().map(|i| i.batch.seq).collect();
            let want: Vec<u64> = survived.iter().skip(k).map(|i| *i as u64 + 1).collect();
            prop_assert_eq!(seqs, want);
            prop_assert_eq!(reader.pos, head.max(cursor));
        }
    }

    /// A buffer an older linetap left (a `LTAPSEG1` segment, records without runs) is read
    /// after an upgrade, then this linetap's segment with packed runs: every sample back, in
    /// order, nothing counted damaged.
    #[test]
    fn an_older_segment_and_a_packed_one_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let old = [batch(1, 30), batch(2, 3)];
        let mut bytes = b"LTAPSEG1".to_vec();
        bytes.extend_from_slice(&7u64.to_le_bytes());
        for b in &old {
            let payload = b.encode_to_vec();
            record::append_record(&mut bytes, &payload, b.samples.len() as u32, 0);
        }
        fs::write(segment_path(dir.path(), 0), &bytes).unwrap();
        let mut w = LogWriter::create(dir.path(), bytes.len() as u64, 7).unwrap();
        // Readings as a poll makes them: one time, consecutive points, one run each.
        let new: Vec<SampleBatch> = (3..6)
            .map(|seq| SampleBatch {
                device: 1,
                seq,
                timestamp_ns: 1_000 + seq as i64,
                samples: (0..50)
                    .map(|i| Sample {
                        point: 100 + i,
                        value: Some(Value::DoubleValue(f64::from(i as f32 / 3.0))),
                        ..Default::default()
                    })
                    .collect(),
            })
            .collect();
        for b in &new {
            let mut payload = Vec::new();
            super::payload::encode_batch(b, &mut payload);
            assert!(payload.len() < 50 * 5, "packed: {} bytes", payload.len());
            let mut rec = Vec::new();
            record::append_record(&mut rec, &payload, b.samples.len() as u32, 0);
            w.append(&rec).unwrap();
        }
        drop(w);
        let (segments, rec) = recover(dir.path()).unwrap();
        assert!(rec.quarantined.is_empty(), "{rec:?}");
        assert_eq!(segments.len(), 2);
        let mut reader = LogReader::new(dir.path(), 0);
        let (mut items, mut damage) = (Vec::new(), Damage::default());
        let head = segments[1].end();
        reader
            .read(&segments, head, usize::MAX, &mut items, &mut damage)
            .unwrap();
        assert_eq!(damage, Damage::default());
        let back: Vec<SampleBatch> = items.iter().map(|i| (*i.batch).clone()).collect();
        assert_eq!(back, [&old[..], &new[..]].concat());
    }

    /// A record whose payload decodes to another number of samples than its header says is
    /// damage: its samples are counted lost, the records around it are read.
    #[test]
    fn a_record_that_disagrees_with_its_header_is_counted_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::create(dir.path(), 0, 7).unwrap();
        for (b, claimed) in [(batch(1, 5), 5), (batch(2, 5), 9), (batch(3, 2), 2)] {
            let mut rec = Vec::new();
            record::append_record(&mut rec, &b.encode_to_vec(), claimed, 0);
            w.append(&rec).unwrap();
        }
        let head = w.segment.end();
        drop(w);
        let (segments, _) = recover(dir.path()).unwrap();
        let mut reader = LogReader::new(dir.path(), 0);
        let (mut items, mut damage) = (Vec::new(), Damage::default());
        reader
            .read(&segments, head, usize::MAX, &mut items, &mut damage)
            .unwrap();
        let seqs: Vec<u64> = items.iter().map(|i| i.batch.seq).collect();
        assert_eq!(seqs, [1, 3]);
        assert_eq!(damage.samples, 9);
    }
}
