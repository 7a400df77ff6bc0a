//! Tests of the scene world: determinism, labels against the scene graph, compositional
//! negatives, rendering, captions, caption noise, configuration and the synth writer.

use std::collections::BTreeMap;
use std::io::Read;

use super::*;

fn world(seed: u64) -> SceneWorld {
    SceneWorld::new(SceneConfig::default(), seed).unwrap()
}

fn eval_world(seed: u64) -> SceneWorld {
    SceneWorld::eval(SceneConfig::default(), seed).unwrap()
}

fn words(s: &str) -> Vec<&str> {
    s.split(' ').collect()
}

fn sorted(mut v: Vec<&str>) -> Vec<&str> {
    v.sort_unstable();
    v
}

#[test]
fn same_seed_and_index_give_identical_samples_and_seeds_differ() {
    let (a, b) = (world(3), world(3));
    for index in [0, 1, 17, u64::MAX] {
        let (sa, sb) = (a.sample(index), b.sample(index));
        assert_eq!(sa, sb);
        let scene = a.scene(index);
        assert_eq!(
            a.training_caption(&scene, index),
            b.training_caption(&scene, index)
        );
    }
    // Generation order does not matter: index 5 alone equals index 5 after others.
    let fresh = world(3).sample(5);
    assert_eq!(fresh, a.sample(5));

    let other = world(4);
    let differing = (0..20)
        .filter(|&i| a.sample(i).image != other.sample(i).image)
        .count();
    assert!(
        differing >= 19,
        "only {differing} of 20 images differ between seeds"
    );
    let eval = eval_world(3);
    let differing = (0..20).filter(|&i| a.scene(i) != eval.scene(i)).count();
    assert_eq!(differing, 20, "train and eval splits share scenes");
}

#[test]
fn scene_graphs_respect_the_invariants() {
    let w = world(11);
    let mut counts = BTreeMap::new();
    for index in 0..500 {
        let scene = w.scene(index);
        let n = scene.objects.len();
        *counts.entry(n).or_insert(0) += 1;
        assert!((1..=4).contains(&n));
        let mut shapes: Vec<Shape> = scene.objects.iter().map(|o| o.shape).collect();
        shapes.sort();
        shapes.dedup();
        assert_eq!(shapes.len(), n, "shapes repeat in scene {index}");
        let largest = scene.largest();
        for (i, o) in scene.objects.iter().enumerate() {
            assert_eq!(o.cell, Cell::at(o.x, o.y));
            for v in [o.x, o.y] {
                assert!(
                    v - o.radius > -0.01 && v + o.radius < 1.01,
                    "object leaves the image"
                );
            }
            if i != largest {
                assert!(
                    o.size < scene.objects[largest].size,
                    "size tie in scene {index}"
                );
                assert!(o.radius < scene.objects[largest].radius);
            }
            for other in &scene.objects[i + 1..] {
                assert_ne!(o.cell, other.cell, "cell shared in scene {index}");
            }
        }
        for r in scene.relations() {
            let (a, b) = (&scene.objects[r.subject], &scene.objects[r.object]);
            match r.kind {
                RelationKind::LeftOf => assert!(a.x < b.x),
                RelationKind::RightOf => assert!(a.x > b.x),
                RelationKind::Above => assert!(a.y < b.y),
                RelationKind::Below => assert!(a.y > b.y),
            }
        }
    }
    assert_eq!(counts.len(), 4, "not every object count occurs: {counts:?}");
}

#[test]
fn labels_agree_with_the_scene_graph() {
    let w = eval_world(2);
    let config = w.config().clone();
    for label_set in LabelSet::ALL {
        let names = w.class_names(label_set);
        let expected = match label_set {
            LabelSet::Shape => 8,
            LabelSet::Count => 4,
            LabelSet::Colour => 10,
            LabelSet::ShapeColour => 80,
        };
        assert_eq!(names.len(), expected, "{label_set:?}");
    }
    for index in 0..300 {
        let scene = w.scene(index);
        let big = &scene.objects[scene.largest()];
        let name = |l: LabelSet| w.class_names(l)[w.label(&scene, l)].clone();
        assert_eq!(name(LabelSet::Shape), big.shape.name());
        assert_eq!(name(LabelSet::Colour), big.colour.name());
        assert_eq!(
            name(LabelSet::ShapeColour),
            format!("{} {}", big.colour.name(), big.shape.name())
        );
        assert_eq!(
            w.label(&scene, LabelSet::Count),
            scene.objects.len() - config.min_objects as usize
        );
        assert!(name(LabelSet::Count).starts_with(captions::number_word(scene.objects.len())));
    }
}

