//! Reports as JSON: the layout is today's (field names, order, representation), and a report
//! written, read back and written again is byte-identical, directly and as report files.

use std::collections::BTreeMap;

use cappa_eval::caption_metrics::CaptionScores;
use cappa_eval::model::ModelKind;
use cappa_eval::probe::{FewShotResult, GridPoint, LinearProbeResult};
use cappa_eval::report::{write_report, EvalReport, TimedTask};
use cappa_eval::tasks::{Perplexity, Recall, RetrievalScores};
use cappa_eval::transfer::TransferResult;

fn captions(base: f64) -> CaptionScores {
    CaptionScores {
        bleu_1: base,
        bleu_2: base / 2.0,
        bleu_3: base / 3.0,
        bleu_4: base / 7.0,
        rouge_l: 0.1 + base,
        cider_d: 1.0 / 3.0,
        images: 24,
    }
}

/// A captioner's report with every section filled, awkward floats included.
fn full_report() -> EvalReport {
    let few_shot = FewShotResult {
        shots: 5,
        mean_accuracy: 0.1 + 0.2,
        accuracies: vec![0.3, 1.0 / 3.0, 0.2],
    };
    let probe = LinearProbeResult {
        l2: 1e-5,
        validation_accuracy: 0.75,
        test_accuracy: 2.0 / 3.0,
        grid: vec![
            GridPoint {
                l2: 1e-5,
                validation_accuracy: 0.75,
            },
            GridPoint {
                l2: 0.1,
                validation_accuracy: 0.5,
            },
        ],
    };
    let recall = Recall {
        r1: 0.125,
        r5: 0.5,
        r10: 1.0,
    };
    let transfer = TransferResult {
        captioning: captions(0.25),
        vqa_accuracy: 0.6,
        vqa_by_kind: BTreeMap::from([("count".to_string(), 0.5), ("colour".to_string(), 0.7)]),
        final_caption_loss: 2.5,
        // No training steps.
        final_vqa_loss: f64::NAN,
    };
    let seconds = [
        TimedTask::Probes,
        TimedTask::ZeroShot,
        TimedTask::Retrieval,
        TimedTask::Compositional,
        TimedTask::CaptioningGreedy,
        TimedTask::CaptioningBeam,
        TimedTask::Perplexity,
        TimedTask::Transfer,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, task)| (task, 0.01 * (i + 1) as f64))
    .collect();
    EvalReport {
        model_kind: ModelKind::Captioner,
        test_images: 24,
        few_shot: BTreeMap::from([
            ("shape".to_string(), vec![few_shot.clone()]),
            ("colour".to_string(), vec![few_shot]),
        ]),
        zero_shot: BTreeMap::from([("shape".to_string(), 0.7), ("count".to_string(), 1e-300)]),
        retrieval: Some(RetrievalScores {
            image_to_text: recall,
            text_to_image: recall,
        }),
        retrieval_skipped: None,
        linear_probe: BTreeMap::from([("shape".to_string(), probe)]),
        compositional: BTreeMap::from([("all".to_string(), 0.5), ("word_order".to_string(), 0.25)]),
        compositional_files: BTreeMap::from([(
            "sugarcrepe/swap_att.json".to_string(),
            BTreeMap::from([("all".to_string(), 0.9)]),
        )]),
        captioning_greedy: Some(captions(0.5)),
        captioning_beam: Some(captions(0.55)),
        sample_captions: vec!["a red star".into(), "two \"blue\" rings".into()],
        perplexity: Some(Perplexity {
            nll_per_token: 3.25,
            perplexity: 3.25f64.exp(),
            tokens: 480,
        }),
        transfer: Some(transfer),
        seconds,
    }
}

/// A contrastive model's report: no captioner sections, retrieval skipped.
fn sparse_report() -> EvalReport {
    EvalReport {
        model_kind: ModelKind::Contrastive,
        test_images: 0,
        few_shot: BTreeMap::new(),
        zero_shot: BTreeMap::new(),
        retrieval: None,
        retrieval_skipped: Some("too many pairs".into()),
        linear_probe: BTreeMap::new(),
        compositional: BTreeMap::new(),
        compositional_files: BTreeMap::new(),
        captioning_greedy: None,
        captioning_beam: None,
        sample_captions: Vec::new(),
        perplexity: None,
        transfer: None,
        seconds: BTreeMap::from([(TimedTask::ZeroShot, 0.5), (TimedTask::Probes, 1.5)]),
    }
}

