//! Downstream tasks derived from the scene graphs of the held-out split: classification label
//! sets with zero-shot class names, compositional true/negative caption pairs (ARO/SugarCrepe
//! style) and VQA-style question/answer pairs.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::captions::number_word;
use super::{Colour, Purpose, Relation, RelationKind, Scene, SceneConfig, SceneWorld, Shape};

/// A classification label set over scenes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelSet {
    /// Shape of the largest object.
    Shape,
    /// Number of objects.
    Count,
    /// Colour of the largest object.
    Colour,
    /// Shape × colour of the largest object (fine-grained).
    ShapeColour,
}

impl LabelSet {
    pub const ALL: [LabelSet; 4] = [
        LabelSet::Shape,
        LabelSet::Count,
        LabelSet::Colour,
        LabelSet::ShapeColour,
    ];

    /// The label set's name, used as a directory name: "shape", "count", "colour", "shape_colour".
    pub fn name(self) -> &'static str {
        match self {
            LabelSet::Shape => "shape",
            LabelSet::Count => "count",
            LabelSet::Colour => "colour",
            LabelSet::ShapeColour => "shape_colour",
        }
    }

    /// Class names for zero-shot prompts, in label order ("star", "two objects", "red star").
    pub fn class_names(self, config: &SceneConfig) -> Vec<String> {
        match self {
            LabelSet::Shape => Shape::ALL.iter().map(|s| s.name().to_string()).collect(),
            LabelSet::Count => (config.min_objects..=config.max_objects)
                .map(|n| {
                    let noun = if n == 1 { "object" } else { "objects" };
                    format!("{} {noun}", number_word(n as usize))
                })
                .collect(),
            LabelSet::Colour => Colour::ALL.iter().map(|c| c.name().to_string()).collect(),
            LabelSet::ShapeColour => Colour::ALL
                .iter()
                .flat_map(|c| {
                    Shape::ALL
                        .iter()
                        .map(move |s| format!("{} {}", c.name(), s.name()))
                })
                .collect(),
        }
    }

    /// The class index of `scene` (an index into [`LabelSet::class_names`]).
    pub fn label(self, scene: &Scene, config: &SceneConfig) -> usize {
        let largest = &scene.objects[scene.largest()];
        let shape = Shape::ALL
            .iter()
            .position(|&s| s == largest.shape)
            .expect("known shape");
        let colour = Colour::ALL
            .iter()
            .position(|&c| c == largest.colour)
            .expect("known colour");
        match self {
            LabelSet::Shape => shape,
            LabelSet::Count => scene.objects.len() - config.min_objects as usize,
            LabelSet::Colour => colour,
            LabelSet::ShapeColour => colour * Shape::ALL.len() + shape,
        }
    }
}

/// The kinds of compositional negatives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompositionKind {
    /// The colours of two objects exchanged.
    AttributeSwap,
    /// The two objects of a relation exchanged.
    RelationSwap,
    /// One shape replaced by a shape absent from the scene.
    ObjectReplace,
    /// One colour replaced by a colour absent from the scene.
    AttributeReplace,
    /// The caption's words shuffled.
    WordOrder,
}

impl CompositionKind {
    pub const ALL: [CompositionKind; 5] = [
        CompositionKind::AttributeSwap,
        CompositionKind::RelationSwap,
        CompositionKind::ObjectReplace,
        CompositionKind::AttributeReplace,
        CompositionKind::WordOrder,
    ];

    /// The kind's name, used as a file name: "attribute_swap", ...
    pub fn name(self) -> &'static str {
        match self {
            CompositionKind::AttributeSwap => "attribute_swap",
            CompositionKind::RelationSwap => "relation_swap",
            CompositionKind::ObjectReplace => "object_replace",
            CompositionKind::AttributeReplace => "attribute_replace",
            CompositionKind::WordOrder => "word_order",
        }
    }
}

/// A true caption and its negative for one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompositionalItem {
    pub kind: CompositionKind,
    pub caption: String,
    pub negative_caption: String,
}

/// The kinds of VQA questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VqaKind {
    Colour,
    Shape,
    Count,
    Relation,
    Existence,
}

impl VqaKind {
    pub const ALL: [VqaKind; 5] = [
        VqaKind::Colour,
        VqaKind::Shape,
        VqaKind::Count,
        VqaKind::Relation,
        VqaKind::Existence,
    ];

    pub fn name(self) -> &'static str {
        match self {
            VqaKind::Colour => "colour",
            VqaKind::Shape => "shape",
            VqaKind::Count => "count",
            VqaKind::Relation => "relation",
            VqaKind::Existence => "existence",
        }
    }

    /// The VQA v2 answer type: "yes/no", "number" or "other".
    pub fn answer_type(self) -> &'static str {
        match self {
            VqaKind::Relation | VqaKind::Existence => "yes/no",
            VqaKind::Count => "number",
            VqaKind::Colour | VqaKind::Shape => "other",
        }
    }
}

