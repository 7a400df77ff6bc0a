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
#[derive(Debug, thiserror::Error)]
#[error("{problem}")]
pub(super) struct TarError {
    /// The member whose data was being read, when its header was intact.
    pub(super) path: Option<String>,
    pub(super) problem: TarProblem,
}

/// What is wrong with an archive.
#[derive(Debug, thiserror::Error)]
pub(super) enum TarProblem {
    #[error("archive ends without an end-of-archive block")]
    NoEndBlock,
    #[error("archive ends inside a header ({got} of {BLOCK} bytes)")]
    TruncatedHeader { got: usize },
    #[error("archive ends inside a member ({got} of {size} bytes)")]
    TruncatedData { got: u64, size: u64 },
    #[error("archive ends inside member padding")]
    TruncatedPadding,
    #[error("header has an invalid size")]
    InvalidSize,
    #[error("header has an invalid checksum field")]
    InvalidChecksumField,
    #[error("header checksum mismatch (stored {stored}, computed {computed})")]
    ChecksumMismatch { stored: u64, computed: u64 },
    #[error("extended header of {size} bytes is too large")]
    ExtendedHeaderTooLarge { size: u64 },
    /// The source failed while a header or padding was read.
    #[error("read failed: {source}")]
    Read { source: io::Error },
    /// The source failed while a member's data was read.
    #[error("read failed inside a member: {source}")]
    ReadInsideMember { source: io::Error },
}

impl From<TarProblem> for TarError {
    fn from(problem: TarProblem) -> Self {
        TarError {
            path: None,
            problem,
        }
    }
}

impl Member {
    /// A link, directory, device or other member that carries no data here.
    fn without_data(path: String) -> Self {
        Member {
            path,
            regular: false,
            data: Vec::new(),
        }
    }
}

/// The names that extended headers give the member after them.
#[derive(Default)]
struct ExtendedNames {
    /// From a GNU long-name header (`L`).
    long_name: Option<String>,
    /// From a pax header's `path` record (`x`).
    pax_path: Option<String>,
}

impl ExtendedNames {
    /// Takes in the data of an `L` or `x` header.
    fn add(&mut self, kind: u8, data: &[u8]) {
        if kind == b'L' {
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            self.long_name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
        } else if let Some(path) = pax_record(data, "path") {
            self.pax_path = Some(path);
        }
    }

    /// The member's path: the pax path, else the long name, else the header's own.
    fn into_path(self, header: &[u8; BLOCK]) -> String {
        self.pax_path
            .or(self.long_name)
            .unwrap_or_else(|| header_path(header))
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
        let mut names = ExtendedNames::default();
        loop {
            let Some(header) = self.read_header()? else {
                return Ok(None);
            };
            let size = parse_number(&header[124..136]).ok_or(TarProblem::InvalidSize)?;
            let kind = header[156];
            match kind {
                b'L' | b'x' => {
                    if size > MAX_META {
                        return Err(TarProblem::ExtendedHeaderTooLarge { size }.into());
                    }
                    names.add(kind, &self.read_data(size)?);
                }
                b'0' | 0 | b'7' => {
                    let path = names.into_path(&header);
                    return match self.read_data(size) {
                        Ok(data) => Ok(Some(Member {
                            path,
                            regular: true,
                            data,
                        })),
                        Err(problem) => Err(TarError {
                            path: Some(path),
                            problem,
                        }),
                    };
                }
                // Links, devices, directories and FIFOs carry no data (as in Python's tarfile).
                b'1'..=b'6' => return Ok(Some(Member::without_data(names.into_path(&header)))),
                // Global pax headers, GNU long link names and unknown types: skip their data.
                _ => {
                    self.skip_data(size)?;
                    if kind != b'g' && kind != b'K' {
                        return Ok(Some(Member::without_data(names.into_path(&header))));
                    }
                }
            }
        }
    }

