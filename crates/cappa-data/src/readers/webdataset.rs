//! webdataset / img2dataset tar shards: each sample is a run of consecutive members that share
//! a key (`KEY.jpg`, `KEY.txt`, `KEY.json`).
//!
//! Grouping follows webdataset: the key is the member path up to the first `.` of its
//! basename (the directory is kept) and the extension is the rest, lower-cased, so
//! `d/a.seg.png` is key `d/a`, extension `seg.png`. Non-regular members (directories, links),
//! basenames of the form `__*__` (`__index__`) and basenames without a key (no `.`, or a
//! leading `.`) are skipped silently.
//!
//! Each sample is checked in this order: a repeated extension
//! ([`SkipReason::RepeatedExtension`]); the image, the first present of `jpg`, `jpeg`, `png`,
//! `webp` ([`SkipReason::MissingImage`], [`SkipReason::EmptyImage`]); then the text members
//! that [`TextMembers`] selects:
//! - [`TextMembers::Caption`] (the default): one caption, from `txt`
//!   ([`SkipReason::NonUtf8Caption`], [`SkipReason::EmptyCaption`]) or else the `json`
//!   member's `"caption"` string ([`SkipReason::MissingCaption`]), trimmed.
//! - [`TextMembers::CaptionLines`]: the same text split into lines, each trimmed non-empty
//!   line a caption (CLIP_benchmark's retrieval shards); no such line is
//!   [`SkipReason::EmptyCaption`].
//! - [`TextMembers::Label`]: no caption; the `cls` member, an integer as text
//!   (CLIP_benchmark's classification shards), becomes `meta["label"]`
//!   ([`SkipReason::MissingLabel`], [`SkipReason::BadLabel`]).
//!
//! The parsed `json` member becomes the metadata (`null` when absent or not valid JSON; with
//! [`TextMembers::Label`] an object holding `"label"`, the json member's fields too when it is
//! an object).
//!
//! A shard that cannot be opened yields one [`SkipReason::UnreadableFile`]; a shard that is
//! truncated or corrupt yields the samples completed before the damage, then one
//! [`SkipReason::TruncatedArchive`], and reading continues with the next shard. A sample is
//! known to be complete when the damage is inside the data of a member with another key; when
//! it is in a header, the sample read last may be incomplete and is dropped uncounted.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;

use super::tar_stream::TarStream;
use super::{expand_paths, ReadStats};
use crate::error::DataError;
use crate::{BadSample, ImageData, Sample, SkipReason};

/// Image extensions in order of preference.
const IMAGE_EXTS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Which members of a sample hold its text, and what the text is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TextMembers {
    /// One caption: `txt`, or else the json member's `"caption"`.
    #[default]
    Caption,
    /// Every non-empty line of `txt` (or of the json `"caption"`) is a caption.
    CaptionLines,
    /// An integer label in `cls`, put into `meta["label"]`; no caption.
    Label,
}

/// The members of one sample as read.
#[derive(Debug)]
struct Group {
    key: String,
    members: Vec<(String, Vec<u8>)>,
    repeated: Option<String>,
}

impl Group {
    fn new(key: String) -> Self {
        Group {
            key,
            members: Vec::new(),
            repeated: None,
        }
    }

    fn add(&mut self, ext: String, data: Vec<u8>) {
        if self.members.iter().any(|(e, _)| *e == ext) {
            self.repeated.get_or_insert(ext);
        } else {
            self.members.push((ext, data));
        }
    }

    fn get(&self, ext: &str) -> Option<&[u8]> {
        self.members
            .iter()
            .find(|(e, _)| e == ext)
            .map(|(_, d)| d.as_slice())
    }

