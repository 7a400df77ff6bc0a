//! Real-benchmark evaluation end to end: tiny fixtures in every format the suites read
//! (ImageFolder PNGs, CLIP_benchmark webdataset shards of WebP + `.cls` / multi-line `.txt`,
//! CSV, Karpathy and COCO JSON, SugarCrepe and ARO, VQA v2), evaluated through
//! `cappa_eval::benchmarks` with stub models whose answers are known: images are solid
//! colours, and the stubs see the colour of an image and the colour word of a text.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use cappa_data::pipeline::Normalize;
use cappa_data::tokenizer::Tokenizer;
use cappa_eval::benchmarks::{self, BenchmarkReport, BenchmarkResults, Context};
use cappa_eval::images::FeatureCache;
use cappa_eval::model::{Captioner, Evaluable, ImageEncoder, ScoreKind, TextScorer};
use cappa_eval::suite::Suite;
use cappa_models::GenerateConfig;
use tch::{Device, Kind, Tensor};

const COLOURS: [(&str, [u8; 3]); 3] = [
    ("red", [250, 10, 10]),
    ("green", [10, 250, 10]),
    ("blue", [10, 10, 250]),
];

fn tokenizer() -> Tokenizer {
    let texts = (0..40).map(|i| {
        format!("a photo of a red green blue thing number {i}, what colour is it? answer: yes")
    });
    Tokenizer::train_bpe(texts, 400, true).unwrap()
}

/// Sees colours: an image's side is its mean colour mapped to [0, 1] and normalised; a text's
/// is the one-hot of the first colour word in it (a uniform vector without one).
struct Stub {
    tokenizer: Tokenizer,
    kind: ScoreKind,
    /// Image batches prepared, to see the feature cache at work.
    prepared: Cell<usize>,
}

impl Stub {
    fn new(kind: ScoreKind) -> Self {
        Stub {
            tokenizer: tokenizer(),
            kind,
            prepared: Cell::new(0),
        }
    }

    fn colour(images: &Tensor) -> Tensor {
        let mean = images.mean_dim(&[2i64, 3][..], false, Kind::Float); // (B, 3) in [-1, 1]
        let unit = (mean + 1.0) / 2.0;
        &unit / unit.norm_scalaropt_dim(2, &[1i64][..], true)
    }

    fn text_colour(&self, row: &[i64]) -> [f32; 3] {
        let text = self.tokenizer.decode(row);
        for word in text.split(|c: char| !c.is_alphabetic()) {
            if let Some(k) = COLOURS.iter().position(|(name, _)| *name == word) {
                let mut v = [0.0; 3];
                v[k] = 1.0;
                return v;
            }
        }
        [0.577; 3]
    }

    fn text_colours(&self, tokens: &Tensor) -> Tensor {
        let size = tokens.size();
        let rows = tokens.reshape([-1, *size.last().unwrap()]);
        let ids: Vec<Vec<i64>> = Vec::try_from(&rows).unwrap();
        let values: Vec<f32> = ids.iter().flat_map(|r| self.text_colour(r)).collect();
        let mut shape: Vec<i64> = size[..size.len() - 1].to_vec();
        shape.push(3);
        Tensor::from_slice(&values).view(shape.as_slice())
    }
}

impl ImageEncoder for Stub {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn image_size(&self) -> i64 {
        16
    }
    fn probe_features(&self, images: &Tensor) -> Tensor {
        Stub::colour(images)
    }
    fn image_tokens(&self, images: &Tensor) -> Tensor {
        Stub::colour(images).unsqueeze(1).repeat([1, 4, 1])
    }
}

impl TextScorer for Stub {
    fn score_kind(&self) -> ScoreKind {
        self.kind
    }
    fn prepare_images(&self, images: &Tensor) -> Tensor {
        self.prepared.set(self.prepared.get() + 1);
        Stub::colour(images)
    }
    fn prepare_texts(&self, tokens: &Tensor) -> Tensor {
        match self.kind {
            ScoreKind::Similarity => {
                let v = self.text_colours(tokens);
                &v / v.norm_scalaropt_dim(2, &[-1i64][..], true)
            }
            ScoreKind::LogLikelihood => tokens.shallow_clone(),
        }
    }
    fn score_prepared(&self, images: &Tensor, texts: &Tensor) -> Tensor {
        let texts = match self.kind {
            ScoreKind::Similarity => texts.shallow_clone(),
            ScoreKind::LogLikelihood => self.text_colours(texts),
        };
        let scores = cappa_eval::model::embedding_similarity(images, &texts.to_kind(Kind::Float));
        match self.kind {
            ScoreKind::Similarity => scores,
            // A log-likelihood: 0 for the right colour, lower for others.
            ScoreKind::LogLikelihood => (scores - 1.0) * 10.0,
        }
    }
}

