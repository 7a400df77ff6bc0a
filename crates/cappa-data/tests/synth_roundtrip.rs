//! The scene world written by `write_synth` and read back by the real readers gives the same
//! samples: identical pixels (PNG), the training caption, and evaluation sets whose labels,
//! captions and negatives are those of the scene graphs.

use std::path::Path;

use cappa_data::pipeline::{decode, DecodeLimits};
use cappa_data::readers::{
    read_karpathy, read_sugarcrepe, read_vqa, ImageFolder, KarpathySplit, Restval, WebDataset,
};
use cappa_data::scene::{
    write_synth, ImageFormat, LabelSet, SceneConfig, SceneWorld, Split, SynthConfig, SynthReport,
};

#[test]
fn synth_shards_and_eval_sets_read_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let config = SynthConfig {
        world: SceneConfig {
            image_size: 32,
            ..SceneConfig::default()
        },
        seed: 5,
        train_samples: 23,
        eval_samples: 12,
        shard_size: 10,
        image_format: ImageFormat::Png,
    };
    let report = write_synth(dir.path(), &config).unwrap();
    assert_eq!(report.shards.len(), 3);
    check_training_shards(&report, &config);
    let eval = SceneWorld::with_split(config.world.clone(), config.seed, Split::Eval).unwrap();
    let eval_dir = dir.path().join("eval");
    check_karpathy_and_classify(&eval_dir, &eval, 12);
    check_sugarcrepe_and_vqa(&eval_dir, &report);
}

/// Training shards: same pixels and training caption as generating the sample directly.
fn check_training_shards(report: &SynthReport, config: &SynthConfig) {
    let world = SceneWorld::new(config.world.clone(), config.seed).unwrap();
    let mut reader = WebDataset::new(report.shards.clone());
    let samples: Vec<_> = reader.by_ref().map(Result::unwrap).collect();
    assert_eq!(samples.len() as u64, config.train_samples);
    assert_eq!(reader.stats().bad(), 0);
    for (index, sample) in samples.iter().enumerate() {
        let expected = world.sample(index as u64);
        let pixels = decode(&sample.image, &DecodeLimits::default()).unwrap();
        let cappa_data::ImageData::Rgb(expected_pixels) = &expected.image else {
            panic!("the world renders pixels")
        };
        assert_eq!(&pixels, expected_pixels, "sample {index}");
        assert_eq!(
            sample.captions,
            vec![expected.meta["training_caption"]
                .as_str()
                .unwrap()
                .to_owned()]
        );
    }
}

/// The Karpathy file and the count ImageFolder, read with the real readers, agree with the
/// held-out scene graphs.
fn check_karpathy_and_classify(eval_dir: &Path, eval: &SceneWorld, count: usize) {
    let karpathy = read_karpathy(
        &eval_dir.join("karpathy.json"),
        eval_dir,
        KarpathySplit::Test,
        Restval::AsTrain,
    )
    .unwrap();
    assert_eq!(karpathy.len(), count);
    let first = karpathy[0].load().unwrap();
    assert_eq!(first.captions, eval.captions(&eval.scene(0), 0));

    let folder = ImageFolder::open(&eval_dir.join("classify").join("count")).unwrap();
    assert_eq!(folder.records.len(), count);
    for (path, label) in folder.labelled_paths() {
        let index: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let class = &folder.classes[label];
        let truth = eval.class_names(LabelSet::Count)
            [eval.label(&eval.scene(index), LabelSet::Count)]
        .replace(' ', "_");
        assert_eq!(class, &truth, "image {index}");
    }
}

/// The SugarCrepe and VQA readers accept what synth wrote.
fn check_sugarcrepe_and_vqa(eval_dir: &Path, report: &SynthReport) {
    let swaps = read_sugarcrepe(
        &eval_dir.join("compositional").join("attribute_swap.json"),
        &eval_dir.join("images"),
    )
    .unwrap();
    assert!(!swaps.is_empty());
    for item in &swaps {
        assert!(item.image_path.exists());
        assert_ne!(item.caption, item.negatives[0]);
    }

    let vqa = read_vqa(
        &eval_dir.join("vqa").join("questions.json"),
        Some(&eval_dir.join("vqa").join("annotations.json")),
    )
    .unwrap();
    assert_eq!(vqa.len(), report.vqa_questions);
    assert!(vqa.iter().all(|q| !q.answers.is_empty()));
}
