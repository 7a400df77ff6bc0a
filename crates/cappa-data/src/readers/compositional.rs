//! Compositionality benchmarks: SugarCrepe (`{id: {filename, caption, negative_caption}}`, one
//! file per perturbation type) and ARO (VG-Relation, VG-Attribution, COCO-Order,
//! Flickr30k-Order: a list of items with an image, a true caption and one or more false
//! captions; the VG parts also give a box to crop the image to and the relation or attribute
//! pair that the item tests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::read_json;
use crate::error::DataError;

/// One image with its true caption and captions that must score lower.
#[derive(Debug, Clone, PartialEq)]
pub struct CompositionalItem {
    pub image_path: PathBuf,
    pub caption: String,
    /// One or more false captions.
    pub negatives: Vec<String>,
    /// The perturbation type or benchmark part (the file stem, e.g. `replace_att`).
    pub kind: String,
    /// What the item tests within its part: ARO VG-Relation's `relation_name`, or
    /// VG-Attribution's `attributes` joined with `_` (`white_black`); `None` otherwise.
    pub subtype: Option<String>,
    /// The box `[x, y, w, h]` in pixels to crop the image to before scoring (ARO's VG parts,
    /// from `bbox_x`, `bbox_y`, `bbox_w`, `bbox_h`); `None` for the whole image.
    pub crop: Option<[f64; 4]>,
}

#[derive(Deserialize)]
struct SugarCrepeItem {
    filename: String,
    caption: String,
    negative_caption: String,
}

#[derive(Deserialize)]
struct AroItem {
    #[serde(alias = "filename", alias = "image")]
    image_path: String,
    #[serde(alias = "caption")]
    true_caption: String,
    #[serde(default)]
    false_caption: Option<String>,
    #[serde(default)]
    false_captions: Vec<String>,
    #[serde(default)]
    relation_name: Option<String>,
    #[serde(default)]
    attributes: Option<Vec<String>>,
    #[serde(default)]
    bbox_x: Option<f64>,
    #[serde(default)]
    bbox_y: Option<f64>,
    #[serde(default)]
    bbox_w: Option<f64>,
    #[serde(default)]
    bbox_h: Option<f64>,
}

/// The file stem, used as the item kind.
fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads one SugarCrepe file; images are `image_root/filename`, items come in numeric id
/// order and `kind` is the file stem (`replace_att.json` → `replace_att`).
pub fn read_sugarcrepe(
    path: &Path,
    image_root: &Path,
) -> Result<Vec<CompositionalItem>, DataError> {
    let items: BTreeMap<String, SugarCrepeItem> = read_json(path)?;
    let kind = stem(path);
    let mut items: Vec<(String, SugarCrepeItem)> = items.into_iter().collect();
    items.sort_by(|(a, _), (b, _)| (a.parse::<u64>().ok(), a).cmp(&(b.parse::<u64>().ok(), b)));
    Ok(items
        .into_iter()
        .map(|(_, item)| CompositionalItem {
            image_path: image_root.join(item.filename),
            caption: item.caption,
            negatives: vec![item.negative_caption],
            kind: kind.clone(),
            subtype: None,
            crop: None,
        })
        .collect())
}

