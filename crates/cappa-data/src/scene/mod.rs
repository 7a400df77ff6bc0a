//! The built-in scene world: a deterministic, seedable generator of small synthetic images of
//! coloured shapes with captions and labelled downstream tasks, so that a first run can compare
//! CLIP and CapPa within minutes on a CPU without downloading any data set.
//!
//! A [`SceneWorld`] maps `(seed, split, index)` to a [`Scene`] (a scene graph of 1–4 objects on a
//! textured background); [`SceneWorld::render`] draws it with anti-aliasing, and the caption and
//! task methods derive text and labels from the same graph. Any thread can generate any sample.
//!
//! ```
//! use cappa_data::scene::{SceneConfig, SceneWorld};
//! let world = SceneWorld::new(SceneConfig::default(), 7).unwrap();
//! let scene = world.scene(0);
//! let image = world.render(&scene);
//! assert_eq!(image.dimensions(), (64, 64));
//! assert_eq!(world.captions(&scene, 0).len(), 5);
//! ```

mod captions;
mod render;
mod synth;
mod tasks;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::sample::{ImageData, Sample};

pub use synth::{write_synth, ImageFormat, SynthConfig, SynthReport};
pub use tasks::{CompositionKind, CompositionalItem, LabelSet, VqaItem, VqaKind};

/// Errors of the scene world and the synth writer.
#[derive(Debug, thiserror::Error)]
pub enum SceneError {
    /// A configuration value is out of range; `field` names it.
    #[error("invalid scene config: {field}: {message}")]
    InvalidConfig {
        field: &'static str,
        message: String,
    },
    /// A file or directory could not be written; the error names it.
    #[error("cannot write {source}")]
    Write {
        #[from]
        source: cappa_io::FileError,
    },
    /// An image could not be encoded.
    #[error("cannot encode image {path}: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
}

/// The shapes of the world. Shapes within one scene are distinct, so a shape names an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Ring,
    Cross,
    Diamond,
    Hexagon,
}

impl Shape {
    /// Every shape, in class-index order.
    pub const ALL: [Shape; 8] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Ring,
        Shape::Cross,
        Shape::Diamond,
        Shape::Hexagon,
    ];

    /// The canonical (single) word for the shape.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Ring => "ring",
            Shape::Cross => "cross",
            Shape::Diamond => "diamond",
            Shape::Hexagon => "hexagon",
        }
    }

    /// Words reference captions may use for the shape (the canonical one first).
    pub fn synonyms(self) -> &'static [&'static str] {
        match self {
            Shape::Circle => &["circle", "disk"],
            Shape::Square => &["square", "block"],
            Shape::Triangle => &["triangle"],
            Shape::Star => &["star"],
            Shape::Ring => &["ring", "donut"],
            Shape::Cross => &["cross", "plus"],
            Shape::Diamond => &["diamond", "rhombus"],
            Shape::Hexagon => &["hexagon"],
        }
    }

    /// Radius of the largest disc around the centre that the filled shape covers, as a
    /// fraction of the object's radius; `None` when the centre is not painted (the ring).
    pub fn inner_radius_factor(self) -> Option<f32> {
        match self {
            Shape::Circle => Some(1.0),
            Shape::Square => Some(0.85),
            Shape::Triangle => Some(0.45),
            Shape::Star => Some(0.35),
            Shape::Ring => None,
            Shape::Cross => Some(0.3),
            Shape::Diamond => Some(0.58),
            Shape::Hexagon => Some(0.86),
        }
    }
}

/// The named colours of the world, chosen to stay distinguishable after jitter and on the
/// mid-grey background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    Pink,
    Cyan,
    White,
    Black,
}

impl Colour {
    /// Every colour, in class-index order.
    pub const ALL: [Colour; 10] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Orange,
        Colour::Pink,
        Colour::Cyan,
        Colour::White,
        Colour::Black,
    ];

    /// The colour's word.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
            Colour::Pink => "pink",
            Colour::Cyan => "cyan",
            Colour::White => "white",
            Colour::Black => "black",
        }
    }

    /// The colour's nominal sRGB value before jitter.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [215, 35, 35],
            Colour::Green => [40, 165, 55],
            Colour::Blue => [35, 75, 215],
            Colour::Yellow => [240, 215, 40],
            Colour::Purple => [135, 55, 185],
            Colour::Orange => [245, 135, 25],
            Colour::Pink => [245, 125, 195],
            Colour::Cyan => [40, 205, 215],
            Colour::White => [245, 245, 245],
            Colour::Black => [20, 20, 20],
        }
    }
}

