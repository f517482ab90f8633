//! The on-disk record format (pure). A segment file is a 16-byte segment header followed by
//! records; a record is a 24-byte header and a protobuf `StoredBatch` (payload.rs):
//!
//! ```text
//! segment header: b"LTAPSEG2" | catalog id (u64 LE)
//! record header:  payload length (u32) | samples (u32) | written at, Unix ms (u64)
//!                 | CRC-32 of the payload (u32) | CRC-32 of the previous 20 bytes (u32)
//! ```
//!
//! Two checksums: an intact header over a damaged payload still says how long the record was
//! and how many samples were lost, so reading resumes at the very next record; a damaged header
//! is skipped by scanning for the next position where a whole record checks out.

/// What new segments start with: their records may hold packed runs (decision 0024), which a
/// linetap from before would not see, so it sets these segments aside instead of reading them.
pub const SEGMENT_MAGIC: &[u8; 8] = b"LTAPSEG2";
/// Segments written before runs: their payloads are `StoredBatch`es without runs, read the same.
const SEGMENT_MAGIC_V1: &[u8; 8] = b"LTAPSEG1";
pub const SEGMENT_HEADER_LEN: u64 = 16;
pub const RECORD_HEADER_LEN: usize = 24;
/// No record is larger than this; a header that says otherwise is damaged.
pub const MAX_PAYLOAD: u32 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub len: u32,
    pub samples: u32,
    pub written_ms: u64,
    pub payload_crc: u32,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(&self.len.to_le_bytes());
        h[4..8].copy_from_slice(&self.samples.to_le_bytes());
        h[8..16].copy_from_slice(&self.written_ms.to_le_bytes());
        h[16..20].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[0..20]);
        h[20..24].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// `None` when the header's own checksum fails or its length is impossible.
    pub fn decode(h: &[u8]) -> Option<RecordHeader> {
        let h: &[u8; RECORD_HEADER_LEN] = h.get(..RECORD_HEADER_LEN)?.try_into().ok()?;
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        if crc32fast::hash(&h[0..20]) != word(20) {
            return None;
        }
        let len = word(0);
        if len > MAX_PAYLOAD {
            return None;
        }
        let mut ms = [0u8; 8];
        ms.copy_from_slice(&h[8..16]);
        Some(RecordHeader {
            len,
            samples: word(4),
            written_ms: u64::from_le_bytes(ms),
            payload_crc: word(16),
        })
    }
}

/// Appends one record (header + payload) to `out`.
pub fn append_record(out: &mut Vec<u8>, payload: &[u8], samples: u32, written_ms: u64) {
    let header = RecordHeader {
        len: payload.len() as u32,
        samples,
        written_ms,
        payload_crc: crc32fast::hash(payload),
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
}

pub fn segment_header(catalog_id: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..].copy_from_slice(&catalog_id.to_le_bytes());
    h
}

/// The catalog id of a segment header, or `None` when the header is damaged.
pub fn parse_segment_header(h: &[u8]) -> Option<u64> {
    if h.len() < SEGMENT_HEADER_LEN as usize
        || (&h[..8] != SEGMENT_MAGIC && &h[..8] != SEGMENT_MAGIC_V1)
    {
        return None;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[8..16]);
    Some(u64::from_le_bytes(id))
}

/// What was found at one position of a segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// A whole, intact record: header, and the payload's byte range in the input.
    Record(RecordHeader, std::ops::Range<usize>),
    /// An intact header whose payload fails its checksum: skip `next - at` bytes; `samples` lost.
    BadPayload { samples: u32, next: usize },
    /// A damaged header: no record starts here.
    BadHeader,
    /// The bytes end before the record does (a torn tail, or data still being written).
    Incomplete,
}

/// Looks at the record starting at `at` in `bytes`.
pub fn scan(bytes: &[u8], at: usize) -> Scan {
    let Some(h) = bytes.get(at..at + RECORD_HEADER_LEN) else {
        return Scan::Incomplete;
    };
    let Some(header) = RecordHeader::decode(h) else {
        return Scan::BadHeader;
    };
    let start = at + RECORD_HEADER_LEN;
    let end = start + header.len as usize;
    let Some(payload) = bytes.get(start..end) else {
        return Scan::Incomplete;
    };
    if crc32fast::hash(payload) != header.payload_crc {
        return Scan::BadPayload {
            samples: header.samples,
            next: end,
        };
    }
    Scan::Record(header, start..end)
}

