//! The readers of evaluation benchmarks over real files: CLIP_benchmark's webdataset layout
//! with WebP images in tar shards, ImageFolder trees with a class-name file, labelled CSV
//! tables, ARO files and the official VQA accuracy.

mod common;

use std::path::{Path, PathBuf};

use cappa_data::error::DataError;
use cappa_data::readers::{
    read_aro, read_class_names, read_labelled_csv, vqa_accuracy, ClipBenchmark, ClipBenchmarkKind,
    FileRecord, ImageFolder, TextMembers, WebDataset,
};
use cappa_data::{ImageData, Sample, SkipReason};

/// A lossless WebP image whose pixels depend on `seed`.
fn webp(seed: u8) -> (Vec<u8>, image::RgbImage) {
    let pixels = image::RgbImage::from_fn(6, 5, |x, y| {
        image::Rgb([x as u8 * 40 + seed, y as u8 * 50, seed.wrapping_mul(3)])
    });
    let mut bytes = Vec::new();
    pixels
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::WebP,
        )
        .unwrap();
    (bytes, pixels)
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Writes a tar shard of `(member name, bytes)` with the `tar` crate.
fn write_tar(path: &Path, members: &[(String, Vec<u8>)]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, name, data.as_slice())
            .unwrap();
    }
    builder.finish().unwrap();
}

fn decoded(sample: &Sample) -> image::RgbImage {
    let ImageData::Encoded(bytes) = &sample.image else {
        panic!("readers deliver encoded images");
    };
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

/// A CLIP_benchmark classification dataset as `clip_benchmark convert` writes it: labels
/// `[2, 0, 1]` then `[1]` in two shards of the `test` split, and one sample without `.cls`.
fn classification_dataset(root: &Path) -> Vec<(u8, i64)> {
    write(&root.join("classnames.txt"), b"airplane\nbird\n\ncat\n");
    write(
        &root.join("zeroshot_classification_templates.txt"),
        b"a photo of a {c}.\na blurry photo of a {c}.\n",
    );
    write(&root.join("test/nshards.txt"), b"2\n");
    let labelled = vec![(10, 2), (20, 0), (30, 1), (40, 1)];
    let member = |i: usize, (seed, label): (u8, i64)| {
        [
            (format!("s{i:07}.webp"), webp(seed).0),
            (format!("s{i:07}.cls"), label.to_string().into_bytes()),
        ]
    };
    let mut first: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, &item) in labelled[..3].iter().enumerate() {
        first.extend(member(i, item));
    }
    first.push(("unlabelled.webp".into(), webp(0).0));
    write_tar(&root.join("test/0.tar"), &first);
    write_tar(&root.join("test/1.tar"), &member(3, labelled[3]));
    labelled
}

#[test]
fn clip_benchmark_classification_yields_labelled_webp_images() {
    let dir = tempfile::tempdir().unwrap();
    let labelled = classification_dataset(dir.path());
    let opened = ClipBenchmark::open(dir.path(), "test").unwrap();
    assert_eq!(opened.kind, ClipBenchmarkKind::Classification);
    assert_eq!(opened.class_names, ["airplane", "bird", "cat"]);
    assert_eq!(
        opened.templates,
        ["a photo of a {c}.", "a blurry photo of a {c}."]
    );
    assert_eq!(opened.split, "test");
    assert_eq!(opened.text_members(), TextMembers::Label);
    let mut reader = opened.samples();
    let items: Vec<_> = reader.by_ref().collect();
    let good: Vec<&Sample> = items.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(good.len(), labelled.len());
    for (sample, &(seed, label)) in good.iter().zip(&labelled) {
        assert_eq!(sample.meta["label"], label);
        assert!(sample.captions.is_empty());
        assert_eq!(decoded(sample), webp(seed).1, "{}", sample.key);
    }
    assert_eq!(good[3].key, "s0000003");
    assert_eq!(reader.stats().skips.get(SkipReason::MissingLabel), 1);
    assert_eq!(reader.stats().seen, 5);
    // The shards can be read in any other mode too.
    let captions = WebDataset::new(opened.shards.clone())
        .filter_map(Result::err)
        .filter(|b| b.reason == SkipReason::MissingCaption)
        .count();
    assert_eq!(captions, 5);
}