/// A question about an image and its single correct answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VqaItem {
    pub kind: VqaKind,
    pub question: String,
    pub answer: String,
}

/// The canonical words of one object in a compositional caption.
#[derive(Clone, Copy)]
struct Phrase {
    size: &'static str,
    colour: Colour,
    shape: Shape,
}

impl Phrase {
    fn of(scene: &Scene, i: usize) -> Phrase {
        let o = &scene.objects[i];
        Phrase {
            size: o.size.name(),
            colour: o.colour,
            shape: o.shape,
        }
    }

    fn text(self) -> String {
        format!(
            "a {} {} {}",
            self.size,
            self.colour.name(),
            self.shape.name()
        )
    }
}

/// The caption "a <phrase> <relation> a <phrase>", or "a <phrase> <place>" for one object.
#[derive(Clone, Copy)]
enum Base {
    Pair(Phrase, RelationKind, Phrase),
    Single(Phrase, &'static str),
}

impl Base {
    fn text(&self) -> String {
        match self {
            Base::Pair(a, kind, b) => format!("{} {} {}", a.text(), kind.phrase(), b.text()),
            Base::Single(a, place) => format!("{} {place}", a.text()),
        }
    }
}

fn random_relation(scene: &Scene, rng: &mut ChaCha8Rng) -> Option<Relation> {
    let relations = scene.relations();
    if relations.is_empty() {
        None
    } else {
        Some(relations[rng.random_range(0..relations.len())])
    }
}

/// A true canonical caption: a random relation, or the single object and its place.
fn base_caption(scene: &Scene, rng: &mut ChaCha8Rng) -> Base {
    match random_relation(scene, rng) {
        Some(r) => Base::Pair(
            Phrase::of(scene, r.subject),
            r.kind,
            Phrase::of(scene, r.object),
        ),
        None => Base::Single(Phrase::of(scene, 0), scene.objects[0].cell.phrase()),
    }
}

/// A true canonical relation caption ("a large red star left of a small blue ring", or the
/// single object and its place), as the compositional tasks phrase their true captions.
pub(crate) fn canonical_relation(scene: &Scene, rng: &mut ChaCha8Rng) -> String {
    base_caption(scene, rng).text()
}

/// A relation between objects of different colours, and the caption with their colours
/// swapped.
fn attribute_swap(scene: &Scene, rng: &mut ChaCha8Rng) -> Option<(String, String)> {
    let candidates: Vec<Relation> = scene
        .relations()
        .into_iter()
        .filter(|r| scene.objects[r.subject].colour != scene.objects[r.object].colour)
        .collect();
    let r = *candidates.get(rng.random_range(0..candidates.len().max(1)))?;
    let (a, b) = (Phrase::of(scene, r.subject), Phrase::of(scene, r.object));
    let truth = Base::Pair(a, r.kind, b);
    let swapped = Base::Pair(
        Phrase {
            colour: b.colour,
            ..a
        },
        r.kind,
        Phrase {
            colour: a.colour,
            ..b
        },
    );
    Some((truth.text(), swapped.text()))
}

/// A relation, and the caption with subject and object exchanged.
fn relation_swap(scene: &Scene, rng: &mut ChaCha8Rng) -> Option<(String, String)> {
    let r = random_relation(scene, rng)?;
    let (a, b) = (Phrase::of(scene, r.subject), Phrase::of(scene, r.object));
    Some((
        Base::Pair(a, r.kind, b).text(),
        Base::Pair(b, r.kind, a).text(),
    ))
}

/// A true caption, and its words shuffled into another order.
fn word_order(scene: &Scene, rng: &mut ChaCha8Rng) -> (String, String) {
    let caption = base_caption(scene, rng).text();
    let mut words: Vec<&str> = caption.split(' ').collect();
    let original = words.clone();
    while words == original {
        words.shuffle(rng);
    }
    let negative = words.join(" ");
    (caption, negative)
}

/// A random value of `all` that is not `present`; `None` when every value is present (the
/// random draw is made either way).
fn absent_one<T: Copy + PartialEq>(all: &[T], present: &[T], rng: &mut ChaCha8Rng) -> Option<T> {
    let absent: Vec<T> = all
        .iter()
        .copied()
        .filter(|value| !present.contains(value))
        .collect();
    absent
        .get(rng.random_range(0..absent.len().max(1)))
        .copied()
}

/// `base` with one phrase changed by `replace`: in a pair the subject or the object with
/// probability 1/2 each.
fn replace_one(base: Base, rng: &mut ChaCha8Rng, replace: impl Fn(Phrase) -> Phrase) -> Base {
    match base {
        Base::Pair(a, k, b) if rng.random_bool(0.5) => Base::Pair(replace(a), k, b),
        Base::Pair(a, k, b) => Base::Pair(a, k, replace(b)),
        Base::Single(a, place) => Base::Single(replace(a), place),
    }
}

impl SceneWorld {
    /// Class names of a label set for this world's config.
    pub fn class_names(&self, label_set: LabelSet) -> Vec<String> {
        label_set.class_names(&self.config)
    }