/// Size classes; within a scene of two or more objects exactly one object has the largest class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    Small,
    Medium,
    Large,
}

impl Size {
    /// Every size class, smallest first.
    pub const ALL: [Size; 3] = [Size::Small, Size::Medium, Size::Large];

    /// The canonical word for the size.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
        }
    }

    /// Words reference captions may use for the size (the canonical one first).
    pub fn synonyms(self) -> &'static [&'static str] {
        match self {
            Size::Small => &["small", "little"],
            Size::Medium => &["medium", "medium-sized"],
            Size::Large => &["large", "big"],
        }
    }

    /// Nominal radius as a fraction of the image side, before jitter.
    pub fn radius(self) -> f32 {
        match self {
            Size::Small => 0.08,
            Size::Medium => 0.12,
            Size::Large => 0.17,
        }
    }
}

/// The side of a grid cell as a fraction of the image side.
const CELL_SIDE: f32 = 1.0 / 3.0;

/// A cell of the 3×3 placement grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cell {
    /// 0 = top, 2 = bottom.
    pub row: u8,
    /// 0 = left, 2 = right.
    pub col: u8,
}

impl Cell {
    /// The cell containing a position given as fractions of the image side.
    pub fn at(x: f32, y: f32) -> Cell {
        let idx = |v: f32| ((v * 3.0).floor().clamp(0.0, 2.0)) as u8;
        Cell {
            row: idx(y),
            col: idx(x),
        }
    }

    /// A short name: "top left", "top", "center", "bottom right", ...
    pub fn name(self) -> &'static str {
        const NAMES: [[&str; 3]; 3] = [
            ["top left", "top", "top right"],
            ["left", "center", "right"],
            ["bottom left", "bottom", "bottom right"],
        ];
        NAMES[self.row as usize][self.col as usize]
    }

    /// A locative phrase: "in the top left", "at the top", "in the center", "on the right".
    pub fn phrase(self) -> &'static str {
        const PHRASES: [[&str; 3]; 3] = [
            ["in the top left", "at the top", "in the top right"],
            ["on the left", "in the center", "on the right"],
            ["in the bottom left", "at the bottom", "in the bottom right"],
        ];
        PHRASES[self.row as usize][self.col as usize]
    }
}

/// One object of a scene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneObject {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    /// The grid cell containing the centre (derived from `x`, `y`).
    pub cell: Cell,
    /// Centre, as fractions of the image width and height.
    pub x: f32,
    pub y: f32,
    /// Radius after size jitter, as a fraction of the image side.
    pub radius: f32,
    /// Rotation in degrees (clockwise).
    pub rotation: f32,
    /// The rendered colour after jitter.
    pub rgb: [u8; 3],
}

/// A spatial relation between two objects, derived from their grid cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelationKind {
    LeftOf,
    RightOf,
    Above,
    Below,
}

impl RelationKind {
    /// The relation's words: "left of", "right of", "above", "below".
    pub fn phrase(self) -> &'static str {
        match self {
            RelationKind::LeftOf => "left of",
            RelationKind::RightOf => "right of",
            RelationKind::Above => "above",
            RelationKind::Below => "below",
        }
    }

    /// The relation seen from the other object.
    pub fn inverse(self) -> RelationKind {
        match self {
            RelationKind::LeftOf => RelationKind::RightOf,
            RelationKind::RightOf => RelationKind::LeftOf,
            RelationKind::Above => RelationKind::Below,
            RelationKind::Below => RelationKind::Above,
        }
    }
}

/// `objects[subject]` is `kind` `objects[object]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Relation {
    pub subject: usize,
    pub kind: RelationKind,
    pub object: usize,
}

/// A small distractor mark drawn under the objects (a dot or a short stroke).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    pub x: f32,
    pub y: f32,
    /// Length of the stroke (0 for a dot) as a fraction of the image side.
    pub length: f32,
    pub angle: f32,
    pub width: f32,
    pub rgb: [u8; 3],
}

/// The background: a tinted base colour with a linear gradient and per-pixel noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Background {
    pub rgb: [u8; 3],
    /// Gradient direction in radians and strength (fraction of 255 across the image).
    pub gradient_angle: f32,
    pub gradient_strength: f32,
    /// Noise amplitude (fraction of 255) and the seed of the noise field.
    pub noise: f32,
    pub noise_seed: u64,
}