#[test]
fn clip_benchmark_retrieval_yields_every_caption_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(&root.join("dataset_type.txt"), b"retrieval\n");
    write(&root.join("test/nshards.txt"), b"1");
    let captions = ["a dog on a sofa", "a brown dog", "a sofa with a dog on it"];
    write_tar(
        &root.join("test/0.tar"),
        &[
            ("s0000000.webp".into(), webp(1).0),
            (
                "s0000000.txt".into(),
                format!("{}\n", captions.join("\n")).into_bytes(),
            ),
            ("s0000001.webp".into(), webp(2).0),
            ("s0000001.txt".into(), b"\n  \n".to_vec()),
        ],
    );
    let opened = ClipBenchmark::open(root, "test").unwrap();
    assert_eq!(opened.kind, ClipBenchmarkKind::Retrieval);
    assert!(opened.class_names.is_empty(), "no classnames.txt is needed");
    let items: Vec<_> = opened.samples().collect();
    let sample = items[0].as_ref().unwrap();
    assert_eq!(sample.captions, captions);
    assert_eq!(decoded(sample), webp(1).1);
    assert_eq!(
        items[1].as_ref().unwrap_err().reason,
        SkipReason::EmptyCaption
    );
    assert_eq!(items.len(), 2);
}

#[test]
fn clip_benchmark_open_reports_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    classification_dataset(dir.path());
    write(&dir.path().join("train/nshards.txt"), b"1");
    let err = ClipBenchmark::open(dir.path(), "validation").unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("validation") && message.contains("test, train"),
        "{message}"
    );
    let err = ClipBenchmark::open(dir.path(), "train").unwrap_err();
    assert!(err.to_string().contains("0.tar"), "{err}");
    std::fs::remove_file(dir.path().join("classnames.txt")).unwrap();
    let err = ClipBenchmark::open(dir.path(), "test").unwrap_err();
    assert!(err.to_string().contains("classnames.txt"), "{err}");
}

#[test]
fn image_folder_with_class_name_file_and_labelled_csv() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("val");
    for (i, name) in ["n01440764/a.png", "n01443537/b.png", "n01443537/c.png"]
        .iter()
        .enumerate()
    {
        write(&root.join(name), &common::png(i as u32));
    }
    std::fs::create_dir_all(root.join("n01484850")).unwrap();
    let folder = ImageFolder::open(&root).unwrap();
    assert_eq!(folder.empty_classes(), ["n01484850"]);
    let names = dir.path().join("names.txt");
    write(&names, b"tench\ngoldfish\ngreat white shark\n");
    assert_eq!(
        read_class_names(&names, folder.classes.len()).unwrap(),
        ["tench", "goldfish", "great white shark"]
    );
    let err = read_class_names(&names, 1000).unwrap_err();
    assert!(matches!(err, DataError::Format { .. }), "{err}");
    assert!(
        err.to_string().contains("3 names for 1000 classes"),
        "{err}"
    );

    // The same images listed by a CSV table next to them.
    let table = dir.path().join("val.csv");
    write(
        &table,
        b"filepath,label\nval/n01440764/a.png,0\nval/n01443537/c.png,1\n",
    );
    let rows = read_labelled_csv(&table, "filepath", "label", b',').unwrap();
    assert_eq!(
        rows,
        [
            (root.join("n01440764/a.png"), 0),
            (root.join("n01443537/c.png"), 1)
        ]
    );
    for (path, label) in rows {
        let record = FileRecord {
            key: path.display().to_string(),
            path,
            captions: vec![label.to_string()],
            meta: serde_json::Value::Null,
        };
        let sample = record.load().unwrap();
        assert!(matches!(sample.image, ImageData::Encoded(ref b) if !b.is_empty()));
    }
}

#[test]
fn aro_relation_items_carry_crop_and_relation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("visual_genome_relation.json");
    write(
        &path,
        br#"[{"image_id": "2330470", "relation_name": "wearing", "bbox_x": 4, "bbox_y": 10,
              "bbox_w": 200, "bbox_h": 120, "image_path": "2330470.jpg",
              "true_caption": "the man is wearing the shirt",
              "false_caption": "the shirt is wearing the man"}]"#,
    );
    let items = read_aro(&path, Path::new("/data/vg_images")).unwrap();
    assert_eq!(
        items[0].image_path,
        PathBuf::from("/data/vg_images/2330470.jpg")
    );
    assert_eq!(items[0].subtype.as_deref(), Some("wearing"));
    assert_eq!(items[0].crop, Some([4.0, 10.0, 200.0, 120.0]));
    assert_eq!(items[0].negatives, ["the shirt is wearing the man"]);
}

#[test]
fn vqa_accuracy_matches_the_official_evaluation() {
    let answers: Vec<String> = [
        "2", "2", "two", "Two.", "3", "3", "three", "4", "2 ", "1,000",
    ]
    .map(String::from)
    .into();
    // After normalisation: five `2`, three `3`, one `4`, one `1000`.
    let close = |prediction: &str, want: f64| {
        let got = vqa_accuracy(prediction, &answers);
        assert!((got - want).abs() < 1e-12, "{prediction}: {got}");
    };
    close("2", 1.0);
    close("Two", 1.0);
    close("three", 0.9);
    close("4", 0.3);
    close("1000", 0.3);
    close("1,000", 0.3);
    close("5", 0.0);
}