    /// Turns the members into a sample, or says why not.
    fn finish(mut self, shard: &str, mode: TextMembers) -> Result<Sample, BadSample> {
        let bad = |reason, detail: &str| BadSample {
            reason,
            location: format!("{shard}:{}", self.key),
            detail: detail.to_owned(),
        };
        if let Some(ext) = &self.repeated {
            return Err(bad(
                SkipReason::RepeatedExtension,
                &format!("`.{ext}` appears twice"),
            ));
        }
        let Some(image_ext) = IMAGE_EXTS.iter().find(|e| self.get(e).is_some()) else {
            return Err(bad(
                SkipReason::MissingImage,
                "no jpg, jpeg, png or webp member",
            ));
        };
        if self.get(image_ext).is_some_and(<[u8]>::is_empty) {
            return Err(bad(
                SkipReason::EmptyImage,
                &format!("`.{image_ext}` has zero bytes"),
            ));
        }
        let mut meta: serde_json::Value = self
            .get("json")
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .unwrap_or(serde_json::Value::Null);
        let captions = match mode {
            TextMembers::Caption | TextMembers::CaptionLines => {
                let raw = match self.get("txt") {
                    Some(bytes) => match std::str::from_utf8(bytes) {
                        Ok(text) => text,
                        Err(e) => {
                            return Err(bad(SkipReason::NonUtf8Caption, &format!("`.txt`: {e}")))
                        }
                    },
                    None => match meta.get("caption").and_then(serde_json::Value::as_str) {
                        Some(text) => text,
                        None => {
                            return Err(bad(
                                SkipReason::MissingCaption,
                                "no `.txt` or json \"caption\"",
                            ))
                        }
                    },
                };
                let captions: Vec<String> = if mode == TextMembers::Caption {
                    vec![raw.trim().to_owned()]
                } else {
                    raw.lines().map(str::trim).map(str::to_owned).collect()
                };
                let captions: Vec<String> =
                    captions.into_iter().filter(|c| !c.is_empty()).collect();
                if captions.is_empty() {
                    return Err(bad(
                        SkipReason::EmptyCaption,
                        "caption is empty or white space",
                    ));
                }
                captions
            }
            TextMembers::Label => {
                let Some(bytes) = self.get("cls") else {
                    return Err(bad(SkipReason::MissingLabel, "no `.cls` member"));
                };
                let label =
                    parse_label(bytes).map_err(|detail| bad(SkipReason::BadLabel, &detail))?;
                if !meta.is_object() {
                    meta = serde_json::Value::Object(serde_json::Map::new());
                }
                meta["label"] = label.into();
                Vec::new()
            }
        };
        let index = self
            .members
            .iter()
            .position(|(e, _)| e == image_ext)
            .unwrap_or(0);
        let image = self.members.swap_remove(index).1;
        Ok(Sample {
            key: self.key,
            image: ImageData::Encoded(image),
            captions,
            meta,
        })
    }
}

/// A `.cls` member's label: a non-negative integer as UTF-8 text, surrounding white space
/// ignored.
fn parse_label(bytes: &[u8]) -> Result<i64, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("`.cls` is not UTF-8: {e}"))?;
    let text = text.trim();
    match text.parse::<i64>() {
        Ok(label) if label >= 0 => Ok(label),
        Ok(_) => Err(format!("`.cls` holds the negative label {text}")),
        Err(_) => Err(format!(
            "`.cls` holds {text:?}, not a non-negative integer label"
        )),
    }
}

/// Splits a member path into key and lower-cased extension; `None` for members to skip
/// silently (`__*__` names, basenames without a key or extension).
fn split_key(path: &str) -> Option<(String, String)> {
    let slash = path.rfind('/').map_or(0, |i| i + 1);
    let base = &path[slash..];
    if base.len() >= 4 && base.starts_with("__") && base.ends_with("__") {
        return None;
    }
    let dot = base.find('.')?;
    if dot == 0 {
        return None;
    }
    Some((
        path[..slash + dot].to_owned(),
        base[dot + 1..].to_lowercase(),
    ))
}

/// The samples of one shard, read from any byte source.
///
/// Ends after the end-of-archive block, or after the one [`SkipReason::TruncatedArchive`]
/// item of a damaged shard. It is `Send` when the source is.
#[derive(Debug)]
pub struct ShardSamples<R> {
    name: String,
    tar: TarStream<R>,
    pending: Option<Group>,
    /// The truncation report to yield after a complete pending sample.
    deferred: Option<BadSample>,
    done: bool,
    text: TextMembers,
    stats: ReadStats,
}