/// A generated scene: its objects (in drawing order), the distractor marks and the background.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub objects: Vec<SceneObject>,
    pub marks: Vec<Mark>,
    pub background: Background,
}

impl Scene {
    /// Index of the largest object (unique by construction).
    pub fn largest(&self) -> usize {
        let mut best = 0;
        for (i, o) in self.objects.iter().enumerate() {
            if o.radius > self.objects[best].radius {
                best = i;
            }
        }
        best
    }

    /// All pairwise relations, derived from the grid cells: for each ordered pair of objects the
    /// horizontal relation (if the columns differ) and the vertical one (if the rows differ).
    pub fn relations(&self) -> Vec<Relation> {
        let mut out = Vec::new();
        for (i, a) in self.objects.iter().enumerate() {
            for (j, b) in self.objects.iter().enumerate() {
                if i == j {
                    continue;
                }
                if a.cell.col < b.cell.col {
                    out.push(Relation {
                        subject: i,
                        kind: RelationKind::LeftOf,
                        object: j,
                    });
                } else if a.cell.col > b.cell.col {
                    out.push(Relation {
                        subject: i,
                        kind: RelationKind::RightOf,
                        object: j,
                    });
                }
                if a.cell.row < b.cell.row {
                    out.push(Relation {
                        subject: i,
                        kind: RelationKind::Above,
                        object: j,
                    });
                } else if a.cell.row > b.cell.row {
                    out.push(Relation {
                        subject: i,
                        kind: RelationKind::Below,
                        object: j,
                    });
                }
            }
        }
        out
    }

    /// The scene graph as JSON: objects (shape, colour, size, cell, position, ...), the index of
    /// the largest object and the relations.
    pub fn to_json(&self) -> serde_json::Value {
        let relations: Vec<serde_json::Value> = self
            .relations()
            .iter()
            .map(|r| {
                serde_json::json!({
                    "subject": r.subject, "relation": r.kind, "object": r.object
                })
            })
            .collect();
        let objects: Vec<serde_json::Value> = self
            .objects
            .iter()
            .map(|o| {
                serde_json::json!({
                    "shape": o.shape, "colour": o.colour, "size": o.size,
                    "cell": o.cell.name(), "row": o.cell.row, "col": o.cell.col,
                    "x": round4(o.x), "y": round4(o.y), "radius": round4(o.radius),
                    "rotation": round4(o.rotation), "rgb": o.rgb,
                })
            })
            .collect();
        serde_json::json!({
            "objects": objects,
            "largest": self.largest(),
            "relations": relations,
        })
    }
}

/// Rounds to four decimals, so that the JSON text is short and parses back exactly.
fn round4(v: f32) -> f64 {
    (v as f64 * 1e4).round() / 1e4
}

/// Knobs of the world. The defaults are calibrated so that a tiny model trained for minutes on
/// 64×64 images gets clearly above chance but not to 100 % on the tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SceneConfig {
    /// Side of the square image in pixels (16..=1024).
    pub image_size: u32,
    /// Fewest and most objects per scene (1..=8, min <= max).
    pub min_objects: u32,
    pub max_objects: u32,
    /// Per-pixel background noise amplitude as a fraction of 255 (0..=0.5).
    pub background_noise: f32,
    /// Strength of the background's linear gradient as a fraction of 255 (0..=0.5).
    pub background_gradient: f32,
    /// Most distractor marks per scene (0..=64); each scene draws 0..=clutter.
    pub clutter: u32,
    /// Relative radius jitter (0..0.15, so that size classes never overlap).
    pub size_jitter: f32,
    /// Per-channel colour jitter as a fraction of 255 (0..=0.2).
    pub colour_jitter: f32,
    /// Position jitter as a fraction of a grid cell (0..=0.5).
    pub position_jitter: f32,
    /// Largest rotation in degrees either way (0..=180).
    pub rotation_jitter: f32,
    /// Probability that an object is pushed against an earlier one so that they overlap (0..=1).
    pub occlusion_probability: f32,
    /// Fraction of training captions replaced by alt-text-like noise (0..=1): a third partial
    /// (one object only), a third generic ("a picture"), a third mismatched (another scene).
    pub caption_noise: f32,
    /// Factor on every object's nominal radius (0.5..=1.7, and the largest jittered radius
    /// must stay within a grid cell: below 0.3 of the image side).
    pub object_scale: f32,
    /// Share of the clean training captions that are the canonical description instead of a
    /// random reference: every object in reading order with its canonical size, colour and
    /// shape words ("a large red star, a small blue ring and a medium green hexagon"), the
    /// same text every time for the same scene (0..=1).
    pub canonical_captions: f32,
    /// Share of the clean training captions that are a canonical relation ("a large red star
    /// left of a small blue ring"), the phrasing the compositional tasks perturb (0..=1, and
    /// `canonical_captions + relation_captions <= 1`). The rest are random references, of
    /// which about one in seven states a relation.
    pub relation_captions: f32,
}