impl Captioner for Stub {
    /// "a photo of a COLOUR thing", the image's colour.
    fn generate(&self, images: &Tensor, _config: &GenerateConfig) -> Vec<Vec<i64>> {
        let best: Vec<i64> = Vec::try_from(Stub::colour(images).argmax(1, false)).unwrap();
        best.iter()
            .map(|&k| {
                let text = format!("a photo of a {} thing", COLOURS[k as usize].0);
                self.tokenizer
                    .encode(&text, 24)
                    .into_iter()
                    .take_while(|&id| {
                        id != self.tokenizer.eos_id() && id != self.tokenizer.pad_id()
                    })
                    .collect()
            })
            .collect()
    }
}

fn solid(colour: [u8; 3]) -> image::RgbImage {
    image::RgbImage::from_pixel(20, 20, image::Rgb(colour))
}

fn png(path: &Path, colour: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    solid(colour).save(path).unwrap();
}

fn webp(colour: [u8; 3]) -> Vec<u8> {
    let mut bytes = Vec::new();
    solid(colour)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::WebP,
        )
        .unwrap();
    bytes
}

/// A tar of `(name, bytes)` members.
fn tar(path: &Path, members: &[(String, Vec<u8>)]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, data.as_slice())
            .unwrap();
    }
    builder.finish().unwrap();
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Opens and runs every benchmark of the suite file `text` (written into `dir`).
fn run_suite(dir: &Path, text: &str, model: &Stub, cache: Option<PathBuf>) -> Vec<BenchmarkReport> {
    let file = dir.join("suite.json");
    write(&file, text);
    let suite = Suite::resolve(file.to_str().unwrap()).unwrap();
    suite.check().unwrap();
    let evaluable = match model.kind {
        ScoreKind::Similarity => Evaluable::Contrastive(model),
        ScoreKind::LogLikelihood => Evaluable::Captioner(model),
    };
    let mut context = Context::new(evaluable, &model.tokenizer, 24, Normalize::MinusOneToOne);
    context.batch = 4;
    context.cache = cache.map(|dir| FeatureCache {
        dir,
        model: "stub".into(),
    });
    suite
        .benchmarks
        .iter()
        .map(|b| benchmarks::run(&context, &benchmarks::open(b).unwrap()).unwrap())
        .collect()
}

fn image_folder(root: &Path, per_class: usize) {
    for (name, colour) in COLOURS {
        for k in 0..per_class {
            png(&root.join(name).join(format!("{k}.png")), colour);
        }
    }
}

const IMAGE_FOLDER_SUITE: &str = r#"{"name": "t", "benchmarks": [{"name": "colours",
    "task": "classification",
    "data": {"format": "image_folder", "train": "train", "test": "test"},
    "few_shot": {"shots": [1, 2], "seeds": 2},
    "linear": {"l2": 0.01}}]}"#;

#[test]
fn image_folder_classification_zero_shot_few_shot_and_linear() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(&dir.path().join("train"), 6);
    image_folder(&dir.path().join("test"), 2);
    // A broken image is skipped and counted, not fatal.
    write(&dir.path().join("test/red/broken.png"), "not a png");
    for kind in [ScoreKind::Similarity, ScoreKind::LogLikelihood] {
        let model = Stub::new(kind);
        let reports = run_suite(dir.path(), IMAGE_FOLDER_SUITE, &model, None);
        let BenchmarkResults::Classification(r) = &reports[0].results else {
            panic!("a classification result")
        };
        assert_eq!((r.classes, r.test_images, r.train_images), (3, 6, Some(18)));
        let zero_shot = r.zero_shot.unwrap();
        assert_eq!(zero_shot.acc1, 1.0, "{kind:?}");
        assert_eq!(zero_shot.acc5, 1.0);
        assert_eq!(zero_shot.mean_per_class_recall, 1.0);
        assert_eq!(r.few_shot.len(), 2);
        assert!(
            r.few_shot.iter().all(|f| f.mean_accuracy == 1.0),
            "{:?}",
            r.few_shot
        );
        let linear = r.linear.as_ref().unwrap();
        assert_eq!((linear.l2, linear.validated), (0.01, false));
        assert_eq!(linear.metrics.acc1, 1.0);
        assert_eq!(reports[0].splits["test"].skipped.total(), 1);
        let metrics = reports[0].results.metrics();
        assert_eq!(metrics["zero_shot/acc1"], 1.0);
        assert_eq!(metrics["few_shot/2shot"], 1.0);
    }
}

