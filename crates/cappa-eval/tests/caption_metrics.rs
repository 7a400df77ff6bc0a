//! Caption metrics against pycocoevalcap 1.2 (fixture written by
//! `scripts/make_caption_metrics_fixture.py`), and the caption file reader.

use cappa_eval::caption_metrics::{
    bleu, cider_d, cider_d_per_image, read_caption_file, rouge_l, rouge_l_per_image,
    score_captions, CaptionFileError, CaptionItem,
};
use serde_json::Value;

/// Largest difference allowed from pycocoevalcap. The implementation follows its arithmetic
/// operation by operation and its scores are bit-identical on x86-64 Linux; the differences this
/// test sees (a few 1e-16) come from serde_json's float parsing, which is not correctly rounded
/// without its `float_roundtrip` feature. The margin allows for other platforms' libm.
const TOLERANCE: f64 = 1e-9;

struct Fixture {
    items: Vec<CaptionItem>,
    expected: Value,
}

fn fixture() -> Fixture {
    let expected: Value =
        serde_json::from_str(include_str!("fixtures/caption_metrics.json")).unwrap();
    let items = expected["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| CaptionItem {
            refs: item["refs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_owned())
                .collect(),
            hyp: item["hyp"].as_str().unwrap().to_owned(),
        })
        .collect();
    Fixture { items, expected }
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Asserts each value is within `TOLERANCE` of the reference and returns the largest difference.
fn check(name: &str, actual: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "{name}: lengths differ");
    let mut worst = 0.0f64;
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let difference = (a - e).abs();
        assert!(
            difference <= TOLERANCE,
            "{name}[{i}]: {a} but pycocoevalcap gives {e} (difference {difference:e})"
        );
        worst = worst.max(difference);
    }
    worst
}

#[test]
fn scores_match_pycocoevalcap() {
    let Fixture { items, expected } = fixture();
    assert_eq!(items.len(), 40);
    let mut worst = 0.0f64;
    worst = worst.max(check("bleu", &bleu(&items), &floats(&expected["bleu"])));
    let rouge = [rouge_l(&items)];
    worst = worst.max(check(
        "rouge_l",
        &rouge,
        &[expected["rouge_l"].as_f64().unwrap()],
    ));
    let cider = [cider_d(&items)];
    worst = worst.max(check(
        "cider_d",
        &cider,
        &[expected["cider_d"].as_f64().unwrap()],
    ));
    worst = worst.max(check(
        "rouge_l_per_image",
        &rouge_l_per_image(&items),
        &floats(&expected["rouge_l_per_image"]),
    ));
    worst = worst.max(check(
        "cider_d_per_image",
        &cider_d_per_image(&items),
        &floats(&expected["cider_d_per_image"]),
    ));
    eprintln!("largest difference from pycocoevalcap: {worst:e}");
}

#[test]
fn tokenised_fixture_scores_the_same() {
    // The fixture captions are already lower-case and punctuation-free, so tokenising them is a
    // no-op and `score_captions` must give the raw scores.
    let Fixture { items, expected } = fixture();
    let scores = score_captions(&items);
    assert_eq!(scores.images, items.len());
    let bleu_expected = floats(&expected["bleu"]);
    check(
        "score_captions",
        &[
            scores.bleu_1,
            scores.bleu_2,
            scores.bleu_3,
            scores.bleu_4,
            scores.rouge_l,
            scores.cider_d,
        ],
        &[
            bleu_expected[0],
            bleu_expected[1],
            bleu_expected[2],
            bleu_expected[3],
            expected["rouge_l"].as_f64().unwrap(),
            expected["cider_d"].as_f64().unwrap(),
        ],
    );
}

#[test]
fn read_caption_file_reads_entries_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("captions.json");
    std::fs::write(
        &path,
        r#"{
            "b7": {"refs": ["A dog on grass.", "a dog"], "hyp": "a dog running", "image": "x.jpg"},
            "a1": {"hyp": "", "refs": ["two cats"]}
        }"#,
    )
    .unwrap();
    let items = read_caption_file(&path).unwrap();
    assert_eq!(
        items,
        [
            (
                "a1".to_owned(),
                CaptionItem {
                    refs: vec!["two cats".into()],
                    hyp: String::new(),
                }
            ),
            (
                "b7".to_owned(),
                CaptionItem {
                    refs: vec!["A dog on grass.".into(), "a dog".into()],
                    hyp: "a dog running".into(),
                }
            ),
        ]
    );
}

#[test]
fn read_caption_file_errors_name_the_file_and_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("captions.json");
    let error_for = |text: &str| {
        std::fs::write(&path, text).unwrap();
        read_caption_file(&path).unwrap_err()
    };
    let file = path.display().to_string();

    let error = error_for(r#"{"ok": {"refs": ["a"], "hyp": "a"}, "img42": {"refs": ["a b"]}}"#);
    assert!(
        matches!(&error, CaptionFileError::MissingField { id, field: "hyp", .. } if id == "img42"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&file) && message.contains("\"img42\"") && message.contains("\"hyp\""),
        "{message}"
    );

    let error = error_for(r#"{"img7": {"refs": [], "hyp": "a"}}"#);
    assert!(matches!(&error, CaptionFileError::EmptyRefs { id, .. } if id == "img7"));
    assert!(error.to_string().contains("\"img7\""), "{error}");

    let error = error_for(r#"{"img8": {"refs": ["a", 3], "hyp": "a"}}"#);
    let message = error.to_string();
    assert!(
        message.contains("\"img8\"") && message.contains("refs[1]") && message.contains("a number"),
        "{message}"
    );

    let error = error_for(r#"{"img9": ["a"]}"#);
    assert!(
        matches!(error, CaptionFileError::EntryNotAnObject { .. }),
        "{error:?}"
    );
    let error = error_for(r#"[{"refs": ["a"], "hyp": "a"}]"#);
    assert!(matches!(
        error,
        CaptionFileError::NotAnObject {
            found: "an array",
            ..
        }
    ));
    let error = error_for(r#"{"img1": {"refs": ["a"], "hyp": "a"#);
    assert!(matches!(error, CaptionFileError::Json { .. }), "{error:?}");
    assert!(error.to_string().contains(&file), "{error}");

    let missing = dir.path().join("absent.json");
    let error = read_caption_file(&missing).unwrap_err();
    assert!(matches!(error, CaptionFileError::Read { .. }), "{error:?}");
    assert!(error.to_string().contains("absent.json"), "{error}");
}