impl Default for SceneConfig {
    fn default() -> Self {
        SceneConfig {
            image_size: 64,
            min_objects: 1,
            max_objects: 4,
            background_noise: 0.08,
            background_gradient: 0.15,
            clutter: 3,
            size_jitter: 0.1,
            colour_jitter: 0.06,
            position_jitter: 0.3,
            rotation_jitter: 20.0,
            occlusion_probability: 0.2,
            caption_noise: 0.1,
            object_scale: 1.0,
            canonical_captions: 0.0,
            relation_captions: 0.0,
        }
    }
}

impl SceneConfig {
    /// A clean, easy world: no noise, clutter, jitter, occlusion or caption noise.
    pub fn easy() -> Self {
        SceneConfig {
            background_noise: 0.0,
            background_gradient: 0.0,
            clutter: 0,
            size_jitter: 0.0,
            colour_jitter: 0.0,
            position_jitter: 0.0,
            rotation_jitter: 0.0,
            occlusion_probability: 0.0,
            caption_noise: 0.0,
            ..SceneConfig::default()
        }
    }

    /// Checks every field; the error names the offending field.
    pub fn validate(&self) -> Result<(), SceneError> {
        fn bad(field: &'static str, message: String) -> Result<(), SceneError> {
            Err(SceneError::InvalidConfig { field, message })
        }
        fn range(field: &'static str, v: f32, lo: f32, hi: f32) -> Result<(), SceneError> {
            if !(v.is_finite() && v >= lo && v <= hi) {
                return bad(field, format!("{v} is not in {lo}..={hi}"));
            }
            Ok(())
        }
        if !(16..=1024).contains(&self.image_size) {
            return bad(
                "image_size",
                format!("{} is not in 16..=1024", self.image_size),
            );
        }
        if !(1..=8).contains(&self.min_objects) {
            return bad(
                "min_objects",
                format!("{} is not in 1..=8", self.min_objects),
            );
        }
        if !(1..=8).contains(&self.max_objects) {
            return bad(
                "max_objects",
                format!("{} is not in 1..=8", self.max_objects),
            );
        }
        if self.min_objects > self.max_objects {
            return bad(
                "min_objects",
                format!(
                    "{} exceeds max_objects {}",
                    self.min_objects, self.max_objects
                ),
            );
        }
        range("background_noise", self.background_noise, 0.0, 0.5)?;
        range("background_gradient", self.background_gradient, 0.0, 0.5)?;
        if self.clutter > 64 {
            return bad("clutter", format!("{} is not in 0..=64", self.clutter));
        }
        if !(self.size_jitter.is_finite() && (0.0..0.15).contains(&self.size_jitter)) {
            return bad(
                "size_jitter",
                format!(
                    "{} is not in 0..0.15 (size classes would overlap)",
                    self.size_jitter
                ),
            );
        }
        range("colour_jitter", self.colour_jitter, 0.0, 0.2)?;
        range("position_jitter", self.position_jitter, 0.0, 0.5)?;
        range("rotation_jitter", self.rotation_jitter, 0.0, 180.0)?;
        range(
            "occlusion_probability",
            self.occlusion_probability,
            0.0,
            1.0,
        )?;
        range("caption_noise", self.caption_noise, 0.0, 1.0)?;
        range("object_scale", self.object_scale, 0.5, 1.7)?;
        let largest = Size::Large.radius() * (1.0 + self.size_jitter) * self.object_scale;
        if largest >= MAX_RADIUS {
            return bad(
                "object_scale",
                format!(
                    "{} makes the largest object's radius {largest:.3} of the image side, \
                     more than a grid cell holds (below {MAX_RADIUS}); lower object_scale or \
                     size_jitter",
                    self.object_scale
                ),
            );
        }
        range("canonical_captions", self.canonical_captions, 0.0, 1.0)?;
        range("relation_captions", self.relation_captions, 0.0, 1.0)?;
        if self.canonical_captions + self.relation_captions > 1.0 + 1e-6 {
            return bad(
                "relation_captions",
                format!(
                    "{} plus canonical_captions {} exceeds 1 (they are shares of the same \
                     captions)",
                    self.relation_captions, self.canonical_captions
                ),
            );
        }
        Ok(())
    }

