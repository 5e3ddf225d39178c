//! Classic pcap capture of switched frames (LINKTYPE_ETHERNET, microsecond timestamps,
//! snaplen 262144), readable by tcpdump and Wireshark.
//!
//! This module owns the file format and a buffered writer. It must not block the switch's loop
//! for long: records go into a large in-memory buffer that is written out when full or when
//! the owner calls [`PcapWriter::flush`]; it never allocates per frame and never decides when to
//! flush (the switch does, from its timer).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Classic pcap magic for microsecond timestamps, written in host order.
pub const PCAP_MAGIC_USEC: u32 = 0xa1b2_c3d4;
/// Snapshot length we announce; larger than any frame the switch forwards.
pub const SNAPLEN: u32 = 262_144;
/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Size of the global header.
pub const GLOBAL_HEADER_LEN: usize = 24;
/// Size of each per-record header.
pub const RECORD_HEADER_LEN: usize = 16;
/// In-memory buffer in front of the file.
const BUFFER_LEN: usize = 256 * 1024;

/// A pcap stream over any writer (a file for captures, a `Vec` in tests).
pub struct PcapWriter<W: Write> {
    out: BufWriter<W>,
    frames: u64,
    dirty: bool,
}

impl PcapWriter<File> {
    /// Create (truncate) `path` and write the global header.
    pub fn create(path: &Path) -> io::Result<Self> {
        PcapWriter::new(File::create(path)?)
    }
}

impl<W: Write> PcapWriter<W> {
    /// Wrap `out` and write the global header.
    pub fn new(out: W) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(BUFFER_LEN, out);
        let mut header = [0u8; GLOBAL_HEADER_LEN];
        header[0..4].copy_from_slice(&PCAP_MAGIC_USEC.to_ne_bytes());
        header[4..6].copy_from_slice(&2u16.to_ne_bytes());
        header[6..8].copy_from_slice(&4u16.to_ne_bytes());
        // thiszone and sigfigs stay 0.
        header[16..20].copy_from_slice(&SNAPLEN.to_ne_bytes());
        header[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter {
            out,
            frames: 0,
            dirty: true,
        })
    }

    /// Append one frame stamped with `at` (truncated to [`SNAPLEN`] if ever longer).
    pub fn write_frame(&mut self, at: SystemTime, frame: &[u8]) -> io::Result<()> {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let captured = frame.len().min(SNAPLEN as usize);
        let mut header = [0u8; RECORD_HEADER_LEN];
        // pcap's u32 seconds wrap in 2106; truncation is the format's own limit.
        header[0..4].copy_from_slice(&(since.as_secs() as u32).to_ne_bytes());
        header[4..8].copy_from_slice(&since.subsec_micros().to_ne_bytes());
        header[8..12].copy_from_slice(&(captured as u32).to_ne_bytes());
        header[12..16].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        self.out.write_all(&header)?;
        self.out.write_all(&frame[..captured])?;
        self.frames += 1;
        self.dirty = true;
        Ok(())
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Whether records were written since the last flush.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Write buffered records to the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.dirty = false;
        Ok(())
    }

    /// Flush and return the underlying writer.
    pub fn into_inner(self) -> io::Result<W> {
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn pcap_writer_two_frames_produces_classic_pcap_layout() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let frame_a = [0xffu8; 42];
        let frame_b: Vec<u8> = (0..1514u32).map(|i| i as u8).collect();

        w.write_frame(t, &frame_a).unwrap();
        w.write_frame(t + Duration::from_micros(5), &frame_b)
            .unwrap();
        assert_eq!(w.frames(), 2);
        let bytes = w.into_inner().unwrap();

        assert_eq!(
            bytes.len(),
            GLOBAL_HEADER_LEN + 2 * RECORD_HEADER_LEN + 42 + 1514
        );
        assert_eq!(&bytes[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]); // little-endian host
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 2);
        assert_eq!(u16::from_ne_bytes([bytes[6], bytes[7]]), 4);
        assert_eq!(u32_at(&bytes, 16), SNAPLEN);
        assert_eq!(u32_at(&bytes, 20), 1);
        let r1 = GLOBAL_HEADER_LEN;
        assert_eq!(u32_at(&bytes, r1), 1_700_000_000);
        assert_eq!(u32_at(&bytes, r1 + 4), 123_456);
        assert_eq!(u32_at(&bytes, r1 + 8), 42);
        assert_eq!(u32_at(&bytes, r1 + 12), 42);
        assert_eq!(&bytes[r1 + 16..r1 + 16 + 42], &frame_a);
        let r2 = r1 + RECORD_HEADER_LEN + 42;
        assert_eq!(u32_at(&bytes, r2 + 4), 123_461);
        assert_eq!(u32_at(&bytes, r2 + 8), 1514);
        assert_eq!(&bytes[r2 + 16..], &frame_b[..]);
    }

    #[test]
    fn pcap_writer_flush_clears_dirty() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.flush().unwrap();
        assert!(!w.is_dirty());
        w.write_frame(SystemTime::now(), &[0u8; 14]).unwrap();
        assert!(w.is_dirty());
    }
}
