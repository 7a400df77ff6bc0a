//! A small streaming tar reader: yields one member at a time from any [`Read`], owning its
//! source (the `tar` crate's entries borrow their archive, which an iterator over many shards
//! cannot hold).
//!
//! It understands what Python's `tarfile` (webdataset, img2dataset) and GNU tar write: ustar
//! and GNU headers, POSIX `prefix`, GNU long names (`L`), pax `path` records (`x`), base-256
//! sizes. Every call consumes at least one 512-byte block or ends the stream, so a corrupt
//! archive cannot loop; data is read only as far as the source goes, so a corrupt size cannot
//! allocate more than the source holds.

use std::io::{self, Read};

const BLOCK: usize = 512;
/// Largest GNU long-name or pax header accepted; real ones are a few hundred bytes.
const MAX_META: u64 = 1 << 20;

/// One tar member.
#[derive(Debug)]
pub(super) struct Member {
    /// The member's path as stored (not UTF-8 bytes replaced).
    pub(super) path: String,
    /// Whether this is a regular file; other members carry no data here.
    pub(super) regular: bool,
    pub(super) data: Vec<u8>,
}

/// Why an archive could not be read further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TarError {
    /// The member whose data was being read, when its header was intact.
    pub(super) path: Option<String>,
    pub(super) detail: String,
}

impl From<String> for TarError {
    fn from(detail: String) -> Self {
        TarError { path: None, detail }
    }
}

impl From<&str> for TarError {
    fn from(detail: &str) -> Self {
        TarError {
            path: None,
            detail: detail.to_owned(),
        }
    }
}

/// Streams the members of one archive.
#[derive(Debug)]
pub(super) struct TarStream<R> {
    source: R,
    finished: bool,
}

impl<R: Read> TarStream<R> {
    pub(super) fn new(source: R) -> Self {
        TarStream {
            source,
            finished: false,
        }
    }

