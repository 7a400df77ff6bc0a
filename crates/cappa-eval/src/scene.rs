//! The scene world's evaluation sets: held-out images (the world's evaluation split, never
//! used for training) with their class labels for every label set, five reference captions,
//! compositional pairs, and a separate pool of labelled images for few-shot probes.

use std::collections::BTreeMap;

use cappa_data::pipeline::{resize, to_tensor, Normalize};
use cappa_data::scene::{CompositionKind, LabelSet, SceneWorld};
use tch::Tensor;

use crate::tasks::PreferenceItem;
use crate::transfer::TextExample;

/// Labelled images: (N, 3, S, S) on the CPU and one label per image and label set.
#[derive(Debug)]
pub struct LabelledImages {
    pub images: Tensor,
    /// Labels by label-set name (`shape`, `count`, `colour`, `shape_colour`).
    pub labels: BTreeMap<String, Vec<i64>>,
}

/// Everything the scene-world evaluation needs.
#[derive(Debug)]
pub struct SceneEvalSet {
    /// The test images with their labels.
    pub test: LabelledImages,
    /// The few-shot training pool (other held-out scenes).
    pub pool: LabelledImages,
    /// Five reference captions per test image.
    pub references: Vec<Vec<String>>,
    /// One true caption and a negative per (test image, kind) where the scene allows it.
    pub compositional: Vec<PreferenceItem>,
    /// Class names by label-set name, in label order.
    pub class_names: BTreeMap<String, Vec<String>>,
    /// Transfer training texts on pool images: their five captions, and their VQA questions.
    pub pool_captions: Vec<TextExample>,
    pub pool_vqa: Vec<TextExample>,
    /// Transfer test questions on test images, with their kind.
    pub test_vqa: Vec<(TextExample, String)>,
}

/// Sizes of a [`SceneEvalSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SceneEvalSizes {
    pub test: u64,
    pub pool: u64,
}

fn labelled(
    world: &SceneWorld,
    indices: std::ops::Range<u64>,
    size: i64,
    normalize: Normalize,
) -> LabelledImages {
    let mut rendered = Vec::with_capacity(indices.clone().count());
    let mut labels: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for index in indices {
        let scene = world.scene(index);
        let image = world.render(&scene);
        rendered.push(if image.width() as i64 == size {
            image
        } else {
            resize(&image, size as u32, size as u32)
        });
        for set in LabelSet::ALL {
            labels
                .entry(set.name().to_string())
                .or_default()
                .push(world.label(&scene, set) as i64);
        }
    }
    LabelledImages {
        images: to_tensor(&rendered, normalize),
        labels,
    }
}

impl SceneEvalSet {
    /// Builds the sets from the evaluation split of `world`'s configuration: test images
    /// `0..test`, the few-shot pool `test..test + pool`; images resized to `image_size` and
    /// normalised as in training.
    pub fn build(
        world: &SceneWorld,
        sizes: SceneEvalSizes,
        image_size: i64,
        normalize: Normalize,
    ) -> Self {
        let test = labelled(world, 0..sizes.test, image_size, normalize);
        let pool = labelled(
            world,
            sizes.test..sizes.test + sizes.pool,
            image_size,
            normalize,
        );
        let (references, compositional) = references_and_pairs(world, sizes.test);
        let (pool_captions, pool_vqa) = pool_texts(world, sizes);
        let test_vqa = test_questions(world, sizes.test);
        let class_names = LabelSet::ALL
            .iter()
            .map(|&set| (set.name().to_string(), world.class_names(set)))
            .collect();
        SceneEvalSet {
            test,
            pool,
            references,
            compositional,
            class_names,
            pool_captions,
            pool_vqa,
            test_vqa,
        }
    }
}

/// Reference captions of test images `0..test`, and their compositional pairs.
fn references_and_pairs(world: &SceneWorld, test: u64) -> (Vec<Vec<String>>, Vec<PreferenceItem>) {
    let mut references = Vec::new();
    let mut compositional = Vec::new();
    for index in 0..test {
        let scene = world.scene(index);
        references.push(world.captions(&scene, index));
        for kind in CompositionKind::ALL {
            if let Some(item) = world.compositional(&scene, index, kind) {
                compositional.push(PreferenceItem {
                    image: index as usize,
                    kind: kind.name().into(),
                    caption: item.caption,
                    negative: item.negative_caption,
                });
            }
        }
    }
    (references, compositional)
}

/// Transfer training texts of the pool images (indexed from 0 within the pool): their
/// captions, and their VQA questions with answers.
fn pool_texts(world: &SceneWorld, sizes: SceneEvalSizes) -> (Vec<TextExample>, Vec<TextExample>) {
    let mut pool_captions = Vec::new();
    let mut pool_vqa = Vec::new();
    for (k, index) in (sizes.test..sizes.test + sizes.pool).enumerate() {
        let scene = world.scene(index);
        for caption in world.captions(&scene, index) {
            pool_captions.push(TextExample {
                image: k,
                text: caption,
                answer: None,
            });
        }
        for item in world.vqa(&scene, index) {
            pool_vqa.push(TextExample {
                image: k,
                text: item.question,
                answer: Some(item.answer),
            });
        }
    }
    (pool_captions, pool_vqa)
}

/// VQA questions on test images `0..test`, with their answers and kinds.
fn test_questions(world: &SceneWorld, test: u64) -> Vec<(TextExample, String)> {
    let mut test_vqa = Vec::new();
    for index in 0..test {
        let scene = world.scene(index);
        for item in world.vqa(&scene, index) {
            test_vqa.push((
                TextExample {
                    image: index as usize,
                    text: item.question,
                    answer: Some(item.answer),
                },
                item.kind.name().to_string(),
            ));
        }
    }
    test_vqa
}