impl<R: Read> ShardSamples<R> {
    /// Reads the shard `name` (used in skip locations) from `source`, with
    /// [`TextMembers::Caption`].
    pub fn new(name: impl Into<String>, source: R) -> Self {
        ShardSamples {
            name: name.into(),
            tar: TarStream::new(source),
            pending: None,
            deferred: None,
            done: false,
            text: TextMembers::default(),
            stats: ReadStats::default(),
        }
    }

    /// Reads the samples' text from the members `text` selects.
    pub fn with_text(mut self, text: TextMembers) -> Self {
        self.text = text;
        self
    }

    /// Counts of what was yielded so far.
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    fn next_item(&mut self) -> Option<Result<Sample, BadSample>> {
        if let Some(bad) = self.deferred.take() {
            return Some(Err(bad));
        }
        if self.done {
            return None;
        }
        loop {
            match self.tar.next_member() {
                None => {
                    self.done = true;
                    return self.pending.take().map(|g| g.finish(&self.name, self.text));
                }
                Some(Err(error)) => {
                    self.done = true;
                    let truncated = BadSample {
                        reason: SkipReason::TruncatedArchive,
                        location: self.name.clone(),
                        detail: error.problem.to_string(),
                    };
                    // The pending sample is complete only when the damaged member is known to
                    // start another sample; otherwise it is dropped uncounted.
                    let next_key = error.path.as_deref().and_then(split_key).map(|(k, _)| k);
                    let pending = self.pending.take();
                    if let (Some(group), Some(key)) = (pending, next_key) {
                        if group.key != key {
                            self.deferred = Some(truncated);
                            return Some(group.finish(&self.name, self.text));
                        }
                    }
                    return Some(Err(truncated));
                }
                Some(Ok(member)) => {
                    if !member.regular {
                        continue;
                    }
                    let Some((key, ext)) = split_key(&member.path) else {
                        continue;
                    };
                    match &mut self.pending {
                        Some(group) if group.key == key => group.add(ext, member.data),
                        _ => {
                            let mut group = Group::new(key);
                            group.add(ext, member.data);
                            if let Some(previous) = self.pending.replace(group) {
                                return Some(previous.finish(&self.name, self.text));
                            }
                        }
                    }
                }
            }
        }
    }
}

impl<R: Read> Iterator for ShardSamples<R> {
    type Item = Result<Sample, BadSample>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.next_item()?;
        self.stats.record(&item);
        Some(item)
    }
}

/// The samples of many shard files, read one shard after another, lazily.
///
/// It is `Send`; split the shard list between workers to read in parallel and merge their
/// [`ReadStats`].
#[derive(Debug)]
pub struct WebDataset {
    shards: std::vec::IntoIter<PathBuf>,
    current: Option<ShardSamples<BufReader<File>>>,
    text: TextMembers,
    stats: ReadStats,
}

impl WebDataset {
    /// Reads `shards` in the given order, with [`TextMembers::Caption`].
    pub fn new(shards: Vec<PathBuf>) -> Self {
        WebDataset {
            shards: shards.into_iter(),
            current: None,
            text: TextMembers::default(),
            stats: ReadStats::default(),
        }
    }

    /// Reads the samples' text from the members `text` selects.
    pub fn with_text(mut self, text: TextMembers) -> Self {
        self.text = text;
        self
    }

    /// Expands `patterns` with [`expand_paths`] and reads the shards found.
    pub fn from_patterns(patterns: &[impl AsRef<str>]) -> Result<Self, DataError> {
        Ok(WebDataset::new(expand_paths(patterns)?))
    }