#[test]
fn the_feature_cache_serves_a_rerun_without_the_model() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(&dir.path().join("train"), 3);
    image_folder(&dir.path().join("test"), 2);
    let suite = IMAGE_FOLDER_SUITE.replace(r#""linear": {"l2": 0.01}"#, r#""linear": null"#);
    let cache = dir.path().join("cache");
    let model = Stub::new(ScoreKind::Similarity);
    let first = run_suite(dir.path(), &suite, &model, Some(cache.clone()));
    let calls = model.prepared.get();
    assert!(calls > 0);
    let again = run_suite(dir.path(), &suite, &model, Some(cache.clone()));
    assert_eq!(
        model.prepared.get(),
        calls,
        "the rerun read its features from the cache"
    );
    assert_eq!(first[0].results, again[0].results);
    // Another transform is another entry.
    let cropped = suite.replace(
        r#""name": "colours","#,
        r#""name": "colours", "crop_fraction": 0.875,"#,
    );
    run_suite(dir.path(), &cropped, &model, Some(cache));
    assert!(model.prepared.get() > calls);
}

/// CLIP_benchmark's classification layout with two shards; one sample's image is broken.
fn clip_benchmark_classification(root: &Path) {
    write(&root.join("classnames.txt"), "red\ngreen\nblue\n");
    write(
        &root.join("zeroshot_classification_templates.txt"),
        "a photo of a {c}.\na {c} thing.\n",
    );
    for (split, per_class) in [("test", 2), ("train", 3)] {
        let mut shards: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(), Vec::new()];
        let mut n = 0;
        for (label, (_, colour)) in COLOURS.iter().enumerate() {
            for _ in 0..per_class {
                let key = format!("s{n:04}");
                let shard = &mut shards[n % 2];
                shard.push((format!("{key}.webp"), webp(*colour)));
                shard.push((format!("{key}.cls"), format!("{label}\n").into_bytes()));
                n += 1;
            }
        }
        if split == "test" {
            shards[0].push(("bad.webp".into(), b"RIFF0000WEBPnope".to_vec()));
            shards[0].push(("bad.cls".into(), b"0".to_vec()));
        }
        for (k, members) in shards.iter().enumerate() {
            tar(&root.join(split).join(format!("{k}.tar")), members);
        }
        write(&root.join(split).join("nshards.txt"), "2\n");
    }
}

#[test]
fn clip_benchmark_classification_reads_webp_and_cls() {
    let dir = tempfile::tempdir().unwrap();
    clip_benchmark_classification(&dir.path().join("wds_colours"));
    let suite = r#"{"name": "t", "benchmarks": [{"name": "wds", "task": "classification",
        "data": {"format": "clip_benchmark", "root": "wds_colours"},
        "few_shot": {"shots": [1], "seeds": 1}, "train_per_class": 2}]}"#;
    let model = Stub::new(ScoreKind::Similarity);
    let reports = run_suite(dir.path(), suite, &model, None);
    let BenchmarkResults::Classification(r) = &reports[0].results else {
        panic!("a classification result")
    };
    assert_eq!(r.test_images, 6);
    assert_eq!(r.train_images, Some(6), "two per class");
    assert_eq!(r.zero_shot.unwrap().acc1, 1.0);
    assert_eq!(reports[0].splits["test"].skipped.total(), 1);
}

#[test]
fn csv_classification_and_labels_the_class_names_do_not_cover() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = String::from("filepath,label\n");
    for (label, (name, colour)) in COLOURS.iter().enumerate() {
        png(&dir.path().join(format!("img/{name}.png")), *colour);
        rows.push_str(&format!("img/{name}.png,{label}\n"));
    }
    write(&dir.path().join("test.csv"), &rows);
    write(&dir.path().join("names.txt"), "red\ngreen\nblue\n");
    let suite = r#"{"name": "t", "benchmarks": [{"name": "csv", "task": "classification",
        "data": {"format": "csv", "test": "test.csv", "class_names": "names.txt"},
        "few_shot": null, "linear": null}]}"#;
    let model = Stub::new(ScoreKind::Similarity);
    let reports = run_suite(dir.path(), suite, &model, None);
    let BenchmarkResults::Classification(r) = &reports[0].results else {
        panic!("a classification result")
    };
    assert_eq!(r.zero_shot.unwrap().acc1, 1.0);
    // Two names for three labels: refused when opening, naming the files.
    write(&dir.path().join("names.txt"), "red\ngreen\n");
    let file = dir.path().join("suite.json");
    let suite = Suite::resolve(file.to_str().unwrap()).unwrap();
    let error = benchmarks::open(&suite.benchmarks[0])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("test.csv") && error.contains("names.txt"),
        "{error}"
    );
}