/// The index of the only position where two word lists differ, if exactly one does.
fn single_difference(a: &[&str], b: &[&str]) -> Option<usize> {
    if a.len() != b.len() {
        return None;
    }
    let diffs: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    (diffs.len() == 1).then(|| diffs[0])
}

#[test]
fn negatives_differ_from_the_truth_only_in_the_intended_way() {
    let w = eval_world(5);
    let colour_words: Vec<&str> = Colour::ALL.iter().map(|c| c.name()).collect();
    let shape_words: Vec<&str> = Shape::ALL.iter().map(|s| s.name()).collect();
    let mut made = BTreeMap::new();
    for index in 0..300 {
        let scene = w.scene(index);
        let present_colours: Vec<&str> = scene.objects.iter().map(|o| o.colour.name()).collect();
        let present_shapes: Vec<&str> = scene.objects.iter().map(|o| o.shape.name()).collect();
        for kind in CompositionKind::ALL {
            let Some(item) = w.compositional(&scene, index, kind) else {
                continue;
            };
            *made.entry(kind.name()).or_insert(0) += 1;
            assert_eq!(item.kind, kind);
            let (t, n) = (words(&item.caption), words(&item.negative_caption));
            assert_ne!(t, n, "{kind:?}: negative equals the truth");
            match kind {
                CompositionKind::AttributeSwap => {
                    assert_eq!(sorted(t.clone()), sorted(n.clone()));
                    let diffs: Vec<usize> = (0..t.len()).filter(|&i| t[i] != n[i]).collect();
                    assert_eq!(diffs.len(), 2, "{item:?}");
                    let (i, j) = (diffs[0], diffs[1]);
                    assert!(colour_words.contains(&t[i]) && colour_words.contains(&t[j]));
                    assert_eq!((t[i], t[j]), (n[j], n[i]));
                }
                CompositionKind::RelationSwap => {
                    // "a S C SHAPE <relation words> a S C SHAPE": four words per object phrase.
                    let (a, b) = (&t[..4], &t[t.len() - 4..]);
                    let rel = &t[4..t.len() - 4];
                    let mut swapped = b.to_vec();
                    swapped.extend_from_slice(rel);
                    swapped.extend_from_slice(a);
                    assert_eq!(n, swapped, "{item:?}");
                    assert!(shape_words.contains(&a[3]) && shape_words.contains(&b[3]));
                }
                CompositionKind::ObjectReplace => {
                    let i = single_difference(&t, &n).expect("exactly one word differs");
                    assert!(present_shapes.contains(&t[i]), "{item:?}");
                    assert!(shape_words.contains(&n[i]) && !present_shapes.contains(&n[i]));
                }
                CompositionKind::AttributeReplace => {
                    let i = single_difference(&t, &n).expect("exactly one word differs");
                    assert!(present_colours.contains(&t[i]), "{item:?}");
                    assert!(colour_words.contains(&n[i]) && !present_colours.contains(&n[i]));
                }
                CompositionKind::WordOrder => {
                    assert_eq!(sorted(t.clone()), sorted(n.clone()));
                }
            }
        }
    }
    for kind in CompositionKind::ALL {
        assert!(
            made.get(kind.name()).copied().unwrap_or(0) > 100,
            "{made:?}"
        );
    }
}

