//! `inspect` reads datasets end to end: counts, sizes and bad samples by reason, and the
//! format is told from the path.

mod common;

use cappa_data::inspect::{detect_format, inspect, DatasetFormat, InspectOptions};
use cappa_data::SkipReason;
use common::write_shards;

#[test]
fn shards_are_counted_decoded_and_their_bad_samples_named() {
    let dir = tempfile::tempdir().unwrap();
    write_shards(dir.path(), 2, 5, &[3, 7]);
    let pattern = format!("{}/{{00000..00001}}.tar", dir.path().display());
    let report = inspect(&[pattern], &InspectOptions::default()).unwrap();
    assert_eq!(report.format, DatasetFormat::WebDataset);
    assert_eq!((report.seen, report.samples), (10, 8));
    assert_eq!(report.skipped.get(SkipReason::UndecodableImage), 2);
    assert_eq!(
        (report.image_width.min, report.image_width.max),
        (20.0, 20.0)
    );
    assert_eq!(report.image_height.mean, 12.0);
    // "a red circle number 0" has five words; every caption here has five.
    assert_eq!(report.caption_words.mean, 5.0);
    assert!(report.to_string().contains("undecodable_image 2"));
}

#[test]
fn formats_are_told_from_the_path_and_the_json_fields() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let karpathy = write(
        "k.json",
        r#"{"images": [{"filename": "a.jpg", "imgid": 0, "split": "test", "sentences": []}]}"#,
    );
    let coco = write(
        "c.json",
        r#"{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []}"#,
    );
    let vqa = write("q.json", r#"{"questions": []}"#);
    let sugarcrepe = write(
        "s.json",
        r#"{"0": {"filename": "a.jpg", "caption": "x", "negative_caption": "y"}}"#,
    );
    let other = write("o.json", r#"{"something": 1}"#);
    assert_eq!(detect_format(&karpathy).unwrap(), DatasetFormat::Karpathy);
    assert_eq!(detect_format(&coco).unwrap(), DatasetFormat::Coco);
    assert_eq!(detect_format(&vqa).unwrap(), DatasetFormat::Vqa);
    assert_eq!(
        detect_format(&sugarcrepe).unwrap(),
        DatasetFormat::SugarCrepe
    );
    assert_eq!(
        detect_format(dir.path()).unwrap(),
        DatasetFormat::ImageFolder
    );
    let message = detect_format(&other).unwrap_err().to_string();
    assert!(
        message.contains("o.json") && message.contains("--format"),
        "{message}"
    );
    let missing = inspect(
        &["/nonexistent/*.tar".to_owned()],
        &InspectOptions::default(),
    );
    assert!(missing
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/*.tar"));
}