    /// The class index of `scene` in `label_set`.
    pub fn label(&self, scene: &Scene, label_set: LabelSet) -> usize {
        label_set.label(scene, &self.config)
    }

    fn task_rng(&self, index: u64, stream: u64) -> ChaCha8Rng {
        let mut rng = self.rng(index, Purpose::Tasks);
        rng.set_stream(stream);
        rng
    }

    /// A true caption and a negative of `kind`, or `None` when the scene does not allow that
    /// kind (swaps need two related objects; an attribute swap needs two different colours).
    pub fn compositional(
        &self,
        scene: &Scene,
        index: u64,
        kind: CompositionKind,
    ) -> Option<CompositionalItem> {
        let mut rng = self.task_rng(index, 1 + kind as u64);
        let rng = &mut rng;
        let (caption, negative) = match kind {
            CompositionKind::AttributeSwap => attribute_swap(scene, rng)?,
            CompositionKind::RelationSwap => relation_swap(scene, rng)?,
            CompositionKind::ObjectReplace => {
                let present: Vec<Shape> = scene.objects.iter().map(|o| o.shape).collect();
                let base = base_caption(scene, rng);
                let shape = absent_one(&Shape::ALL, &present, rng)?;
                let negative = replace_one(base, rng, |phrase| Phrase { shape, ..phrase });
                (base.text(), negative.text())
            }
            CompositionKind::AttributeReplace => {
                let present: Vec<Colour> = scene.objects.iter().map(|o| o.colour).collect();
                let base = base_caption(scene, rng);
                let colour = absent_one(&Colour::ALL, &present, rng)?;
                let negative = replace_one(base, rng, |phrase| Phrase { colour, ..phrase });
                (base.text(), negative.text())
            }
            CompositionKind::WordOrder => word_order(scene, rng),
        };
        Some(CompositionalItem {
            kind,
            caption,
            negative_caption: negative,
        })
    }

    /// One question per applicable kind (relation questions need two objects), with answers
    /// in VQA style: colour and shape words, digits for counts, "yes"/"no".
    pub fn vqa(&self, scene: &Scene, index: u64) -> Vec<VqaItem> {
        let mut rng = self.task_rng(index, 100);
        let objects = &scene.objects;
        let mut out = Vec::with_capacity(5);
        let o = &objects[rng.random_range(0..objects.len())];
        out.push(VqaItem {
            kind: VqaKind::Colour,
            question: format!("what colour is the {}?", o.shape.name()),
            answer: o.colour.name().to_string(),
        });
        let o = &objects[rng.random_range(0..objects.len())];
        out.push(VqaItem {
            kind: VqaKind::Shape,
            question: format!("what shape is {}?", o.cell.phrase()),
            answer: o.shape.name().to_string(),
        });
        out.push(VqaItem {
            kind: VqaKind::Count,
            question: "how many shapes are there?".to_string(),
            answer: objects.len().to_string(),
        });
        if let Some(r) = random_relation(scene, &mut rng) {
            let truth = rng.random_bool(0.5);
            let kind = if truth { r.kind } else { r.kind.inverse() };
            let name = |i: usize| {
                let o = &objects[i];
                format!("{} {}", o.colour.name(), o.shape.name())
            };
            out.push(VqaItem {
                kind: VqaKind::Relation,
                question: format!(
                    "is the {} {} the {}?",
                    name(r.subject),
                    kind.phrase(),
                    name(r.object)
                ),
                answer: if truth { "yes" } else { "no" }.to_string(),
            });
        }
        let present: Vec<Shape> = objects.iter().map(|o| o.shape).collect();
        let absent: Vec<Shape> = Shape::ALL
            .into_iter()
            .filter(|s| !present.contains(s))
            .collect();
        let ask_present = absent.is_empty() || rng.random_bool(0.5);
        let shape = if ask_present {
            present[rng.random_range(0..present.len())]
        } else {
            absent[rng.random_range(0..absent.len())]
        };
        out.push(VqaItem {
            kind: VqaKind::Existence,
            question: format!("is there a {}?", shape.name()),
            answer: if ask_present { "yes" } else { "no" }.to_string(),
        });
        out
    }
}
