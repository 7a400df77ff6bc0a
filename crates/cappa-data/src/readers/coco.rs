//! COCO captions annotation files (`captions_train2017.json`): `images[{id, file_name, width,
//! height}]` and `annotations[{id, image_id, caption}]`.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{read_json, FileRecord};
use crate::error::DataError;

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    id: u64,
    image_id: u64,
    caption: String,
}

/// Reads a COCO captions file: one record per image, in the file's image order, with all its
/// captions sorted by annotation id, the image at `image_root/file_name`, key = the image id
/// and metadata `{"image_id": ID}`. A missing field is a [`DataError::Format`] naming it; an
/// annotation for an unknown image is one too.
pub fn read_coco(annotations: &Path, image_root: &Path) -> Result<Vec<FileRecord>, DataError> {
    let file: CocoFile = read_json(annotations)?;
    let mut by_image: HashMap<u64, Vec<(u64, String)>> = HashMap::new();
    for image in &file.images {
        by_image.insert(image.id, Vec::new());
    }
    for annotation in file.annotations {
        let captions = by_image.get_mut(&annotation.image_id).ok_or_else(|| {
            DataError::format(
                annotations,
                format!(
                    "annotation {} refers to image_id {}, which is not in `images`",
                    annotation.id, annotation.image_id
                ),
            )
        })?;
        captions.push((annotation.id, annotation.caption));
    }
    let records = file
        .images
        .into_iter()
        .map(|image| {
            let mut captions = by_image.remove(&image.id).unwrap_or_default();
            captions.sort_by_key(|(id, _)| *id);
            FileRecord {
                key: image.id.to_string(),
                path: image_root.join(&image.file_name),
                captions: captions.into_iter().map(|(_, c)| c).collect(),
                meta: serde_json::json!({ "image_id": image.id }),
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

    #[test]
    fn readers_coco_groups_captions_by_image_in_annotation_order() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "val2017/000000000001.jpg", &png_bytes());
        let json = r#"{"info": {}, "images": [
            {"id": 1, "file_name": "000000000001.jpg", "width": 4, "height": 3},
            {"id": 7, "file_name": "000000000007.jpg", "width": 4, "height": 3}],
          "annotations": [
            {"id": 30, "image_id": 1, "caption": "third"},
            {"id": 10, "image_id": 1, "caption": "first"},
            {"id": 11, "image_id": 7, "caption": "other"},
            {"id": 20, "image_id": 1, "caption": "second"}]}"#;
        let path = write(dir.path(), "captions_val2017.json", json.as_bytes());
        let records = read_coco(&path, &dir.path().join("val2017")).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].captions, ["first", "second", "third"]);
        assert_eq!(records[0].key, "1");
        assert_eq!(records[1].captions, ["other"]);
        let items: Vec<_> = FileSamples::new(records).collect();
        let sample = items[0].as_ref().unwrap();
        assert_eq!(sample.meta, serde_json::json!({"image_id": 1}));
        assert!(items[1].is_err());
    }

    #[test]
    fn readers_coco_missing_field_is_a_format_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"{"images": [{"id": 1}], "annotations": []}"#;
        let path = write(dir.path(), "c.json", json.as_bytes());
        let err = read_coco(&path, dir.path()).unwrap_err();
        assert!(matches!(err, DataError::Format { .. }));
        assert!(
            err.to_string().contains("file_name") && err.to_string().contains("c.json"),
            "{err}"
        );
        let json = r#"{"images": [], "annotations": [{"id": 1, "image_id": 5, "caption": "x"}]}"#;
        let path = write(dir.path(), "d.json", json.as_bytes());
        assert!(read_coco(&path, dir.path())
            .unwrap_err()
            .to_string()
            .contains("image_id 5"));
    }
}