#[test]
fn templates_without_the_class_placeholder_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(&dir.path().join("test"), 1);
    write(
        &dir.path().join("templates.txt"),
        "a photo of a {c}.\na photo of a {}.\n",
    );
    let text = r#"{"name": "t", "benchmarks": [{"name": "c", "task": "classification",
        "data": {"format": "image_folder", "test": "test"}, "templates": "templates.txt"}]}"#;
    let file = dir.path().join("suite.json");
    write(&file, text);
    let suite = Suite::resolve(file.to_str().unwrap()).unwrap();
    let error = benchmarks::open(&suite.benchmarks[0])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("templates.txt") && error.contains("line 2") && error.contains("{c}"),
        "{error}"
    );
}

/// Six images, two of each colour, each with two captions naming its colour.
fn karpathy(dir: &Path) {
    let mut images = Vec::new();
    for k in 0..6 {
        let (name, colour) = COLOURS[k % 3];
        png(&dir.join(format!("images/val/{k}.png")), colour);
        let split = if k < 4 { "test" } else { "train" };
        images.push(serde_json::json!({
            "filepath": "val", "filename": format!("{k}.png"), "imgid": k, "split": split,
            "sentences": [{"raw": format!("a {name} thing")}, {"raw": format!("something {name}")}]
        }));
    }
    let file = serde_json::json!({ "images": images, "dataset": "colours" });
    write(&dir.join("karpathy.json"), &file.to_string());
}

#[test]
fn karpathy_retrieval_and_captioning() {
    let dir = tempfile::tempdir().unwrap();
    karpathy(dir.path());
    let suite = r#"{"name": "t", "benchmarks": [{"name": "k", "task": "retrieval",
        "data": {"format": "karpathy", "annotations": "karpathy.json", "images": "images"},
        "likelihood": true, "beam": 2}]}"#;
    for kind in [ScoreKind::Similarity, ScoreKind::LogLikelihood] {
        let model = Stub::new(kind);
        let reports = run_suite(dir.path(), suite, &model, None);
        let BenchmarkResults::Retrieval(r) = &reports[0].results else {
            panic!("a retrieval result")
        };
        assert_eq!((r.images, r.texts), (4, 8));
        let recall = r.retrieval.unwrap();
        // Images 0 and 3 are both red and their four captions tie; ties rank by index, so
        // image 3's own captions come after image 0's (a miss at 1, a hit at 5), and image 3's
        // captions find image 0 first (two of eight text queries miss at 1).
        assert_eq!(recall.image_to_text.r1, 3.0 / 4.0, "{kind:?}");
        assert_eq!(recall.image_to_text.r5, 1.0);
        assert_eq!(recall.text_to_image.r1, 6.0 / 8.0, "{kind:?}");
        assert_eq!(recall.text_to_image.r5, 1.0);
        if kind == ScoreKind::LogLikelihood {
            let greedy = r.captioning_greedy.as_ref().unwrap();
            assert_eq!(greedy.images, 4);
            assert!(r.captioning_beam.is_some());
            assert_eq!(r.sample_captions[0], "a photo of a red thing");
        } else {
            assert!(r.captioning_greedy.is_none());
        }
    }
}

#[test]
fn likelihood_retrieval_above_the_pair_limit_is_skipped_with_how_to_raise_it() {
    let dir = tempfile::tempdir().unwrap();
    karpathy(dir.path());
    let suite = r#"{"name": "t", "benchmarks": [{"name": "k", "task": "retrieval",
        "data": {"format": "karpathy", "annotations": "karpathy.json", "images": "images"},
        "likelihood": true, "max_pairs": 10, "captioning": false}]}"#;
    let model = Stub::new(ScoreKind::LogLikelihood);
    let reports = run_suite(dir.path(), suite, &model, None);
    let BenchmarkResults::Retrieval(r) = &reports[0].results else {
        panic!("a retrieval result")
    };
    assert!(r.retrieval.is_none());
    let why = r.retrieval_skipped.as_ref().unwrap();
    assert!(why.contains("32") && why.contains("max_pairs"), "{why}");
}

