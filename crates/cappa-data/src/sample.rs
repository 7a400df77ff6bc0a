//! The vocabulary every source, transform and the loader share: a [`Sample`] as read, the
//! reasons a sample is skipped, and their counts.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// An image as a source delivers it: still encoded (JPEG/PNG/WebP bytes from a file or a tar
/// member) or already as pixels (rendered by the scene world).
#[derive(Debug, Clone, PartialEq)]
pub enum ImageData {
    Encoded(Vec<u8>),
    Rgb(image::RgbImage),
}

/// One image with its captions, as read from any source.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Identifies the sample within its source (webdataset key, file path, image id).
    pub key: String,
    pub image: ImageData,
    /// One or more captions (training uses one; evaluation may use all references).
    pub captions: Vec<String>,
    /// Source-specific metadata (the webdataset `.json` member, COCO ids, labels, ...).
    pub meta: serde_json::Value,
}

/// Why a sample was skipped instead of used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A tar archive ended in the middle of a member or header.
    TruncatedArchive,
    /// The image bytes could not be decoded (garbage, unsupported format).
    UndecodableImage,
    /// A zero-byte image member or file.
    EmptyImage,
    /// The sample has no image member at all.
    MissingImage,
    /// The sample has no caption.
    MissingCaption,
    /// The caption is empty or only white space.
    EmptyCaption,
    /// The caption is not valid UTF-8.
    NonUtf8Caption,
    /// Width × height exceeds the configured pixel limit (decompression bombs).
    ImageTooLarge,
    /// A file could not be read.
    UnreadableFile,
    /// Two members of one webdataset sample share an extension.
    RepeatedExtension,
    /// A classification sample has no label (no `.cls` member).
    MissingLabel,
    /// A label is not a non-negative integer.
    BadLabel,
}

impl SkipReason {
    pub const ALL: [SkipReason; 12] = [
        SkipReason::TruncatedArchive,
        SkipReason::UndecodableImage,
        SkipReason::EmptyImage,
        SkipReason::MissingImage,
        SkipReason::MissingCaption,
        SkipReason::EmptyCaption,
        SkipReason::NonUtf8Caption,
        SkipReason::ImageTooLarge,
        SkipReason::UnreadableFile,
        SkipReason::RepeatedExtension,
        SkipReason::MissingLabel,
        SkipReason::BadLabel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::TruncatedArchive => "truncated_archive",
            SkipReason::UndecodableImage => "undecodable_image",
            SkipReason::EmptyImage => "empty_image",
            SkipReason::MissingImage => "missing_image",
            SkipReason::MissingCaption => "missing_caption",
            SkipReason::EmptyCaption => "empty_caption",
            SkipReason::NonUtf8Caption => "non_utf8_caption",
            SkipReason::ImageTooLarge => "image_too_large",
            SkipReason::UnreadableFile => "unreadable_file",
            SkipReason::RepeatedExtension => "repeated_extension",
            SkipReason::MissingLabel => "missing_label",
            SkipReason::BadLabel => "bad_label",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A skipped sample: why, and where (file, member or key), for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSample {
    pub reason: SkipReason,
    /// `shard.tar:key`, a file path, or an annotation id.
    pub location: String,
    pub detail: String,
}

impl fmt::Display for BadSample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.location, self.reason, self.detail)
    }
}

/// Skipped samples counted by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipCounts(pub BTreeMap<SkipReason, u64>);

impl SkipCounts {
    pub fn add(&mut self, reason: SkipReason) {
        *self.0.entry(reason).or_default() += 1;
    }

    pub fn get(&self, reason: SkipReason) -> u64 {
        self.0.get(&reason).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn merge(&mut self, other: &SkipCounts) {
        for (&reason, &count) in &other.0 {
            *self.0.entry(reason).or_default() += count;
        }
    }
}

impl fmt::Display for SkipCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.0.iter().map(|(r, n)| format!("{r} {n}")).collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_merge_and_print_by_reason() {
        let mut a = SkipCounts::default();
        a.add(SkipReason::EmptyCaption);
        a.add(SkipReason::EmptyCaption);
        let mut b = SkipCounts::default();
        b.add(SkipReason::TruncatedArchive);
        a.merge(&b);
        assert_eq!(a.get(SkipReason::EmptyCaption), 2);
        assert_eq!(a.total(), 3);
        assert_eq!(a.to_string(), "truncated_archive 1, empty_caption 2");
        assert_eq!(SkipCounts::default().to_string(), "none");
        for reason in SkipReason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
    }
}