/// The next position at or after `from` where a whole intact record starts (for resyncing after
/// a damaged header), or `None`.
pub fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(RECORD_HEADER_LEN - 1))
        .find(|&at| matches!(scan(bytes, at), Scan::Record(..)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log(payloads: &[Vec<u8>]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            starts.push(out.len());
            append_record(&mut out, p, i as u32 + 1, 1_000 + i as u64);
        }
        (out, starts)
    }

    #[test]
    fn roundtrip_and_segment_header() {
        let (bytes, starts) = log(&[b"abc".to_vec(), vec![], b"hello world".to_vec()]);
        match scan(&bytes, starts[2]) {
            Scan::Record(h, r) => {
                assert_eq!(&bytes[r], b"hello world");
                assert_eq!((h.samples, h.written_ms), (3, 1002));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_segment_header(&segment_header(42)), Some(42));
        assert_eq!(&segment_header(42)[..8], b"LTAPSEG2");
        // An older linetap's segments read the same.
        assert_eq!(parse_segment_header(b"LTAPSEG1\x07\0\0\0\0\0\0\0"), Some(7));
        assert_eq!(parse_segment_header(b"LTAPSEG3\0\0\0\0\0\0\0\0"), None);
        assert_eq!(parse_segment_header(b"LTAPSEG"), None);
    }

    proptest! {
        /// Reading a log that was cut anywhere yields exactly the records written wholly before
        /// the cut, then `Incomplete`: a crash at any point loses only the torn record.
        #[test]
        fn torn_tail_at_any_point(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..12), cut_frac in 0.0f64..1.0) {
            let (bytes, starts) = log(&payloads);
            let cut = (bytes.len() as f64 * cut_frac) as usize;
            let torn = &bytes[..cut];
            let mut at = 0;
            let mut seen = 0;
            loop {
                match scan(torn, at) {
                    Scan::Record(_, r) => { prop_assert_eq!(&torn[r.clone()], &payloads[seen][..]); seen += 1; at = r.end; }
                    Scan::Incomplete => break,
                    other => prop_assert!(false, "unexpected {:?} at {}", other, at),
                }
            }
            let whole = starts.iter().zip(&payloads).filter(|(s, p)| **s + RECORD_HEADER_LEN + p.len() <= cut).count();
            prop_assert_eq!(seen, whole);
        }

        /// A flipped byte loses at most the record it hits; every other record is read intact,
        /// and a damaged payload reports how many samples it held.
        #[test]
        fn a_flipped_byte_loses_one_record(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..64), 2..12), pos_frac in 0.0f64..1.0, bit in 0u8..8) {
            let (mut bytes, starts) = log(&payloads);
            let pos = ((bytes.len() - 1) as f64 * pos_frac) as usize;
            bytes[pos] ^= 1 << bit;
            let hit = starts.iter().rposition(|s| *s <= pos).unwrap();
            let mut at = 0;
            let mut intact = Vec::new();
            let mut lost_samples = 0;
            while at < bytes.len() {
                match scan(&bytes, at) {
                    Scan::Record(_, r) => { intact.push(bytes[r.clone()].to_vec()); at = r.end; }
                    Scan::BadPayload { samples, next } => { lost_samples += samples; at = next; }
                    Scan::BadHeader => match resync(&bytes, at + 1) { Some(n) => at = n, None => break },
                    Scan::Incomplete => break,
                }
            }
            let expected: Vec<Vec<u8>> = payloads.iter().enumerate().filter(|(i, _)| *i != hit).map(|(_, p)| p.clone()).collect();
            // A single-bit error is always caught by CRC-32: exactly the hit record is lost.
            prop_assert_eq!(intact, expected);
            prop_assert!(lost_samples == 0 || lost_samples == hit as u32 + 1);
        }
    }
}