/// Reads an ARO file: a list `[{image_path, true_caption, false_caption | false_captions}]`
/// (`filename`/`image` and `caption` are accepted as aliases); images are
/// `image_root/image_path` and `kind` is the file stem. VG-Relation's `relation_name` or
/// VG-Attribution's `attributes` become the [`CompositionalItem::subtype`], and the four
/// `bbox_*` fields the [`CompositionalItem::crop`]. An item without any false caption, or with
/// only some of the `bbox_*` fields, is a [`DataError::Format`].
pub fn read_aro(path: &Path, image_root: &Path) -> Result<Vec<CompositionalItem>, DataError> {
    let items: Vec<AroItem> = read_json(path)?;
    let kind = stem(path);
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let mut negatives: Vec<String> = item.false_caption.into_iter().collect();
            negatives.extend(item.false_captions);
            if negatives.is_empty() {
                return Err(DataError::format(
                    path,
                    format!("item {i} has neither `false_caption` nor `false_captions`"),
                ));
            }
            let crop = match (item.bbox_x, item.bbox_y, item.bbox_w, item.bbox_h) {
                (Some(x), Some(y), Some(w), Some(h)) => Some([x, y, w, h]),
                (None, None, None, None) => None,
                _ => {
                    return Err(DataError::format(
                        path,
                        format!(
                            "item {i} has only some of `bbox_x`, `bbox_y`, `bbox_w`, `bbox_h`: \
                             give all four (a crop box in pixels) or none"
                        ),
                    ))
                }
            };
            let subtype = item
                .relation_name
                .or_else(|| item.attributes.map(|a| a.join("_")));
            Ok(CompositionalItem {
                image_path: image_root.join(item.image_path),
                caption: item.true_caption,
                negatives,
                kind: kind.clone(),
                subtype,
                crop,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_util::write;
    use super::*;

    #[test]
    fn readers_sugarcrepe_items_in_id_order_with_kind_from_stem() {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"{"10": {"filename": "b.jpg", "caption": "ten", "negative_caption": "not ten"},
                       "2": {"filename": "a.jpg", "caption": "two", "negative_caption": "not two"}}"#;
        let path = write(dir.path(), "replace_att.json", json.as_bytes());
        let items = read_sugarcrepe(&path, Path::new("/coco/val2017")).unwrap();
        assert_eq!(
            items,
            [
                CompositionalItem {
                    image_path: "/coco/val2017/a.jpg".into(),
                    caption: "two".into(),
                    negatives: vec!["not two".into()],
                    kind: "replace_att".into(),
                    subtype: None,
                    crop: None,
                },
                CompositionalItem {
                    image_path: "/coco/val2017/b.jpg".into(),
                    caption: "ten".into(),
                    negatives: vec!["not ten".into()],
                    kind: "replace_att".into(),
                    subtype: None,
                    crop: None,
                },
            ]
        );
        let path = write(
            dir.path(),
            "swap_obj.json",
            br#"{"0": {"filename": "a.jpg", "caption": "x"}}"#,
        );
        let err = read_sugarcrepe(&path, dir.path()).unwrap_err();
        assert!(err.to_string().contains("negative_caption"), "{err}");
    }

    #[test]
    fn readers_aro_items_take_one_or_many_false_captions() {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"[{"image_path": "1.jpg", "true_caption": "the horse is eating the grass",
                        "false_caption": "the grass is eating the horse", "relation_name": "eating"},
                       {"filename": "2.jpg", "caption": "a red car", "false_captions": ["a car red", "red a car"]}]"#;
        let path = write(dir.path(), "visual_genome_relation.json", json.as_bytes());
        let items = read_aro(&path, Path::new("/vg")).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].image_path, PathBuf::from("/vg/1.jpg"));
        assert_eq!(items[0].negatives, ["the grass is eating the horse"]);
        assert_eq!(items[1].caption, "a red car");
        assert_eq!(items[1].negatives, ["a car red", "red a car"]);
        assert_eq!(items[1].kind, "visual_genome_relation");
        let path = write(
            dir.path(),
            "bad.json",
            br#"[{"image_path": "1.jpg", "true_caption": "x"}]"#,
        );
        assert!(read_aro(&path, dir.path())
            .unwrap_err()
            .to_string()
            .contains("item 0"));
    }

    #[test]
    fn readers_aro_vg_parts_give_subtype_and_crop() {
        let dir = tempfile::tempdir().unwrap();
        let relation = r#"[{"image_id": "2", "relation_name": "sitting on", "bbox_x": 10,
            "bbox_y": 20.5, "bbox_w": 30, "bbox_h": 40, "image_path": "2.jpg",
            "true_caption": "the man is sitting on the bench",
            "false_caption": "the bench is sitting on the man"}]"#;
        let path = write(
            dir.path(),
            "visual_genome_relation.json",
            relation.as_bytes(),
        );
        let items = read_aro(&path, Path::new("/vg")).unwrap();
        assert_eq!(
            items,
            [CompositionalItem {
                image_path: "/vg/2.jpg".into(),
                caption: "the man is sitting on the bench".into(),
                negatives: vec!["the bench is sitting on the man".into()],
                kind: "visual_genome_relation".into(),
                subtype: Some("sitting on".into()),
                crop: Some([10.0, 20.5, 30.0, 40.0]),
            }]
        );
        let attribution = r#"[{"image_id": "3", "attributes": ["white", "black"],
            "bbox_x": 1, "bbox_y": 2, "bbox_w": 3, "bbox_h": 4, "image_path": "3.jpg",
            "true_caption": "the white dog and the black cat",
            "false_caption": "the black dog and the white cat"}]"#;
        let path = write(
            dir.path(),
            "visual_genome_attribution.json",
            attribution.as_bytes(),
        );
        let item = &read_aro(&path, Path::new("/vg")).unwrap()[0];
        assert_eq!(item.subtype.as_deref(), Some("white_black"));
        assert_eq!(item.crop, Some([1.0, 2.0, 3.0, 4.0]));
        let order = r#"[{"image": "val2014/x.jpg", "caption": "a dog on a couch",
            "false_captions": ["a couch on a dog", "dog a on couch a", "on a couch a dog"]}]"#;
        let path = write(dir.path(), "coco_order.json", order.as_bytes());
        let item = &read_aro(&path, Path::new("/coco")).unwrap()[0];
        assert_eq!(item.image_path, PathBuf::from("/coco/val2014/x.jpg"));
        assert_eq!(item.negatives.len(), 3);
        assert_eq!((item.subtype.as_deref(), item.crop), (None, None));
        let partial = r#"[{"image_path": "1.jpg", "true_caption": "x", "false_caption": "y",
            "bbox_x": 1, "bbox_y": 2}]"#;
        let path = write(dir.path(), "partial.json", partial.as_bytes());
        let err = read_aro(&path, dir.path()).unwrap_err().to_string();
        assert!(err.contains("item 0") && err.contains("bbox_w"), "{err}");
    }
}