    /// Counts of what was yielded so far, over all shards.
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    fn next_item(&mut self) -> Option<Result<Sample, BadSample>> {
        loop {
            if let Some(item) = self.current.as_mut().and_then(Iterator::next) {
                return Some(item);
            }
            let path = self.shards.next()?;
            let opened = File::open(&path).and_then(|file| {
                if file.metadata()?.is_dir() {
                    Err(std::io::Error::other("is a directory, not a tar shard"))
                } else {
                    Ok(file)
                }
            });
            match opened {
                Ok(file) => {
                    let name = path.display().to_string();
                    self.current =
                        Some(ShardSamples::new(name, BufReader::new(file)).with_text(self.text));
                }
                Err(e) => {
                    self.current = None;
                    return Some(Err(BadSample {
                        reason: SkipReason::UnreadableFile,
                        location: path.display().to_string(),
                        detail: e.to_string(),
                    }));
                }
            }
        }
    }
}

impl Iterator for WebDataset {
    type Item = Result<Sample, BadSample>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.next_item()?;
        self.stats.record(&item);
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{png_bytes, tar_bytes, write, Entry};
    use super::*;
    use proptest::prelude::*;

    fn read(bytes: &[u8]) -> (Vec<Sample>, Vec<BadSample>) {
        let (good, bad): (Vec<_>, Vec<_>) =
            ShardSamples::new("s.tar", bytes).partition(Result::is_ok);
        (
            good.into_iter().map(Result::unwrap).collect(),
            bad.into_iter().map(Result::unwrap_err).collect(),
        )
    }

    fn keys(samples: &[Sample]) -> Vec<&str> {
        samples.iter().map(|s| s.key.as_str()).collect()
    }

    #[test]
    fn readers_split_key_follows_webdataset() {
        let check = |path: &str, want: Option<(&str, &str)>| {
            let got = split_key(path);
            assert_eq!(
                got.as_ref().map(|(k, e)| (k.as_str(), e.as_str())),
                want,
                "{path}"
            );
        };
        check("a.seg.png", Some(("a", "seg.png")));
        check("IMG.JPG", Some(("IMG", "jpg")));
        check("d.x/e/k.Txt", Some(("d.x/e/k", "txt")));
        check("__index__", None);
        check("d/__key__", None);
        check("noext", None);
        check("d/.hidden", None);
    }

    #[test]
    fn readers_webdataset_grouping_rules() {
        let png = png_bytes();
        let json = br#"{"caption": "from json", "url": "http://x"}"#;
        let bytes = tar_bytes(&[
            Entry::Dir("d/"),
            Entry::File("__index__", b"ignored"),
            Entry::File("d/000.JPG", &png),
            Entry::File("d/000.TXT", b" upper case \n"),
            Entry::File("d/000.seg.png", b"segmentation, not the image"),
            Entry::File("d/__meta__", b"ignored"),
            Entry::File("d/001.png", &png),
            Entry::File("d/001.json", json),
            Entry::File("e/001.jpg", &png),
            Entry::File("e/001.txt", b"same basename, other directory"),
            Entry::File("002.webp", b"webp bytes"),
            Entry::File("002.json", b"{not json"),
            Entry::File("002.txt", b"caption wins over json"),
        ]);
        let (good, bad) = read(&bytes);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(keys(&good), ["d/000", "d/001", "e/001", "002"]);
        assert_eq!(good[0].captions, ["upper case"]);
        assert_eq!(good[0].image, ImageData::Encoded(png.clone()));
        assert_eq!(good[0].meta, serde_json::Value::Null);
        assert_eq!(good[1].captions, ["from json"]);
        assert_eq!(good[1].meta["url"], "http://x");
        assert_eq!(good[2].captions, ["same basename, other directory"]);
        assert_eq!(good[3].image, ImageData::Encoded(b"webp bytes".to_vec()));
        assert_eq!(good[3].meta, serde_json::Value::Null);
        // jpg is preferred over png when both are present.
        let bytes = tar_bytes(&[
            Entry::File("k.png", b"png"),
            Entry::File("k.jpg", b"jpg"),
            Entry::File("k.txt", b"c"),
        ]);
        assert_eq!(read(&bytes).0[0].image, ImageData::Encoded(b"jpg".to_vec()));
    }