    /// The nominal radius of an object of `size` in this world, before jitter.
    pub fn radius(&self, size: Size) -> f32 {
        size.radius() * self.object_scale
    }
}

/// Objects stay below this radius (a fraction of the image side), so that an object fits the
/// bounds of its grid cell and of the image at once.
const MAX_RADIUS: f32 = 0.3;

/// Which stream of scenes a world produces. Evaluation scenes come from a different random
/// stream than training scenes of the same seed, so they are never seen in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Eval,
}

/// What a random stream is used for; each purpose gets its own stream per sample.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purpose {
    Scene = 1,
    Captions = 2,
    TrainingCaption = 3,
    Tasks = 4,
}

/// A deterministic scene generator: `scene(index)` depends only on (config, seed, split, index).
#[derive(Debug, Clone)]
pub struct SceneWorld {
    config: SceneConfig,
    seed: u64,
    split: Split,
}

impl SceneWorld {
    /// The training world of `seed`.
    pub fn new(config: SceneConfig, seed: u64) -> Result<Self, SceneError> {
        Self::with_split(config, seed, Split::Train)
    }

    /// The held-out evaluation world of `seed` (disjoint random stream from training).
    pub fn eval(config: SceneConfig, seed: u64) -> Result<Self, SceneError> {
        Self::with_split(config, seed, Split::Eval)
    }

    /// The world of `seed` for `split` (training or held-out evaluation scenes); [`Self::new`]
    /// and [`Self::eval`] are this with a fixed split.
    pub fn with_split(config: SceneConfig, seed: u64, split: Split) -> Result<Self, SceneError> {
        config.validate()?;
        Ok(SceneWorld {
            config,
            seed,
            split,
        })
    }

    pub fn config(&self) -> &SceneConfig {
        &self.config
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn split(&self) -> Split {
        self.split
    }

    /// The random stream for one purpose of one sample.
    pub(crate) fn rng(&self, index: u64, purpose: Purpose) -> ChaCha8Rng {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&self.seed.to_le_bytes());
        key[8..16].copy_from_slice(&index.to_le_bytes());
        key[16] = purpose as u8;
        key[17] = match self.split {
            Split::Train => 0x5a,
            Split::Eval => 0xe7,
        };
        key[24..].copy_from_slice(b"cappascn");
        ChaCha8Rng::from_seed(key)
    }

    /// The scene at `index`.
    pub fn scene(&self, index: u64) -> Scene {
        let mut rng = self.rng(index, Purpose::Scene);
        let objects = self.objects(&mut rng);
        let background = self.background(&mut rng);
        let marks = self.marks(&mut rng);
        Scene {
            objects,
            marks,
            background,
        }
    }

    /// The objects of a scene, in drawing order: distinct shapes (so that a shape names an
    /// object) in distinct cells (so that positions and relations are unambiguous), exactly
    /// one of them in the largest size class when there are several.
    fn objects(&self, rng: &mut ChaCha8Rng) -> Vec<SceneObject> {
        let c = &self.config;
        let n = rng.random_range(c.min_objects..=c.max_objects) as usize;
        let mut shapes = Shape::ALL.to_vec();
        shapes.shuffle(rng);
        let largest = rng.random_range(0..n);
        let largest_size = if n == 1 {
            Size::ALL[rng.random_range(0..3)]
        } else if rng.random_bool(2.0 / 3.0) {
            Size::Large
        } else {
            Size::Medium
        };
        let mut cells: Vec<Cell> = (0..9)
            .map(|k| Cell {
                row: k / 3,
                col: k % 3,
            })
            .collect();
        cells.shuffle(rng);
        let mut used: Vec<Cell> = Vec::with_capacity(n);
        let mut objects: Vec<SceneObject> = Vec::with_capacity(n);
        for (i, &shape) in shapes.iter().enumerate().take(n) {
            let size = if i == largest {
                largest_size
            } else {
                Size::ALL[rng.random_range(0..largest_size as usize)]
            };
            let colour = Colour::ALL[rng.random_range(0..Colour::ALL.len())];
            let radius = c.radius(size) * (1.0 + c.size_jitter * rng.random_range(-1.0f32..=1.0));
            let (cell, toward) = self.cell_for(&objects, &cells, &used, rng);
            used.push(cell);
            let (x, y) = self.position(cell, toward, radius, rng);
            let rgb = self.jittered(colour, rng);
            let rotation = c.rotation_jitter * rng.random_range(-1.0f32..=1.0);
            objects.push(SceneObject {
                shape,
                colour,
                size,
                cell: Cell::at(x, y),
                x,
                y,
                radius,
                rotation,
                rgb,
            });
        }
        objects
    }