    /// The next header block with a valid checksum; `None` at the end-of-archive block.
    fn read_header(&mut self) -> Result<Option<[u8; BLOCK]>, TarProblem> {
        let mut header = [0u8; BLOCK];
        let got = read_full(&mut self.source, &mut header)?;
        if got == 0 {
            return Err(TarProblem::NoEndBlock);
        }
        if got < BLOCK {
            return Err(TarProblem::TruncatedHeader { got });
        }
        if header.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        check_checksum(&header)?;
        Ok(Some(header))
    }

    /// Reads `size` bytes of member data and the padding up to the next block.
    fn read_data(&mut self, size: u64) -> Result<Vec<u8>, TarProblem> {
        let mut data = Vec::with_capacity(size.min(1 << 20) as usize);
        let got = (&mut self.source)
            .take(size)
            .read_to_end(&mut data)
            .map_err(|source| TarProblem::ReadInsideMember { source })?;
        if (got as u64) < size {
            return Err(TarProblem::TruncatedData {
                got: got as u64,
                size,
            });
        }
        self.skip_padding(size)?;
        Ok(data)
    }

    fn skip_data(&mut self, size: u64) -> Result<(), TarProblem> {
        let got = io::copy(&mut (&mut self.source).take(size), &mut io::sink())
            .map_err(|source| TarProblem::ReadInsideMember { source })?;
        if got < size {
            return Err(TarProblem::TruncatedData { got, size });
        }
        self.skip_padding(size)
    }

    fn skip_padding(&mut self, size: u64) -> Result<(), TarProblem> {
        let padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        let mut buf = [0u8; BLOCK];
        let got = read_full(&mut self.source, &mut buf[..padding as usize])?;
        if (got as u64) < padding {
            return Err(TarProblem::TruncatedPadding);
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the source ends; returns how much was read.
fn read_full(source: &mut impl Read, buf: &mut [u8]) -> Result<usize, TarProblem> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(TarProblem::Read { source }),
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
fn check_checksum(header: &[u8; BLOCK]) -> Result<(), TarProblem> {
    let stored = parse_number(&header[148..156]).ok_or(TarProblem::InvalidChecksumField)?;
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
        Err(TarProblem::ChecksumMismatch {
            stored,
            computed: unsigned,
        })
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

    /// The members, with errors as their messages (an I/O error cannot be compared).
    fn parsed(bytes: &[u8]) -> Vec<Result<Parsed, String>> {
        members(bytes)
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
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
        let got = parsed(&bytes);
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
        // A member is a header block and two data blocks (700 bytes, padded to 1024).
        let last_error = |cut: usize| {
            let mut got = members(&bytes[..cut]);
            got.pop()
                .unwrap()
                .expect_err("a truncated archive ends with an error")
        };
        let check = |cut: usize, path: Option<&str>, message: &str| {
            let error = last_error(cut);
            assert_eq!(error.path.as_deref(), path, "cut {cut}");
            assert_eq!(error.to_string(), message, "cut {cut}");
        };
        check(0, None, "archive ends without an end-of-archive block");
        check(100, None, "archive ends inside a header (100 of 512 bytes)");
        check(
            512,
            Some("a.bin"),
            "archive ends inside a member (0 of 700 bytes)",
        );
        check(
            800,
            Some("a.bin"),
            "archive ends inside a member (288 of 700 bytes)",
        );
        check(1300, Some("a.bin"), "archive ends inside member padding");
        check(1536, None, "archive ends without an end-of-archive block");
        let mut corrupt = bytes.clone();
        corrupt[10] ^= 0x55;
        let error = members(&corrupt).remove(0).unwrap_err();
        assert!(
            matches!(error.problem, TarProblem::ChecksumMismatch { .. }),
            "{error}"
        );
        let mut no_checksum = bytes.clone();
        no_checksum[148..156].copy_from_slice(b"9999999\0");
        let error = members(&no_checksum).remove(0).unwrap_err();
        assert!(
            matches!(error.problem, TarProblem::InvalidChecksumField),
            "{error}"
        );
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