    #[test]
    fn readers_webdataset_caption_lines_split_txt_into_captions() {
        let png = png_bytes();
        let bytes = tar_bytes(&[
            Entry::File("a.png", &png),
            Entry::File("a.txt", b" first \r\n\n  second\n\t\nthird"),
            Entry::File("b.png", &png),
            Entry::File("b.json", br#"{"caption": "one\ntwo"}"#),
            Entry::File("c.png", &png),
            Entry::File("c.txt", b" \n\r\n\t"),
            Entry::File("d.png", &png),
            Entry::File("d.json", b"{}"),
        ]);
        let lines = |text| {
            let items: Vec<_> = ShardSamples::new("s.tar", bytes.as_slice())
                .with_text(text)
                .collect();
            items
        };
        let items = lines(TextMembers::CaptionLines);
        assert_eq!(
            items[0].as_ref().unwrap().captions,
            ["first", "second", "third"]
        );
        assert_eq!(items[1].as_ref().unwrap().captions, ["one", "two"]);
        assert_eq!(
            items[2].as_ref().unwrap_err().reason,
            SkipReason::EmptyCaption
        );
        assert_eq!(
            items[3].as_ref().unwrap_err().reason,
            SkipReason::MissingCaption
        );
        // The default keeps the whole text as one trimmed caption.
        let items = lines(TextMembers::Caption);
        assert_eq!(
            items[0].as_ref().unwrap().captions,
            [" first \r\n\n  second\n\t\nthird".trim()]
        );
        assert_eq!(items[1].as_ref().unwrap().captions, ["one\ntwo"]);
        assert_eq!(
            items[2].as_ref().unwrap_err().reason,
            SkipReason::EmptyCaption
        );
    }

    #[test]
    fn readers_webdataset_labels_come_from_cls_members() {
        let png = png_bytes();
        let bytes = tar_bytes(&[
            Entry::File("a.png", &png),
            Entry::File("a.cls", b" 3\n"),
            Entry::File("a.json", br#"{"url": "http://x", "label": "old"}"#),
            Entry::File("b.png", &png),
            Entry::File("b.cls", b"0"),
            Entry::File("b.txt", b"a caption is ignored"),
            Entry::File("c.png", &png),
            Entry::File("c.cls", b"12"),
            Entry::File("c.json", b"[1, 2]"),
            Entry::File("nolabel.png", &png),
            Entry::File("nolabel.txt", b"no cls"),
            Entry::File("negative.png", &png),
            Entry::File("negative.cls", b"-1"),
            Entry::File("word.png", &png),
            Entry::File("word.cls", b"dog"),
            Entry::File("fraction.png", &png),
            Entry::File("fraction.cls", b"1.5"),
            Entry::File("blank.png", &png),
            Entry::File("blank.cls", b" "),
            Entry::File("latin.png", &png),
            Entry::File("latin.cls", b"\xe9"),
            Entry::File("noimage.cls", b"1"),
        ]);
        let mut reader = ShardSamples::new("s.tar", bytes.as_slice()).with_text(TextMembers::Label);
        let items: Vec<_> = reader.by_ref().collect();
        let good: Vec<&Sample> = items.iter().filter_map(|r| r.as_ref().ok()).collect();
        let good_keys: Vec<&str> = good.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(good_keys, ["a", "b", "c"]);
        assert_eq!(
            good[0].meta,
            serde_json::json!({"url": "http://x", "label": 3})
        );
        assert!(good[0].captions.is_empty());
        assert_eq!(good[0].image, ImageData::Encoded(png.clone()));
        assert_eq!(good[1].meta, serde_json::json!({"label": 0}));
        assert!(good[1].captions.is_empty());
        assert_eq!(good[2].meta, serde_json::json!({"label": 12}));
        let reasons: Vec<(&str, SkipReason)> = items
            .iter()
            .filter_map(|r| r.as_ref().err())
            .map(|b| (b.location.rsplit(':').next().unwrap(), b.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("nolabel", SkipReason::MissingLabel),
                ("negative", SkipReason::BadLabel),
                ("word", SkipReason::BadLabel),
                ("fraction", SkipReason::BadLabel),
                ("blank", SkipReason::BadLabel),
                ("latin", SkipReason::BadLabel),
                ("noimage", SkipReason::MissingImage),
            ]
        );
        let stats = reader.stats();
        assert_eq!(stats.skips.get(SkipReason::BadLabel), 5);
        assert_eq!(stats.skips.get(SkipReason::MissingLabel), 1);
        assert_eq!(stats.good(), 3);
        let negative = items[4].as_ref().unwrap_err();
        assert!(negative.detail.contains("-1"), "{negative}");

        // The same through WebDataset, which passes the mode on to every shard.
        let dir = tempfile::tempdir().unwrap();
        let shards = vec![
            write(dir.path(), "0.tar", &bytes),
            write(dir.path(), "1.tar", &bytes),
        ];
        let good = WebDataset::new(shards)
            .with_text(TextMembers::Label)
            .filter(Result::is_ok)
            .count();
        assert_eq!(good, 6);
    }

    /// A good sample `k`: an image and a caption.
    fn good_sample<'a>(k: &str, png: &'a [u8]) -> [Entry<'a>; 2] {
        [
            Entry::File(format!("{k}.jpg").leak(), png),
            Entry::File(format!("{k}.txt").leak(), b"ok"),
        ]
    }

    /// Two good samples around one of every per-sample problem.
    fn shard_with_every_sample_problem(png: &[u8]) -> Vec<u8> {
        let mut entries: Vec<Entry<'_>> = Vec::new();
        entries.extend(good_sample("g0", png));
        entries.extend([Entry::File("zero.jpg", b""), Entry::File("zero.txt", b"c")]);
        entries.extend([
            Entry::File("nocap.jpg", png),
            Entry::File("nocap.json", b"{\"url\": 1}"),
        ]);
        entries.extend([
            Entry::File("blank.jpg", png),
            Entry::File("blank.txt", b" \n\t"),
        ]);
        entries.extend([
            Entry::File("blankjson.jpg", png),
            Entry::File("blankjson.json", b"{\"caption\": \"\"}"),
        ]);
        entries.extend([
            Entry::File("latin.jpg", png),
            Entry::File("latin.txt", b"caf\xe9"),
        ]);
        entries.extend([
            Entry::File("twice.jpg", png),
            Entry::File("twice.txt", b"a"),
            Entry::File("twice.TXT", b"b"),
        ]);
        entries.extend([
            Entry::File("noimg.txt", b"c"),
            Entry::File("noimg.json", b"{}"),
        ]);
        entries.extend(good_sample("g1", png));
        tar_bytes(&entries)
    }

    /// Broken copies of `whole`, a shard of three good samples of `sample` bytes each: cut at
    /// several offsets, and with a corrupt header byte; each with the good samples it still
    /// yields.
    fn broken_copies(whole: &[u8], sample: usize) -> Vec<(Vec<u8>, usize)> {
        let cuts = [
            (0, 0),                // empty file
            (300, 0),              // inside the first header
            (512 + 10, 0),         // inside the first image
            (sample, 0),           // exactly after the first sample: it may be incomplete
            (sample + 512 + 5, 1), // inside the second sample's image
            (3 * sample, 2),       // before the end-of-archive blocks
        ];
        let mut copies: Vec<(Vec<u8>, usize)> = cuts
            .iter()
            .map(|&(cut, good)| (whole[..cut].to_vec(), good))
            .collect();
        // A checksum mismatch after one sample, which is dropped as it may be incomplete.
        let mut corrupt = whole.to_vec();
        corrupt[sample + 3] ^= 0x20;
        copies.push((corrupt, 0));
        copies
    }

    /// Every way a sample or shard can be broken, read end to end with exact counts.
    #[test]
    fn readers_broken_shard_corpus_has_exact_skip_counts() {
        let dir = tempfile::tempdir().unwrap();
        let png = png_bytes();
        let mut shards = vec![write(
            dir.path(),
            "00000.tar",
            &shard_with_every_sample_problem(&png),
        )];
        let mut expected_good = 2;
        let three: Vec<Entry<'_>> = ["t0", "t1", "t2"]
            .iter()
            .flat_map(|k| good_sample(k, &png))
            .collect();
        let whole = tar_bytes(&three);
        // A sample is a png member (header and padded data) and a txt member (two blocks).
        let sample = 512 + png.len().div_ceil(512) * 512 + 1024;
        for (i, (bytes, good)) in broken_copies(&whole, sample).iter().enumerate() {
            shards.push(write(dir.path(), &format!("broken{i}.tar"), bytes));
            expected_good += good;
        }
        // An unreadable (missing) shard and a directory, then a whole good shard.
        shards.push(dir.path().join("missing.tar"));
        shards.push(dir.path().to_path_buf());
        shards.push(write(dir.path(), "good.tar", &whole));
        expected_good += 3;

        let mut reader = WebDataset::new(shards);
        let items: Vec<_> = reader.by_ref().collect();
        let good: Vec<Sample> = items.iter().filter_map(|r| r.clone().ok()).collect();
        assert_eq!(good.len(), expected_good, "{:?}", keys(&good));
        let stats = reader.stats();
        let expected = [
            (SkipReason::EmptyImage, 1),
            (SkipReason::MissingCaption, 1),
            (SkipReason::EmptyCaption, 2),
            (SkipReason::NonUtf8Caption, 1),
            (SkipReason::RepeatedExtension, 1),
            (SkipReason::MissingImage, 1),
            (SkipReason::TruncatedArchive, 7),
            (SkipReason::UnreadableFile, 2),
        ];
        for (reason, count) in expected {
            assert_eq!(stats.skips.get(reason), count, "{reason}: {}", stats.skips);
        }
        assert_eq!(stats.skips.total(), 16);
        assert_eq!(stats.seen, items.len() as u64);
        assert_eq!(stats.good(), expected_good as u64);
        assert!(
            items
                .iter()
                .filter_map(|r| r.as_ref().err())
                .any(|b| b.location.ends_with("00000.tar:twice")),
            "the bad sample's location names shard and key"
        );
        assert!(stats.check_bad_fraction(0.9).is_ok());
        let err = stats.check_bad_fraction(0.1).unwrap_err();
        assert!(
            matches!(err, DataError::TooManyBad { bad: 16, .. }),
            "{err}"
        );
    }

    #[test]
    fn readers_readers_are_send() {
        fn is_send<T: Send>() {}
        is_send::<WebDataset>();
        is_send::<ShardSamples<std::io::Cursor<Vec<u8>>>>();
        is_send::<super::super::FileSamples>();
    }

    fn valid_shard() -> Vec<u8> {
        tar_bytes(&[
            Entry::File("a.jpg", b"\xff\xd8jpeg"),
            Entry::File("a.txt", b"first"),
            Entry::File("a.json", br#"{"caption": "x"}"#),
            Entry::File("b.png", b"png"),
            Entry::File("b.json", br#"{"caption": "second"}"#),
            Entry::Dir("c/"),
            Entry::File("c/d.webp", b"webp"),
            Entry::File("c/d.txt", b"third"),
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Flipped bytes and truncation never panic, and reading ends with at most one item
        /// per 512-byte block plus the final truncation report.
        #[test]
        fn readers_mutated_shards_terminate_without_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut bytes = valid_shard();
            for (index, mask) in flips {
                let i = index.index(bytes.len());
                bytes[i] ^= mask;
            }
            if truncate {
                let len = cut.index(bytes.len() + 1);
                bytes.truncate(len);
            }
            let bound = bytes.len() / 512 + 2;
            let mut reader = ShardSamples::new("p.tar", bytes.as_slice());
            let mut count = 0;
            for _ in reader.by_ref() {
                count += 1;
                prop_assert!(count <= bound);
            }
            prop_assert_eq!(reader.stats().seen, count as u64);
            prop_assert!(reader.next().is_none());
        }
    }
}
