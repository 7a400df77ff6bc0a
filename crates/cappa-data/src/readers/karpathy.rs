//! Karpathy's caption splits (`dataset_coco.json`, `dataset_flickr30k.json`): `images[{filename,
//! filepath?, imgid, split, sentences[{raw, tokens}]}]` with split ∈ train|val|test|restval.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{read_json, FileRecord};
use crate::error::DataError;

/// A Karpathy split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KarpathySplit {
    Train,
    Val,
    Test,
    Restval,
}

impl KarpathySplit {
    /// The split's name as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            KarpathySplit::Train => "train",
            KarpathySplit::Val => "val",
            KarpathySplit::Test => "test",
            KarpathySplit::Restval => "restval",
        }
    }
}

/// What to do with the `restval` images (COCO's validation images outside the 5k val/test).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restval {
    /// `restval` images belong to `train` (the usual choice).
    AsTrain,
    /// `restval` is a split of its own.
    Separate,
}

#[derive(Deserialize)]
struct KarpathyFile {
    images: Vec<KarpathyImage>,
}

#[derive(Deserialize)]
struct KarpathyImage {
    filename: String,
    #[serde(default)]
    filepath: Option<String>,
    imgid: u64,
    split: String,
    sentences: Vec<Sentence>,
    #[serde(default)]
    cocoid: Option<u64>,
}

#[derive(Deserialize)]
struct Sentence {
    raw: String,
}

/// Reads the images of one split: the image at `image_root/filepath/filename` (or
/// `image_root/filename` without a `filepath`), captions = the `raw` sentences in file order,
/// key = `imgid`, metadata `{"imgid", "split", "cocoid"?}`.
pub fn read_karpathy(
    path: &Path,
    image_root: &Path,
    split: KarpathySplit,
    restval: Restval,
) -> Result<Vec<FileRecord>, DataError> {
    let file: KarpathyFile = read_json(path)?;
    let wanted = |s: &str| {
        s == split.as_str()
            || (split == KarpathySplit::Train && restval == Restval::AsTrain && s == "restval")
    };
    let records = file
        .images
        .into_iter()
        .filter(|image| wanted(&image.split))
        .map(|image| {
            let dir = image
                .filepath
                .as_deref()
                .map_or(image_root.to_path_buf(), |d| image_root.join(d));
            let mut meta = serde_json::json!({ "imgid": image.imgid, "split": image.split });
            if let Some(cocoid) = image.cocoid {
                meta["cocoid"] = cocoid.into();
            }
            FileRecord {
                key: image.imgid.to_string(),
                path: dir.join(&image.filename),
                captions: image.sentences.into_iter().map(|s| s.raw).collect(),
                meta,
            }
        })
        .collect();
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{png_bytes, write};
    use super::super::FileSamples;
    use super::*;

    const JSON: &str = r#"{"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "a.jpg", "imgid": 0, "split": "test", "cocoid": 42,
         "sentences": [{"raw": "A cat.", "tokens": ["a", "cat"]}, {"raw": "A pet.", "tokens": []}]},
        {"filepath": "train2014", "filename": "b.jpg", "imgid": 1, "split": "train", "sentences": [{"raw": "b", "tokens": ["b"]}]},
        {"filepath": "val2014", "filename": "c.jpg", "imgid": 2, "split": "restval", "sentences": [{"raw": "c", "tokens": ["c"]}]},
        {"filename": "d.jpg", "imgid": 3, "split": "val", "sentences": [{"raw": "d", "tokens": ["d"]}]}]}"#;

    #[test]
    fn readers_karpathy_filters_splits_and_builds_paths() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "images/val2014/a.jpg", &png_bytes());
        let path = write(dir.path(), "dataset_coco.json", JSON.as_bytes());
        let root = dir.path().join("images");
        let ids = |split, restval| -> Vec<String> {
            read_karpathy(&path, &root, split, restval)
                .unwrap()
                .into_iter()
                .map(|r| r.key)
                .collect()
        };
        assert_eq!(ids(KarpathySplit::Train, Restval::AsTrain), ["1", "2"]);
        assert_eq!(ids(KarpathySplit::Train, Restval::Separate), ["1"]);
        assert_eq!(ids(KarpathySplit::Restval, Restval::Separate), ["2"]);
        assert_eq!(ids(KarpathySplit::Val, Restval::AsTrain), ["3"]);
        let test = read_karpathy(&path, &root, KarpathySplit::Test, Restval::AsTrain).unwrap();
        assert_eq!(test[0].path, root.join("val2014/a.jpg"));
        let sample = FileSamples::new(test).next().unwrap().unwrap();
        assert_eq!(sample.captions, ["A cat.", "A pet."]);
        assert_eq!(
            sample.meta,
            serde_json::json!({"imgid": 0, "split": "test", "cocoid": 42})
        );
        let val = read_karpathy(&path, &root, KarpathySplit::Val, Restval::AsTrain).unwrap();
        assert_eq!(val[0].path, root.join("d.jpg"));
        let bad = write(
            dir.path(),
            "bad.json",
            br#"{"images": [{"filename": "x", "split": "train", "sentences": []}]}"#,
        );
        let err = read_karpathy(&bad, &root, KarpathySplit::Train, Restval::AsTrain).unwrap_err();
        assert!(err.to_string().contains("imgid"), "{err}");
    }
}