    /// The next member; `None` after the end-of-archive block or after an error. An archive
    /// that ends without an end-of-archive block (a truncated file) is an error.
    pub(super) fn next_member(&mut self) -> Option<Result<Member, TarError>> {
        if self.finished {
            return None;
        }
        let result = self.read_member();
        match result {
            Ok(Some(member)) => Some(Ok(member)),
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
    }

    fn read_member(&mut self) -> Result<Option<Member>, TarError> {
        let mut long_name: Option<String> = None;
        let mut pax_path: Option<String> = None;
        loop {
            let mut header = [0u8; BLOCK];
            let got = read_full(&mut self.source, &mut header)?;
            if got == 0 {
                return Err("archive ends without an end-of-archive block".into());
            }
            if got < BLOCK {
                return Err(TarError::from(format!(
                    "archive ends inside a header ({got} of {BLOCK} bytes)"
                )));
            }
            if header.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            check_checksum(&header)?;
            let size = parse_number(&header[124..136]).ok_or("header has an invalid size")?;
            let kind = header[156];
            match kind {
                b'L' | b'x' => {
                    if size > MAX_META {
                        return Err(TarError::from(format!(
                            "extended header of {size} bytes is too large"
                        )));
                    }
                    let data = self.read_data(size)?;
                    if kind == b'L' {
                        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                        long_name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
                    } else if let Some(path) = pax_record(&data, "path") {
                        pax_path = Some(path);
                    }
                }
                b'0' | 0 | b'7' => {
                    let path = pax_path
                        .or(long_name)
                        .unwrap_or_else(|| header_path(&header));
                    let data = match self.read_data(size) {
                        Ok(data) => data,
                        Err(detail) => {
                            return Err(TarError {
                                path: Some(path),
                                detail,
                            })
                        }
                    };
                    return Ok(Some(Member {
                        path,
                        regular: true,
                        data,
                    }));
                }
                // Links, devices, directories and FIFOs carry no data (as in Python's tarfile).
                b'1'..=b'6' => {
                    let path = pax_path
                        .or(long_name)
                        .unwrap_or_else(|| header_path(&header));
                    return Ok(Some(Member {
                        path,
                        regular: false,
                        data: Vec::new(),
                    }));
                }
                // Global pax headers, GNU long link names and unknown types: skip their data.
                _ => {
                    self.skip_data(size)?;
                    if kind != b'g' && kind != b'K' {
                        let path = pax_path
                            .or(long_name)
                            .unwrap_or_else(|| header_path(&header));
                        return Ok(Some(Member {
                            path,
                            regular: false,
                            data: Vec::new(),
                        }));
                    }
                }
            }
        }
    }

    /// Reads `size` bytes of member data and the padding up to the next block.
    fn read_data(&mut self, size: u64) -> Result<Vec<u8>, String> {
        let mut data = Vec::with_capacity(size.min(1 << 20) as usize);
        let got = (&mut self.source)
            .take(size)
            .read_to_end(&mut data)
            .map_err(|e| format!("read failed inside a member: {e}"))?;
        if (got as u64) < size {
            return Err(format!(
                "archive ends inside a member ({got} of {size} bytes)"
            ));
        }
        self.skip_padding(size)?;
        Ok(data)
    }

    fn skip_data(&mut self, size: u64) -> Result<(), String> {
        let got = io::copy(&mut (&mut self.source).take(size), &mut io::sink())
            .map_err(|e| format!("read failed inside a member: {e}"))?;
        if got < size {
            return Err(format!(
                "archive ends inside a member ({got} of {size} bytes)"
            ));
        }
        self.skip_padding(size)
    }

    fn skip_padding(&mut self, size: u64) -> Result<(), String> {
        let padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        let mut buf = [0u8; BLOCK];
        let got = read_full(&mut self.source, &mut buf[..padding as usize])?;
        if (got as u64) < padding {
            return Err("archive ends inside member padding".into());
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the source ends; returns how much was read.
fn read_full(source: &mut impl Read, buf: &mut [u8]) -> Result<usize, String> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
    Ok(filled)
}

/// The member path from the header's `name` and, for POSIX ustar, `prefix` fields.
fn header_path(header: &[u8; BLOCK]) -> String {
    let name = c_str(&header[0..100]);
    let posix = &header[257..263] == b"ustar\0";
    let prefix = if posix { c_str(&header[345..500]) } else { &[] };
    let mut path = Vec::with_capacity(prefix.len() + 1 + name.len());
    if !prefix.is_empty() {
        path.extend_from_slice(prefix);
        path.push(b'/');
    }
    path.extend_from_slice(name);
    String::from_utf8_lossy(&path).into_owned()
}

fn c_str(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Accepts the header when its stored checksum equals the unsigned or the signed byte sum.
fn check_checksum(header: &[u8; BLOCK]) -> Result<(), String> {
    let stored = parse_number(&header[148..156]).ok_or("header has an invalid checksum field")?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in header.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(format!(
            "header checksum mismatch (stored {stored}, computed {unsigned})"
        ))
    }
}

/// Parses an octal numeric field (space/NUL terminated) or a GNU base-256 one.
fn parse_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        if field[0] == 0xff {
            return None;
        }
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if digits.is_empty() {
        return Some(0);
    }
    let mut value: u64 = 0;
    for b in digits {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

/// The value of `key` in pax extended-header records (`"LEN key=value\n"`), if present and
/// well formed.
fn pax_record(mut data: &[u8], key: &str) -> Option<String> {
    let mut found = None;
    while !data.is_empty() {
        let space = data.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..space]).ok()?.parse().ok()?;
        if len <= space || len > data.len() {
            return found;
        }
        let record = &data[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            if &record[..eq] == key.as_bytes() {
                found = Some(String::from_utf8_lossy(&record[eq + 1..]).into_owned());
            }
        }
        data = &data[len..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member as (path, regular, data).
    type Parsed = (String, bool, Vec<u8>);

    fn members(bytes: &[u8]) -> Vec<Result<Parsed, TarError>> {
        let mut stream = TarStream::new(bytes);
        std::iter::from_fn(|| stream.next_member())
            .map(|r| r.map(|m| (m.path, m.regular, m.data)))
            .collect()
    }

    #[test]
    fn readers_tar_stream_reads_what_the_tar_crate_writes() {
        let long = format!("{}/x.txt", "d".repeat(150));
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(3);
        builder
            .append_data(&mut header, "a.txt", &b"abc"[..])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(600);
        builder
            .append_data(&mut header, &long, &[7u8; 600][..])
            .unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        builder.append_data(&mut header, "dir/", &[][..]).unwrap();
        let bytes = builder.into_inner().unwrap();
        let got = members(&bytes);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], Ok(("a.txt".into(), true, b"abc".to_vec())));
        assert_eq!(got[1], Ok((long, true, vec![7u8; 600])));
        assert_eq!(got[2], Ok(("dir/".into(), false, vec![])));
    }

    #[test]
    fn readers_tar_stream_reports_truncation_and_corruption() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(700);
        builder
            .append_data(&mut header, "a.bin", &[1u8; 700][..])
            .unwrap();
        let bytes = builder.into_inner().unwrap();
        for cut in [0, 100, 512, 800, 1024, 1536] {
            let got = members(&bytes[..cut]);
            assert!(got.last().unwrap().is_err(), "cut {cut}: {got:?}");
        }
        let mut corrupt = bytes.clone();
        corrupt[10] ^= 0x55;
        assert!(members(&corrupt)[0].is_err());
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(
            parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            Some(256)
        );
        assert_eq!(parse_number(b"12a"), None);
        assert_eq!(
            pax_record(b"16 path=a/b.txt\n", "path"),
            Some("a/b.txt".into())
        );
    }
}