#[test]
fn vqa_answers_agree_with_the_scene_graph() {
    let w = eval_world(8);
    let mut answers = BTreeMap::new();
    for index in 0..300 {
        let scene = w.scene(index);
        let items = w.vqa(&scene, index);
        let kinds: Vec<VqaKind> = items.iter().map(|q| q.kind).collect();
        let expected = if scene.objects.len() > 1 { 5 } else { 4 };
        assert_eq!(kinds.len(), expected);
        for item in items {
            *answers
                .entry((item.kind.name(), item.answer.clone()))
                .or_insert(0) += 1;
            match item.kind {
                VqaKind::Count => assert_eq!(item.answer, scene.objects.len().to_string()),
                VqaKind::Colour => {
                    let o = scene
                        .objects
                        .iter()
                        .find(|o| {
                            item.question == format!("what colour is the {}?", o.shape.name())
                        })
                        .expect("question names an object of the scene");
                    assert_eq!(item.answer, o.colour.name());
                }
                VqaKind::Shape => {
                    let o = scene
                        .objects
                        .iter()
                        .find(|o| item.question == format!("what shape is {}?", o.cell.phrase()))
                        .expect("question names a cell of the scene");
                    assert_eq!(item.answer, o.shape.name());
                }
                VqaKind::Existence => {
                    let present = scene
                        .objects
                        .iter()
                        .any(|o| item.question == format!("is there a {}?", o.shape.name()));
                    assert_eq!(item.answer, if present { "yes" } else { "no" });
                }
                VqaKind::Relation => {
                    let holds = scene.relations().iter().any(|r| {
                        let name = |i: usize| {
                            let o = &scene.objects[i];
                            format!("{} {}", o.colour.name(), o.shape.name())
                        };
                        item.question
                            == format!(
                                "is the {} {} the {}?",
                                name(r.subject),
                                r.kind.phrase(),
                                name(r.object)
                            )
                    });
                    assert_eq!(item.answer, if holds { "yes" } else { "no" }, "{item:?}");
                }
            }
        }
    }
    for kind in ["relation", "existence"] {
        assert!(answers[&(kind, "yes".to_string())] > 50, "{answers:?}");
        assert!(answers[&(kind, "no".to_string())] > 50, "{answers:?}");
    }
}

#[test]
fn rendering_has_the_right_size_and_objects_show_their_colours() {
    for size in [32u32, 64, 224] {
        let w = world(21);
        let mut checked = 0;
        for index in 0..60 {
            let scene = w.scene(index);
            let image = w.render_at(&scene, size);
            assert_eq!(image.dimensions(), (size, size));
            let s = size as f32;
            for (i, o) in scene.objects.iter().enumerate() {
                let Some(factor) = o.shape.inner_radius_factor() else {
                    continue;
                };
                // The pixel containing the centre must be well inside the shape...
                if factor * o.radius * s < 2.0 {
                    continue;
                }
                // ...and not covered by an object drawn later.
                let covered = scene.objects[i + 1..].iter().any(|later| {
                    let d = ((later.x - o.x).powi(2) + (later.y - o.y).powi(2)).sqrt();
                    d < later.radius * 1.1
                });
                if covered {
                    continue;
                }
                let px = image.get_pixel((o.x * s) as u32, (o.y * s) as u32).0;
                for ch in 0..3 {
                    assert!(
                        px[ch].abs_diff(o.rgb[ch]) <= 2,
                        "size {size} scene {index} object {i} {:?}: pixel {px:?} != {:?}",
                        o.shape,
                        o.rgb
                    );
                }
                checked += 1;
            }
        }
        assert!(
            checked > 40,
            "only {checked} objects checked at size {size}"
        );
    }
}

#[test]
fn background_noise_and_clutter_change_pixels() {
    let clean = SceneWorld::new(SceneConfig::easy(), 1).unwrap();
    let noisy = SceneWorld::new(
        SceneConfig {
            background_noise: 0.2,
            ..SceneConfig::easy()
        },
        1,
    )
    .unwrap();
    let (a, b) = (clean.render(&clean.scene(0)), noisy.render(&noisy.scene(0)));
    let differing = a.pixels().zip(b.pixels()).filter(|(p, q)| p != q).count();
    assert!(
        differing > 64 * 64 / 4,
        "noise changed only {differing} pixels"
    );
}