#[test]
fn serialising_a_read_back_report_gives_the_same_bytes() {
    for report in [full_report(), sparse_report()] {
        let text = serde_json::to_string_pretty(&report).unwrap();
        let back: EvalReport = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string_pretty(&back).unwrap(), text);
        let compact = serde_json::to_string(&report).unwrap();
        let back: EvalReport = serde_json::from_str(&compact).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), compact);
    }
    // NaN is written as null and read back as NaN.
    let text = serde_json::to_string(&full_report()).unwrap();
    assert!(text.contains(r#""final_vqa_loss":null"#), "{text}");
    let back: EvalReport = serde_json::from_str(&text).unwrap();
    assert!(back.transfer.unwrap().final_vqa_loss.is_nan());
}

#[test]
fn report_files_read_back_and_rewritten_are_byte_identical() {
    for report in [full_report(), sparse_report()] {
        let first = tempfile::tempdir().unwrap();
        write_report(first.path(), &report).unwrap();
        let back: EvalReport = cappa_io::read_json(&first.path().join("results.json")).unwrap();
        let second = tempfile::tempdir().unwrap();
        write_report(second.path(), &back).unwrap();
        let files = |dir: &std::path::Path| -> BTreeMap<String, Vec<u8>> {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|entry| {
                    let path = entry.unwrap().path();
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    (name, std::fs::read(&path).unwrap())
                })
                .collect()
        };
        let (written, rewritten) = (files(first.path()), files(second.path()));
        assert_eq!(written, rewritten);
        // Tasks that did not run have no file.
        let expected: &[&str] = if report.perplexity.is_some() {
            &[
                "captioning_beam.json",
                "captioning_greedy.json",
                "compositional.json",
                "compositional_files.json",
                "few_shot.json",
                "linear_probe.json",
                "perplexity.json",
                "results.json",
                "retrieval.json",
                "transfer.json",
                "zero_shot.json",
            ]
        } else {
            &[
                "compositional.json",
                "compositional_files.json",
                "few_shot.json",
                "linear_probe.json",
                "results.json",
                "zero_shot.json",
            ]
        };
        assert_eq!(
            written.keys().map(String::as_str).collect::<Vec<_>>(),
            expected
        );
    }
}

/// The layout of today's reports, written out: fields in declaration order, the model kind
/// and task names as strings, options as null.
#[test]
fn the_json_layout_is_unchanged() {
    let text = serde_json::to_string(&sparse_report()).unwrap();
    assert_eq!(
        text,
        concat!(
            r#"{"model_kind":"contrastive","test_images":0,"few_shot":{},"zero_shot":{},"#,
            r#""retrieval":null,"retrieval_skipped":"too many pairs","linear_probe":{},"#,
            r#""compositional":{},"compositional_files":{},"captioning_greedy":null,"#,
            r#""captioning_beam":null,"sample_captions":[],"perplexity":null,"transfer":null,"#,
            r#""seconds":{"probes":1.5,"zero_shot":0.5}}"#
        )
    );
    let full = serde_json::to_value(full_report()).unwrap();
    assert_eq!(full["model_kind"], "captioner");
    assert_eq!(
        full["few_shot"]["shape"][0],
        serde_json::json!({"shots": 5, "mean_accuracy": 0.1 + 0.2, "accuracies": [0.3, 1.0 / 3.0, 0.2]})
    );
    assert_eq!(
        full["retrieval"]["image_to_text"],
        serde_json::json!({"r1": 0.125, "r5": 0.5, "r10": 1.0})
    );
}

/// `seconds` is keyed by an enum whose order is its names' order, so the map serialises as the
/// string-keyed map did.
#[test]
fn timed_tasks_sort_as_their_names() {
    let seconds = &full_report().seconds;
    let names: Vec<String> = seconds
        .keys()
        .map(|task| {
            serde_json::to_value(task)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 8);
    assert_eq!(names[0], "captioning_beam");
}