#[test]
fn a_karpathy_file_without_the_split_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    karpathy(dir.path());
    let text = r#"{"name": "t", "benchmarks": [{"name": "k", "task": "retrieval",
        "data": {"format": "karpathy", "annotations": "karpathy.json", "images": "images",
                 "split": "val"}}]}"#;
    let file = dir.path().join("suite.json");
    write(&file, text);
    let suite = Suite::resolve(file.to_str().unwrap()).unwrap();
    let error = benchmarks::open(&suite.benchmarks[0])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("karpathy.json") && error.contains("`val`"),
        "{error}"
    );
}

#[test]
fn coco_and_clip_benchmark_retrieval() {
    let dir = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    let mut members = Vec::new();
    for (k, (name, colour)) in COLOURS.iter().enumerate() {
        png(&dir.path().join(format!("coco/{k}.png")), *colour);
        images.push(serde_json::json!({"id": k, "file_name": format!("{k}.png")}));
        for j in 0..2 {
            annotations.push(serde_json::json!({
                "id": 10 * k + j, "image_id": k, "caption": format!("a {name} picture {j}")
            }));
        }
        members.push((format!("{k:03}.webp"), webp(*colour)));
        members.push((
            format!("{k:03}.txt"),
            format!("a {name} thing\n\nthe colour {name}\n").into_bytes(),
        ));
    }
    let coco = serde_json::json!({ "images": images, "annotations": annotations });
    write(&dir.path().join("captions.json"), &coco.to_string());
    let root = dir.path().join("wds_colours");
    tar(&root.join("test/0.tar"), &members);
    write(&root.join("test/nshards.txt"), "1");
    write(&root.join("dataset_type.txt"), "retrieval\n");
    let suite = r#"{"name": "t", "benchmarks": [
        {"name": "coco", "task": "retrieval",
         "data": {"format": "coco", "annotations": "captions.json", "images": "coco"}},
        {"name": "wds", "task": "retrieval", "data": {"format": "clip_benchmark", "root": "wds_colours"}}]}"#;
    let model = Stub::new(ScoreKind::Similarity);
    for report in run_suite(dir.path(), suite, &model, None) {
        let BenchmarkResults::Retrieval(r) = &report.results else {
            panic!("a retrieval result")
        };
        assert_eq!(
            (r.images, r.texts),
            (3, 6),
            "{}: two captions per image",
            report.name
        );
        let recall = r.retrieval.unwrap();
        assert_eq!(recall.image_to_text.r1, 1.0);
        assert_eq!(recall.text_to_image.r1, 1.0);
    }
}

