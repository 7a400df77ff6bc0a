//! CLIP_benchmark's webdataset layout (github.com/LAION-AI/CLIP_benchmark, `clip_benchmark
//! convert`), as published for its evaluation datasets:
//!
//! ```text
//! ROOT/dataset_type.txt                        `retrieval`; absent or `classification` otherwise
//! ROOT/classnames.txt                          one class name per line (classification)
//! ROOT/zeroshot_classification_templates.txt   optional, one prompt per line, `{c}` = class name
//! ROOT/SPLIT/nshards.txt                       N, the number of shards
//! ROOT/SPLIT/0.tar .. ROOT/SPLIT/{N-1}.tar     KEY.webp + KEY.cls (label) or KEY.txt (captions)
//! ```

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::{TextMembers, WebDataset};
use crate::error::DataError;

/// What a CLIP_benchmark dataset evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClipBenchmarkKind {
    /// Images with an integer label (`.cls`), scored against class-name prompts.
    Classification,
    /// Images with several captions (`.txt`, one per line), for image-text retrieval.
    Retrieval,
}

/// One split of a CLIP_benchmark dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipBenchmark {
    pub root: PathBuf,
    pub split: String,
    pub kind: ClipBenchmarkKind,
    /// Class names, line k naming label k; empty for retrieval.
    pub class_names: Vec<String>,
    /// Zero-shot prompts with `{c}` for the class name; empty when the dataset has none.
    pub templates: Vec<String>,
    /// `ROOT/SPLIT/0.tar ..`, in order.
    pub shards: Vec<PathBuf>,
}

const DATASET_TYPE: &str = "dataset_type.txt";
const CLASS_NAMES: &str = "classnames.txt";
const TEMPLATES: &str = "zeroshot_classification_templates.txt";
const NSHARDS: &str = "nshards.txt";

impl ClipBenchmark {
    /// Reads the dataset's description files and lists the split's shards; every listed shard
    /// must exist. Errors name the file at fault (a missing split lists the splits there are).
    pub fn open(root: &Path, split: &str) -> Result<Self, DataError> {
        let kind = match read_optional(&root.join(DATASET_TYPE))? {
            None => ClipBenchmarkKind::Classification,
            Some(text) => match text.trim() {
                "classification" => ClipBenchmarkKind::Classification,
                "retrieval" => ClipBenchmarkKind::Retrieval,
                other => {
                    return Err(DataError::format(
                        root.join(DATASET_TYPE),
                        format!(
                            "unknown dataset type {other:?}: write `retrieval` or `classification`"
                        ),
                    ))
                }
            },
        };
        let class_names = match kind {
            ClipBenchmarkKind::Retrieval => Vec::new(),
            ClipBenchmarkKind::Classification => read_class_name_lines(&root.join(CLASS_NAMES))?,
        };
        let templates = read_template_lines(&root.join(TEMPLATES))?;
        let shards = list_shards(root, split)?;
        Ok(ClipBenchmark {
            root: root.to_path_buf(),
            split: split.to_owned(),
            kind,
            class_names,
            templates,
            shards,
        })
    }

    /// How the shards' samples carry their text: [`TextMembers::Label`] for classification,
    /// [`TextMembers::CaptionLines`] for retrieval.
    pub fn text_members(&self) -> TextMembers {
        match self.kind {
            ClipBenchmarkKind::Classification => TextMembers::Label,
            ClipBenchmarkKind::Retrieval => TextMembers::CaptionLines,
        }
    }

    /// Reads the split's samples lazily, shard by shard.
    pub fn samples(&self) -> WebDataset {
        WebDataset::new(self.shards.clone()).with_text(self.text_members())
    }
}

/// A file's text, or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, DataError> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|e| DataError::format(path, format!("not UTF-8 text: {e}"))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DataError::io(path, e)),
    }
}

/// Trimmed non-blank lines, with their 1-based line numbers.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(i, line)| (i + 1, line))
}

/// Class names, one per trimmed non-blank line (line k names label k); a missing or empty
/// file is an error naming it.
pub fn read_class_name_lines(path: &Path) -> Result<Vec<String>, DataError> {
    let Some(text) = read_optional(path)? else {
        return Err(DataError::io(
            path,
            std::io::Error::new(
                ErrorKind::NotFound,
                "missing; a classification dataset needs it, one class name per line \
                 (line k names label k)",
            ),
        ));
    };
    let names: Vec<String> = lines(&text).map(|(_, l)| l.to_owned()).collect();
    if names.is_empty() {
        return Err(DataError::format(
            path,
            "no class name: write one class name per line (line k names label k)",
        ));
    }
    Ok(names)
}

/// Zero-shot templates, one per trimmed non-blank line, each with `{c}` for the class name
/// (a line without one is an error naming the file and line); none when the file is missing.
pub fn read_template_lines(path: &Path) -> Result<Vec<String>, DataError> {
    let Some(text) = read_optional(path)? else {
        return Ok(Vec::new());
    };
    lines(&text)
        .map(|(number, template)| {
            if template.contains("{c}") {
                Ok(template.to_owned())
            } else {
                Err(DataError::format(
                    path,
                    format!(
                        "line {number} ({template:?}) has no class name placeholder: write `{{c}}` \
                         where the class name goes, e.g. `a photo of a {{c}}.`"
                    ),
                ))
            }
        })
        .collect()
}

