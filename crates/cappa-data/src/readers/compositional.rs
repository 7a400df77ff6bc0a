//! Compositionality benchmarks: SugarCrepe (`{id: {filename, caption, negative_caption}}`, one
//! file per perturbation type) and ARO (VG-Relation, VG-Attribution: a list of items with an
//! image, a true caption and one or more false captions).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::read_json;
use crate::error::DataError;

/// One image with its true caption and captions that must score lower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompositionalItem {
    pub image_path: PathBuf,
    pub caption: String,
    /// One or more false captions.
    pub negatives: Vec<String>,
    /// The perturbation type or benchmark part (the file stem, e.g. `replace_att`).
    pub kind: String,
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
        })
        .collect())
}

/// Reads an ARO-style list `[{image_path, true_caption, false_caption | false_captions}]`
/// (`filename`/`image` and `caption` are accepted as aliases); images are
/// `image_root/image_path` and `kind` is the file stem. An item without any false caption is
/// a [`DataError::Format`].
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
            Ok(CompositionalItem {
                image_path: image_root.join(item.image_path),
                caption: item.true_caption,
                negatives,
                kind: kind.clone(),
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
                },
                CompositionalItem {
                    image_path: "/coco/val2017/b.jpg".into(),
                    caption: "ten".into(),
                    negatives: vec!["not ten".into()],
                    kind: "replace_att".into(),
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
}