#[test]
fn five_distinct_captions_per_image() {
    let w = world(9);
    for index in 0..300 {
        let scene = w.scene(index);
        let captions = w.captions(&scene, index);
        assert_eq!(captions.len(), 5);
        let mut unique = captions.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 5, "{captions:?}");
        for c in &captions {
            assert!(
                !c.contains("  ") && !c.is_empty() && !c.contains('('),
                "{c:?}"
            );
            // Every caption mentions at least one colour or shape word of the scene.
            let mentions = scene.objects.iter().any(|o| {
                c.contains(o.colour.name()) || o.shape.synonyms().iter().any(|s| c.contains(s))
            });
            assert!(mentions, "{c:?}");
        }
    }
}

#[test]
fn caption_noise_zero_uses_references_and_one_replaces_them() {
    let clean = SceneWorld::new(
        SceneConfig {
            caption_noise: 0.0,
            ..SceneConfig::default()
        },
        4,
    )
    .unwrap();
    let noisy = SceneWorld::new(
        SceneConfig {
            caption_noise: 1.0,
            ..SceneConfig::default()
        },
        4,
    )
    .unwrap();
    let mut replaced = 0;
    for index in 0..300 {
        let scene = clean.scene(index);
        let refs = clean.captions(&scene, index);
        assert!(refs.contains(&clean.training_caption(&scene, index)));
        assert_eq!(
            noisy.scene(index),
            scene,
            "caption noise must not change the scene"
        );
        if !refs.contains(&noisy.training_caption(&scene, index)) {
            replaced += 1;
        }
    }
    assert!(
        replaced > 280,
        "only {replaced} of 300 noisy captions differ from the references"
    );
}

#[test]
fn object_scale_multiplies_every_radius_and_nothing_else() {
    let base = world(6);
    let config = SceneConfig {
        object_scale: 1.5,
        ..SceneConfig::default()
    };
    config.validate().unwrap();
    let scaled = SceneWorld::new(config, 6).unwrap();
    for index in 0..50 {
        let (a, b) = (base.scene(index), scaled.scene(index));
        assert_eq!(a.objects.len(), b.objects.len());
        for (oa, ob) in a.objects.iter().zip(&b.objects) {
            assert!((ob.radius - 1.5 * oa.radius).abs() < 1e-6, "{index}");
            assert_eq!(
                (oa.shape, oa.colour, oa.size),
                (ob.shape, ob.colour, ob.size)
            );
            assert_eq!(oa.cell, ob.cell, "a scaled object stays in its cell");
        }
        assert_eq!(base.captions(&a, index), scaled.captions(&b, index));
    }
    // Bigger objects cover more of the image: more pixels differ from the background.
    let (a, b) = (base.scene(3), scaled.scene(3));
    let coverage = |w: &SceneWorld, s: &Scene| {
        let img = w.render(s);
        let bg = s.background.rgb;
        img.pixels()
            .filter(|p| (0..3).any(|c| (p[c] as i32 - bg[c] as i32).abs() > 60))
            .count()
    };
    assert!(coverage(&scaled, &b) > coverage(&base, &a));
}

#[test]
fn canonical_and_relation_shares_replace_the_clean_training_captions() {
    let scene = Scene {
        objects: vec![
            object(Shape::Ring, Colour::Blue, Size::Small, 0.8, 0.8),
            object(Shape::Star, Colour::Red, Size::Large, 0.5, 0.2),
            object(Shape::Hexagon, Colour::Green, Size::Medium, 0.2, 0.8),
        ],
        marks: Vec::new(),
        background: world(0).scene(0).background,
    };
    // Reading order: the star (top row), then the hexagon and the ring (bottom row, left first).
    assert_eq!(
        captions::canonical(&scene),
        "a large red star, a medium green hexagon and a small blue ring"
    );
    let with = |canonical_captions, relation_captions| {
        SceneWorld::new(
            SceneConfig {
                caption_noise: 0.0,
                canonical_captions,
                relation_captions,
                ..SceneConfig::default()
            },
            8,
        )
        .unwrap()
    };
    let (canonical, relation, half, none) = (
        with(1.0, 0.0),
        with(0.0, 1.0),
        with(0.5, 0.0),
        with(0.0, 0.0),
    );
    let mut halves = 0;
    for index in 0..200 {
        let s = canonical.scene(index);
        assert_eq!(
            canonical.training_caption(&s, index),
            captions::canonical(&s)
        );
        let r = relation.training_caption(&s, index);
        let relations = s.relations();
        if relations.is_empty() {
            assert!(
                r.starts_with(&format!("a {} ", s.objects[0].size.name())),
                "{r}"
            );
        } else {
            assert!(
                relations.iter().any(|rel| r.contains(rel.kind.phrase())),
                "{r} states none of the scene's relations"
            );
        }
        if half.training_caption(&s, index) == captions::canonical(&s) {
            halves += 1;
        }
        // Shares of zero keep today's captions: references, same random stream.
        assert!(none
            .captions(&s, index)
            .contains(&none.training_caption(&s, index)));
    }
    assert!((70..=130).contains(&halves), "{halves} of 200 at share 0.5");
}