    /// The cell of the next object, and the centre it leans towards when it occludes an
    /// earlier one. With the occlusion probability (never for the first object) it takes a
    /// free cell next to a random earlier object; otherwise, or when no such cell is free,
    /// the first free cell of the shuffled `cells`.
    fn cell_for(
        &self,
        objects: &[SceneObject],
        cells: &[Cell],
        used: &[Cell],
        rng: &mut ChaCha8Rng,
    ) -> (Cell, Option<(f32, f32)>) {
        let p = self.config.occlusion_probability;
        if !objects.is_empty() && p > 0.0 && rng.random_bool(p as f64) {
            let anchor = &objects[rng.random_range(0..objects.len())];
            let free: Vec<Cell> = cells
                .iter()
                .copied()
                .filter(|k| !used.contains(k))
                .filter(|k| {
                    let dr = (k.row as i32 - anchor.cell.row as i32).abs();
                    let dc = (k.col as i32 - anchor.cell.col as i32).abs();
                    dr <= 1 && dc <= 1
                })
                .collect();
            if !free.is_empty() {
                let cell = free[rng.random_range(0..free.len())];
                return (cell, Some((anchor.x, anchor.y)));
            }
        }
        let cell = *cells
            .iter()
            .find(|k| !used.contains(k))
            .expect("at most 8 objects in 9 cells");
        (cell, None)
    }

    /// The centre of an object of `radius` in `cell`: pushed towards `toward` (occlusion) or
    /// jittered around the cell's centre, then kept strictly inside its cell (so that the cell
    /// is derived from the position) and inside the image.
    fn position(
        &self,
        cell: Cell,
        toward: Option<(f32, f32)>,
        radius: f32,
        rng: &mut ChaCha8Rng,
    ) -> (f32, f32) {
        let jitter = self.config.position_jitter;
        let cx = (cell.col as f32 + 0.5) * CELL_SIDE;
        let cy = (cell.row as f32 + 0.5) * CELL_SIDE;
        let half = CELL_SIDE * 0.5;
        let (x, y) = match toward {
            Some((ax, ay)) => (
                cx + (ax - cx).signum() * (ax - cx).abs().min(half * 0.85),
                cy + (ay - cy).signum() * (ay - cy).abs().min(half * 0.85),
            ),
            None => (
                cx + half * jitter * rng.random_range(-1.0f32..=1.0),
                cy + half * jitter * rng.random_range(-1.0f32..=1.0),
            ),
        };
        let lo = |k: u8| k as f32 * CELL_SIDE + 0.01;
        let hi = |k: u8| (k as f32 + 1.0) * CELL_SIDE - 0.01;
        // The image bounds are always compatible with the cell bounds, because the largest
        // radius is below a cell's width.
        let edge = radius * 0.95;
        (
            x.clamp(lo(cell.col).max(edge), hi(cell.col).min(1.0 - edge)),
            y.clamp(lo(cell.row).max(edge), hi(cell.row).min(1.0 - edge)),
        )
    }

    /// `colour`'s sRGB value with the configured per-channel jitter.
    fn jittered(&self, colour: Colour, rng: &mut ChaCha8Rng) -> [u8; 3] {
        let base = colour.rgb();
        let mut rgb = [0u8; 3];
        for ch in 0..3 {
            let j = self.config.colour_jitter * 255.0 * rng.random_range(-1.0f32..=1.0);
            rgb[ch] = (base[ch] as f32 + j).round().clamp(0.0, 255.0) as u8;
        }
        rgb
    }