#[test]
fn sugarcrepe_and_aro_accuracy_per_file_and_subtype() {
    let dir = tempfile::tempdir().unwrap();
    for (name, colour) in COLOURS {
        png(&dir.path().join(format!("img/{name}.png")), colour);
    }
    // Item 2's "true" caption names the wrong colour: 2 of 3 correct.
    let sugarcrepe = r#"{"0": {"filename": "red.png", "caption": "a red thing", "negative_caption": "a blue thing"},
        "1": {"filename": "green.png", "caption": "a green thing", "negative_caption": "a red thing"},
        "2": {"filename": "blue.png", "caption": "a red thing", "negative_caption": "a blue thing"}}"#;
    write(&dir.path().join("swap_att.json"), sugarcrepe);
    // VG-Relation: boxes crop the image; the relation names the sub-type. An item is correct
    // only when the true caption beats every negative.
    let aro = r#"[
        {"image_path": "red.png", "bbox_x": 2, "bbox_y": 2, "bbox_w": 10, "bbox_h": 10,
         "relation_name": "on", "true_caption": "the red one", "false_caption": "the green one"},
        {"image_path": "green.png", "bbox_x": 0, "bbox_y": 0, "bbox_w": 20, "bbox_h": 20,
         "relation_name": "on", "true_caption": "the green one", "false_caption": "the blue one"},
        {"image_path": "blue.png", "bbox_x": 0, "bbox_y": 0, "bbox_w": 20, "bbox_h": 20,
         "relation_name": "under", "true_caption": "the green one", "false_caption": "the blue one"}]"#;
    write(&dir.path().join("visual_genome_relation.json"), aro);
    let order = r#"[{"image_path": "red.png", "true_caption": "a red thing",
        "false_captions": ["thing a red", "red a thing", "a thing blue"]}]"#;
    write(&dir.path().join("coco_order.json"), order);
    let suite = r#"{"name": "t", "benchmarks": [
        {"name": "sc", "task": "compositional", "format": "sugarcrepe", "files": ["swap_att.json"], "images": "img"},
        {"name": "aro", "task": "compositional", "format": "aro",
         "files": ["visual_genome_relation.json", "coco_order.json"], "images": "img"}]}"#;
    for kind in [ScoreKind::Similarity, ScoreKind::LogLikelihood] {
        let model = Stub::new(kind);
        let reports = run_suite(dir.path(), suite, &model, None);
        let BenchmarkResults::Compositional(sc) = &reports[0].results else {
            panic!("a compositional result")
        };
        assert!(
            (sc.files["swap_att"]["all"] - 2.0 / 3.0).abs() < 1e-12,
            "{kind:?}"
        );
        let BenchmarkResults::Compositional(aro) = &reports[1].results else {
            panic!("a compositional result")
        };
        let relation = &aro.files["visual_genome_relation"];
        assert!((relation["all"] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(relation["subtype:on"], 1.0);
        assert_eq!(relation["subtype:under"], 0.0);
        assert_eq!(relation["macro"], 0.5);
        // "thing a red" and "red a thing" tie with the truth for a colour stub: not correct.
        assert_eq!(aro.files["coco_order"]["all"], 0.0);
    }
}

#[test]
fn vqa_v2_transfer_runs_on_train_and_scores_val() {
    let dir = tempfile::tempdir().unwrap();
    for (split, ids) in [("train2014", 1..7u64), ("val2014", 11..14u64)] {
        let mut questions = Vec::new();
        let mut annotations = Vec::new();
        for id in ids {
            let (name, colour) = COLOURS[id as usize % 3];
            png(
                &dir.path()
                    .join(format!("coco/{split}/COCO_{split}_{id:012}.png")),
                colour,
            );
            // PNG bytes under the .jpg name VQA v2 uses: the decoder reads the content.
            std::fs::rename(
                dir.path()
                    .join(format!("coco/{split}/COCO_{split}_{id:012}.png")),
                dir.path()
                    .join(format!("coco/{split}/COCO_{split}_{id:012}.jpg")),
            )
            .unwrap();
            questions.push(serde_json::json!({
                "image_id": id, "question_id": id * 10, "question": "what colour is it?"
            }));
            let answers: Vec<_> = (0..10)
                .map(|k| serde_json::json!({"answer": name, "answer_id": k + 1}))
                .collect();
            annotations.push(serde_json::json!({
                "image_id": id, "question_id": id * 10, "answers": answers,
                "multiple_choice_answer": name, "answer_type": "other", "question_type": "what"
            }));
        }
        write(
            &dir.path().join(format!("vqa/{split}_questions.json")),
            &serde_json::json!({ "questions": questions }).to_string(),
        );
        write(
            &dir.path().join(format!("vqa/{split}_annotations.json")),
            &serde_json::json!({ "annotations": annotations }).to_string(),
        );
    }
    let suite = r#"{"name": "t", "benchmarks": [{"name": "vqa", "task": "vqa", "steps": 3,
        "train": {"questions": "vqa/train2014_questions.json", "annotations": "vqa/train2014_annotations.json", "images": "coco/train2014"},
        "val": {"questions": "vqa/val2014_questions.json", "annotations": "vqa/val2014_annotations.json", "images": "coco/val2014"}}]}"#;
    let model = Stub::new(ScoreKind::Similarity);
    let reports = run_suite(dir.path(), suite, &model, None);
    let BenchmarkResults::Vqa(r) = &reports[0].results else {
        panic!("a VQA result")
    };
    assert_eq!((r.train_questions, r.val_questions), (6, 3));
    assert!((0.0..=1.0).contains(&r.accuracy));
    assert!(r.final_loss.is_finite());
    // Questions without annotations are refused when opening, naming the file.
    write(
        &dir.path().join("vqa/val2014_annotations.json"),
        r#"{"annotations": []}"#,
    );
    let file = dir.path().join("suite.json");
    let suite = Suite::resolve(file.to_str().unwrap()).unwrap();
    let error = benchmarks::open(&suite.benchmarks[0])
        .unwrap_err()
        .to_string();
    assert!(error.contains("val2014_annotations.json"), "{error}");
}