/// An object centred at (x, y) with its nominal radius and colour.
fn object(shape: Shape, colour: Colour, size: Size, x: f32, y: f32) -> SceneObject {
    SceneObject {
        shape,
        colour,
        size,
        cell: Cell::at(x, y),
        x,
        y,
        radius: size.radius(),
        rotation: 0.0,
        rgb: colour.rgb(),
    }
}

#[test]
fn config_validation_names_the_field() {
    SceneConfig::default().validate().unwrap();
    SceneConfig::easy().validate().unwrap();
    /// A field and a change that puts it out of range.
    type Case = (&'static str, fn(&mut SceneConfig));
    let cases: [Case; 14] = [
        ("image_size", |c| c.image_size = 8),
        ("min_objects", |c| c.min_objects = 0),
        ("min_objects", |c| {
            c.min_objects = 3;
            c.max_objects = 2;
        }),
        ("max_objects", |c| c.max_objects = 9),
        ("size_jitter", |c| c.size_jitter = 0.2),
        ("caption_noise", |c| c.caption_noise = 1.5),
        ("background_noise", |c| c.background_noise = f32::NAN),
        ("occlusion_probability", |c| c.occlusion_probability = -0.1),
        ("clutter", |c| c.clutter = 100),
        ("object_scale", |c| c.object_scale = 0.2),
        // 0.17 × 1.1 × 1.65 = 0.309 of the image side: more than a grid cell holds.
        ("object_scale", |c| c.object_scale = 1.65),
        ("canonical_captions", |c| c.canonical_captions = 1.2),
        ("relation_captions", |c| c.relation_captions = -0.5),
        ("relation_captions", |c| {
            c.canonical_captions = 0.6;
            c.relation_captions = 0.5;
        }),
    ];
    for (field, change) in cases {
        let mut config = SceneConfig::default();
        change(&mut config);
        match config.validate() {
            Err(SceneError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected an error, got {other:?}"),
        }
        assert!(SceneWorld::new(config, 0).is_err(), "{field}");
    }
    let synth = SynthConfig {
        shard_size: 0,
        ..SynthConfig::default()
    };
    assert!(matches!(
        synth.validate(),
        Err(SceneError::InvalidConfig {
            field: "shard_size",
            ..
        })
    ));
}

#[test]
fn config_json_round_trips_fills_defaults_and_rejects_unknown_fields() {
    let json = serde_json::to_string(&SceneConfig::default()).unwrap();
    let back: SceneConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, SceneConfig::default());
    let partial: SceneConfig = serde_json::from_str(r#"{"image_size": 32}"#).unwrap();
    assert_eq!(
        partial,
        SceneConfig {
            image_size: 32,
            ..SceneConfig::default()
        }
    );
    assert!(serde_json::from_str::<SceneConfig>(r#"{"image_sise": 32}"#).is_err());
    assert!(serde_json::from_str::<SynthConfig>(r#"{"shards": 3}"#).is_err());
}

#[test]
fn sample_carries_image_captions_and_scene_graph() {
    let w = world(1);
    let sample = w.sample(42);
    assert_eq!(sample.key, "42");
    let ImageData::Rgb(image) = &sample.image else {
        panic!("expected pixels");
    };
    assert_eq!(image.dimensions(), (64, 64));
    assert_eq!(sample.captions.len(), 5);
    let scene = w.scene(42);
    assert_eq!(
        sample.meta["objects"].as_array().unwrap().len(),
        scene.objects.len()
    );
    assert_eq!(
        sample.meta["objects"][0]["shape"],
        scene.objects[0].shape.name()
    );
    assert_eq!(sample.meta["largest"], scene.largest());
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    cappa_io::read_json(path).unwrap()
}

/// Members of a tar as (name, bytes).
fn tar_members(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            assert_eq!(e.header().entry_type(), tar::EntryType::Regular);
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            (name, bytes)
        })
        .collect()
}

#[test]
fn synth_writes_img2dataset_shards_that_parse() {
    let dir = tempfile::tempdir().unwrap();
    let config = SynthConfig {
        world: SceneConfig {
            image_size: 32,
            ..SceneConfig::default()
        },
        seed: 6,
        train_samples: 5,
        eval_samples: 0,
        shard_size: 2,
        image_format: ImageFormat::Png,
    };
    let report = write_synth(dir.path(), &config).unwrap();
    assert_eq!(report.shards.len(), 3);
    let train = SceneWorld::new(config.world.clone(), 6).unwrap();
    let mut index = 0u64;
    for (shard, path) in report.shards.iter().enumerate() {
        assert_eq!(path, &dir.path().join(format!("shards/{shard:05}.tar")));
        let stats = read_json(&dir.path().join(format!("shards/{shard:05}_stats.json")));
        let members = tar_members(path);
        assert_eq!(stats["successes"], members.len() / 3);
        for (k, group) in members.chunks(3).enumerate() {
            let key = format!("{shard:05}{k}");
            let names: Vec<&str> = group.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                [
                    format!("{key}.png"),
                    format!("{key}.txt"),
                    format!("{key}.json")
                ]
            );
            let image = image::load_from_memory(&group[0].1).unwrap().to_rgb8();
            let scene = train.scene(index);
            assert_eq!(image, train.render(&scene), "PNG is lossless");
            let caption = String::from_utf8(group[1].1.clone()).unwrap();
            assert_eq!(caption, train.training_caption(&scene, index));
            let json: serde_json::Value = serde_json::from_slice(&group[2].1).unwrap();
            assert_eq!(json["key"], key);
            assert_eq!(json["caption"], caption);
            assert_eq!(json["status"], "success");
            assert!(json["url"].as_str().unwrap().starts_with("synth://"));
            for field in ["width", "height", "original_width", "original_height"] {
                assert_eq!(json[field], 32, "{field}");
            }
            assert_eq!(json["scene"], scene.to_json());
            index += 1;
        }
    }
    assert_eq!(index, 5);
    // No temporary files are left behind.
    for entry in std::fs::read_dir(dir.path().join("shards")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(!name.starts_with('.'), "{name}");
    }
}

#[test]
fn synth_keys_are_padded_like_img2dataset_and_jpg_works() {
    let dir = tempfile::tempdir().unwrap();
    let config = SynthConfig {
        train_samples: 2,
        eval_samples: 0,
        shard_size: 10_000,
        ..SynthConfig::default()
    };
    let report = write_synth(dir.path(), &config).unwrap();
    let members = tar_members(&report.shards[0]);
    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..3],
        ["000000000.jpg", "000000000.txt", "000000000.json"]
    );
    assert_eq!(names[3], "000000001.jpg");
    let image = image::load_from_memory(&members[0].1).unwrap();
    assert_eq!((image.width(), image.height()), (64, 64));
}

#[test]
fn synth_writes_evaluation_sets_in_the_real_formats() {
    let dir = tempfile::tempdir().unwrap();
    let config = SynthConfig {
        world: SceneConfig {
            image_size: 32,
            ..SceneConfig::default()
        },
        seed: 2,
        train_samples: 0,
        eval_samples: 30,
        shard_size: 10,
        image_format: ImageFormat::Png,
    };
    let report = write_synth(dir.path(), &config).unwrap();
    assert!(report.shards.is_empty());
    let eval_dir = dir.path().join("eval");
    let eval = SceneWorld::eval(config.world.clone(), 2).unwrap();
    check_karpathy(&eval_dir, &eval, 30);
    check_classify(&eval_dir, &eval, &report, 30);
    check_compositional(&eval_dir, &eval, &report);
    check_vqa(&eval_dir, &report, 30);
}

/// `karpathy.json` lists every image with the world's pixels and reference captions.
fn check_karpathy(eval_dir: &std::path::Path, eval: &SceneWorld, count: usize) {
    let karpathy = read_json(&eval_dir.join("karpathy.json"));
    let images = karpathy["images"].as_array().unwrap();
    assert_eq!(images.len(), count);
    for (i, entry) in images.iter().enumerate() {
        assert_eq!(entry["split"], "test");
        assert_eq!(entry["imgid"], i);
        let file = eval_dir
            .join(entry["filepath"].as_str().unwrap())
            .join(entry["filename"].as_str().unwrap());
        let image = image::open(&file).unwrap().to_rgb8();
        let scene = eval.scene(i as u64);
        assert_eq!(image, eval.render(&scene));
        let sentences = entry["sentences"].as_array().unwrap();
        let raws: Vec<&str> = sentences
            .iter()
            .map(|s| s["raw"].as_str().unwrap())
            .collect();
        assert_eq!(raws, eval.captions(&scene, i as u64));
        assert!(sentences
            .iter()
            .all(|s| !s["tokens"].as_array().unwrap().is_empty()));
    }
}

/// Every label set's folders hold each image once, under the class of its scene.
fn check_classify(
    eval_dir: &std::path::Path,
    eval: &SceneWorld,
    report: &SynthReport,
    count: usize,
) {
    for label_set in LabelSet::ALL {
        let root = eval_dir.join("classify").join(label_set.name());
        let names: Vec<String> =
            serde_json::from_value(read_json(&root.join("classes.json"))).unwrap();
        assert_eq!(names, eval.class_names(label_set));
        assert_eq!(report.classify[label_set.name()], names.len());
        let mut total = 0;
        for (label, name) in names.iter().enumerate() {
            let class_dir = root.join(name.replace(' ', "_"));
            for entry in std::fs::read_dir(&class_dir).unwrap() {
                let file = entry.unwrap().file_name().into_string().unwrap();
                let index: u64 = file.trim_end_matches(".png").parse().unwrap();
                assert_eq!(eval.label(&eval.scene(index), label_set), label, "{file}");
                total += 1;
            }
        }
        assert_eq!(total, count, "{label_set:?}");
    }
}

/// Each kind's SugarCrepe file holds the world's caption and negative for its images.
fn check_compositional(eval_dir: &std::path::Path, eval: &SceneWorld, report: &SynthReport) {
    for kind in CompositionKind::ALL {
        let json = read_json(&eval_dir.join(format!("compositional/{}.json", kind.name())));
        let map = json.as_object().unwrap();
        assert_eq!(map.len(), report.compositional[kind.name()]);
        assert!(!map.is_empty(), "{kind:?}");
        for (id, item) in map {
            let index: u64 = id.parse().unwrap();
            assert_eq!(item["filename"], format!("{index:06}.png"));
            let expected = eval.compositional(&eval.scene(index), index, kind).unwrap();
            assert_eq!(item["caption"], expected.caption);
            assert_eq!(item["negative_caption"], expected.negative_caption);
            assert!(eval_dir
                .join("images")
                .join(item["filename"].as_str().unwrap())
                .exists());
        }
    }
}

/// Questions and annotations pair up, at least four per image, ten identical answers each.
fn check_vqa(eval_dir: &std::path::Path, report: &SynthReport, count: usize) {
    let questions = read_json(&eval_dir.join("vqa/questions.json"));
    let annotations = read_json(&eval_dir.join("vqa/annotations.json"));
    let questions = questions["questions"].as_array().unwrap();
    let annotations = annotations["annotations"].as_array().unwrap();
    assert_eq!(questions.len(), report.vqa_questions);
    assert_eq!(questions.len(), annotations.len());
    assert!(questions.len() >= 4 * count);
    for (q, a) in questions.iter().zip(annotations) {
        assert_eq!(q["question_id"], a["question_id"]);
        assert_eq!(q["image_id"], a["image_id"]);
        assert!(q["question"].as_str().unwrap().ends_with('?'));
        let answers = a["answers"].as_array().unwrap();
        assert_eq!(answers.len(), 10);
        assert!(answers
            .iter()
            .all(|x| x["answer"] == a["multiple_choice_answer"]));
    }
}
