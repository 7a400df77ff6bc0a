//! ImageFolder trees (`root/CLASS_NAME/*.jpg`), as torchvision reads them: class names are the
//! sub-directory names, sorted, and a label is the index of its class. Display names for the
//! classes may come from a separate file ([`read_class_names`]).

use std::path::{Path, PathBuf};

use super::{FileRecord, FileSamples};
use crate::error::DataError;

/// File extensions (compared case-insensitively) taken as images.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// The classes and images of an ImageFolder tree.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFolder {
    /// Class names, sorted; a label is an index into this list.
    pub classes: Vec<String>,
    /// One record per image, by class then file name; caption = the class name, metadata
    /// `{"label", "class_name"}`, key = the path relative to the root.
    pub records: Vec<FileRecord>,
}

impl ImageFolder {
    /// Lists `root`: every sub-directory is a class (even one without images, so that labels
    /// agree between splits), and its direct children with an image extension are its images.
    /// Fails when `root` cannot be read or has no class directory.
    pub fn open(root: &Path) -> Result<Self, DataError> {
        let mut classes: Vec<String> = Vec::new();
        for entry in read_dir(root)? {
            if entry.is_dir() {
                if let Some(name) = entry.file_name().and_then(|n| n.to_str()) {
                    classes.push(name.to_owned());
                }
            }
        }
        classes.sort();
        if classes.is_empty() {
            return Err(DataError::format(
                root,
                "no class sub-directories; an ImageFolder root holds one directory per class",
            ));
        }
        let mut records = Vec::new();
        for (label, class_name) in classes.iter().enumerate() {
            let mut files: Vec<PathBuf> = read_dir(&root.join(class_name))?
                .into_iter()
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            files.sort();
            for path in files {
                let key = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                records.push(FileRecord {
                    key,
                    path,
                    captions: vec![class_name.clone()],
                    meta: serde_json::json!({ "label": label, "class_name": class_name }),
                });
            }
        }
        Ok(ImageFolder { classes, records })
    }

    /// Pairs of image path and label.
    pub fn labelled_paths(&self) -> Vec<(PathBuf, usize)> {
        self.records
            .iter()
            .map(|r| {
                (
                    r.path.clone(),
                    r.meta["label"].as_u64().unwrap_or(0) as usize,
                )
            })
            .collect()
    }

    /// Reads the images lazily.
    pub fn samples(&self) -> FileSamples {
        FileSamples::new(self.records.clone())
    }

    /// The class folders that hold no image, sorted.
    pub fn empty_classes(&self) -> Vec<String> {
        let mut used = vec![false; self.classes.len()];
        for record in &self.records {
            if let Some(seen) = record.meta["label"]
                .as_u64()
                .and_then(|label| used.get_mut(label as usize))
            {
                *seen = true;
            }
        }
        self.classes
            .iter()
            .zip(used)
            .filter(|(_, used)| !used)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Reads display names for the classes of an ImageFolder tree: one per line, trimmed, blank
/// lines dropped; line k names the class of label k. A count other than `expected` is a
/// [`DataError::Format`] naming the file.
pub fn read_class_names(path: &Path, expected: usize) -> Result<Vec<String>, DataError> {
    let names = super::read_class_name_lines(path)?;
    if names.len() != expected {
        return Err(DataError::format(
            path,
            format!(
                "{} names for {expected} classes; one line per class folder, in sorted folder \
                 order",
                names.len()
            ),
        ));
    }
    Ok(names)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    entries
        .map(|entry| entry.map(|e| e.path()).map_err(|e| DataError::io(dir, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{png_bytes, write};
    use super::*;

    #[test]
    fn readers_image_folder_sorts_classes_and_labels_images() {
        let dir = tempfile::tempdir().unwrap();
        let png = png_bytes();
        for name in [
            "zebra/2.png",
            "zebra/1.JPG",
            "ant/x.webp",
            "ant/notes.txt",
            "bee/y.jpeg",
        ] {
            write(dir.path(), name, &png);
        }
        std::fs::create_dir(dir.path().join("empty_class")).unwrap();
        write(dir.path(), "stray.jpg", &png);
        let folder = ImageFolder::open(dir.path()).unwrap();
        assert_eq!(folder.classes, ["ant", "bee", "empty_class", "zebra"]);
        let labelled: Vec<(String, usize)> = folder
            .labelled_paths()
            .into_iter()
            .map(|(p, l)| (p.strip_prefix(dir.path()).unwrap().display().to_string(), l))
            .collect();
        assert_eq!(
            labelled,
            [
                ("ant/x.webp".to_string(), 0),
                ("bee/y.jpeg".to_string(), 1),
                ("zebra/1.JPG".to_string(), 3),
                ("zebra/2.png".to_string(), 3),
            ]
        );
        let samples: Vec<_> = folder.samples().map(Result::unwrap).collect();
        assert_eq!(
            samples[2].meta,
            serde_json::json!({"label": 3, "class_name": "zebra"})
        );
        assert_eq!(samples[2].captions, ["zebra"]);
        assert_eq!(samples[2].key, "zebra/1.JPG");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            ImageFolder::open(empty.path()),
            Err(DataError::Format { .. })
        ));
        assert!(matches!(
            ImageFolder::open(&empty.path().join("no")),
            Err(DataError::Io { .. })
        ));
    }

    #[test]
    fn readers_image_folder_empty_classes_and_class_names() {
        let dir = tempfile::tempdir().unwrap();
        let png = png_bytes();
        write(dir.path(), "b_dog/1.png", &png);
        write(dir.path(), "d_fish/1.png", &png);
        write(dir.path(), "c_empty/readme.txt", b"no image here");
        std::fs::create_dir(dir.path().join("a_empty")).unwrap();
        let folder = ImageFolder::open(dir.path()).unwrap();
        assert_eq!(folder.empty_classes(), ["a_empty", "c_empty"]);
        write(dir.path(), "a_empty/x.jpg", &png);
        write(dir.path(), "c_empty/y.webp", &png);
        assert!(ImageFolder::open(dir.path())
            .unwrap()
            .empty_classes()
            .is_empty());

        let names = write(
            dir.path(),
            "names.txt",
            b"  nothing \n\ndog\r\nempty\n\t\ngoldfish\n",
        );
        assert_eq!(
            read_class_names(&names, 4).unwrap(),
            ["nothing", "dog", "empty", "goldfish"]
        );
        let err = read_class_names(&names, 5).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, DataError::Format { .. }), "{message}");
        assert!(
            message.contains("names.txt")
                && message.contains("4 names for 5 classes")
                && message.contains("sorted folder order"),
            "{message}"
        );
        let err = read_class_names(&dir.path().join("none.txt"), 4).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }), "{err}");
    }
}