    /// A tinted mid-grey background with a random gradient and its noise seed.
    fn background(&self, rng: &mut ChaCha8Rng) -> Background {
        let grey = rng.random_range(95.0f32..=155.0);
        let mut bg = [0u8; 3];
        for ch in &mut bg {
            *ch = (grey + rng.random_range(-12.0f32..=12.0)).round() as u8;
        }
        Background {
            rgb: bg,
            gradient_angle: rng.random_range(0.0f32..std::f32::consts::TAU),
            gradient_strength: self.config.background_gradient * rng.random_range(0.0f32..=1.0),
            noise: self.config.background_noise,
            noise_seed: rng.random(),
        }
    }

    /// Up to `clutter` distractor marks: grey-ish dots or short strokes.
    fn marks(&self, rng: &mut ChaCha8Rng) -> Vec<Mark> {
        (0..rng.random_range(0..=self.config.clutter))
            .map(|_| {
                let shade = rng.random_range(40.0f32..=215.0);
                let tint = |r: &mut ChaCha8Rng| {
                    (shade + r.random_range(-30.0f32..=30.0)).clamp(0.0, 255.0) as u8
                };
                Mark {
                    x: rng.random_range(0.0f32..1.0),
                    y: rng.random_range(0.0f32..1.0),
                    length: if rng.random_bool(0.5) {
                        0.0
                    } else {
                        rng.random_range(0.03f32..=0.08)
                    },
                    angle: rng.random_range(0.0f32..std::f32::consts::PI),
                    width: rng.random_range(0.012f32..=0.025),
                    rgb: [tint(rng), tint(rng), tint(rng)],
                }
            })
            .collect()
    }

    /// Draws a scene at the configured resolution.
    pub fn render(&self, scene: &Scene) -> image::RgbImage {
        render::render(scene, self.config.image_size)
    }

    /// Draws a scene at any resolution (the scene graph is resolution independent).
    pub fn render_at(&self, scene: &Scene, size: u32) -> image::RgbImage {
        render::render(scene, size)
    }

    /// Five distinct reference captions from different templates.
    pub fn captions(&self, scene: &Scene, index: u64) -> Vec<String> {
        let mut rng = self.rng(index, Purpose::Captions);
        captions::references(scene, &mut rng)
    }

    /// The caption used for training: with probability `caption_noise` an alt-text-like
    /// replacement (partial, generic or mismatched); otherwise the canonical description or a
    /// canonical relation (with the configured shares), or else one of the references.
    pub fn training_caption(&self, scene: &Scene, index: u64) -> String {
        let mut rng = self.rng(index, Purpose::TrainingCaption);
        let c = &self.config;
        let noisy = c.caption_noise > 0.0 && rng.random_bool(c.caption_noise as f64);
        if !noisy && c.canonical_captions + c.relation_captions > 0.0 {
            let u: f32 = rng.random();
            if u < c.canonical_captions {
                return captions::canonical(scene);
            }
            if u < c.canonical_captions + c.relation_captions {
                return tasks::canonical_relation(scene, &mut rng);
            }
        }
        self.training_caption_from(scene, index, noisy, &mut rng)
    }

    /// The noisy or reference training caption, once the canonical shares are decided.
    fn training_caption_from(
        &self,
        scene: &Scene,
        index: u64,
        noisy: bool,
        rng: &mut ChaCha8Rng,
    ) -> String {
        if noisy {
            match rng.random_range(0..3) {
                0 => captions::partial(scene, rng),
                1 => captions::generic(rng),
                _ => {
                    // A caption of another scene of the same world.
                    let mut other = rng.random::<u64>();
                    if other == index {
                        other = other.wrapping_add(1);
                    }
                    let scene = self.scene(other);
                    let refs = self.captions(&scene, other);
                    refs[rng.random_range(0..refs.len())].clone()
                }
            }
        } else {
            let refs = self.captions(scene, index);
            refs[rng.random_range(0..refs.len())].clone()
        }
    }

    /// The sample at `index`: rendered image, the five reference captions, the scene graph as
    /// `meta` (with the training caption under `training_caption`), key = the index in decimal.
    pub fn sample(&self, index: u64) -> Sample {
        let scene = self.scene(index);
        let mut meta = scene.to_json();
        meta["training_caption"] = self.training_caption(&scene, index).into();
        meta["index"] = index.into();
        meta["split"] = serde_json::to_value(self.split).expect("split serialises");
        Sample {
            key: index.to_string(),
            image: ImageData::Rgb(self.render(&scene)),
            captions: self.captions(&scene, index),
            meta,
        }
    }
}