fn list_shards(root: &Path, split: &str) -> Result<Vec<PathBuf>, DataError> {
    let dir = root.join(split);
    let count_file = dir.join(NSHARDS);
    let Some(text) = read_optional(&count_file)? else {
        let what = if dir.is_dir() {
            count_file.clone()
        } else {
            dir.clone()
        };
        let splits = split_dirs(root)?;
        let there = if splits.is_empty() {
            format!("{} has no split directory", root.display())
        } else {
            format!(
                "the splits under {} are: {}",
                root.display(),
                splits.join(", ")
            )
        };
        return Err(DataError::io(
            what,
            std::io::Error::new(
                ErrorKind::NotFound,
                format!("no split `{split}` (ROOT/SPLIT/{NSHARDS} is missing); {there}"),
            ),
        ));
    };
    let count: usize = text.trim().parse().map_err(|_| {
        DataError::format(
            &count_file,
            format!("holds {:?}, not the number of shards", text.trim()),
        )
    })?;
    if count == 0 {
        return Err(DataError::format(
            &count_file,
            "says the split has 0 shards",
        ));
    }
    let shards: Vec<PathBuf> = (0..count).map(|i| dir.join(format!("{i}.tar"))).collect();
    if let Some(missing) = shards.iter().find(|s| !s.is_file()) {
        return Err(DataError::io(
            missing,
            std::io::Error::new(
                ErrorKind::NotFound,
                format!(
                    "missing shard: {} says there are {count} shards, 0.tar to {}.tar",
                    count_file.display(),
                    count - 1
                ),
            ),
        ));
    }
    Ok(shards)
}

/// The names of the sub-directories of `root` holding an `nshards.txt`, sorted.
fn split_dirs(root: &Path) -> Result<Vec<String>, DataError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) => return Err(DataError::io(root, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| DataError::io(root, e))?.path();
        if path.join(NSHARDS).is_file() {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{png_bytes, tar_bytes, write, Entry};
    use super::*;

    /// A classification dataset with a `test` split of two shards.
    fn classification(root: &Path) {
        let png = png_bytes();
        write(root, CLASS_NAMES, b"cat\n\n  dog \n");
        write(root, TEMPLATES, b"a photo of a {c}.\n\n{c} in the wild\n");
        write(root, "test/nshards.txt", b"2\n");
        write(
            root,
            "test/0.tar",
            &tar_bytes(&[Entry::File("s0.png", &png), Entry::File("s0.cls", b"1")]),
        );
        write(
            root,
            "test/1.tar",
            &tar_bytes(&[Entry::File("s1.png", &png), Entry::File("s1.cls", b"0")]),
        );
    }

    #[test]
    fn readers_clip_benchmark_classification() {
        let dir = tempfile::tempdir().unwrap();
        classification(dir.path());
        let opened = ClipBenchmark::open(dir.path(), "test").unwrap();
        assert_eq!(opened.kind, ClipBenchmarkKind::Classification);
        assert_eq!(opened.class_names, ["cat", "dog"]);
        assert_eq!(opened.templates, ["a photo of a {c}.", "{c} in the wild"]);
        assert_eq!(
            opened.shards,
            [dir.path().join("test/0.tar"), dir.path().join("test/1.tar")]
        );
        let labels: Vec<i64> = opened
            .samples()
            .map(|s| s.unwrap().meta["label"].as_i64().unwrap())
            .collect();
        assert_eq!(labels, [1, 0]);
        // An explicit `classification` type is the same as none.
        write(dir.path(), DATASET_TYPE, b"classification\n");
        assert_eq!(ClipBenchmark::open(dir.path(), "test").unwrap(), opened);
    }

    #[test]
    fn readers_clip_benchmark_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        classification(dir.path());
        let message = |split: &str| {
            ClipBenchmark::open(dir.path(), split)
                .unwrap_err()
                .to_string()
        };
        let err = message("train");
        assert!(
            err.contains("train") && err.contains("the splits under") && err.contains(": test"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("test/1.tar")).unwrap();
        let err = message("test");
        assert!(err.contains("1.tar") && err.contains("2 shards"), "{err}");

        write(dir.path(), "test/nshards.txt", b"two");
        let err = message("test");
        assert!(
            err.contains("nshards.txt") && err.contains("\"two\""),
            "{err}"
        );
        write(dir.path(), "test/nshards.txt", b"1");

        write(
            dir.path(),
            TEMPLATES,
            b"a photo of a {c}.\na photo of a {}.\n",
        );
        let err = message("test");
        assert!(
            err.contains(TEMPLATES) && err.contains("line 2") && err.contains("`{c}`"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join(TEMPLATES)).unwrap();
        assert!(ClipBenchmark::open(dir.path(), "test")
            .unwrap()
            .templates
            .is_empty());

        write(dir.path(), CLASS_NAMES, b"\n \n");
        let err = message("test");
        assert!(
            err.contains(CLASS_NAMES) && err.contains("no class name"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join(CLASS_NAMES)).unwrap();
        let err = message("test");
        assert!(
            err.contains(CLASS_NAMES) && err.contains("missing"),
            "{err}"
        );

        write(dir.path(), DATASET_TYPE, b"detection");
        let err = message("test");
        assert!(
            err.contains(DATASET_TYPE) && err.contains("\"detection\""),
            "{err}"
        );
    }
}
