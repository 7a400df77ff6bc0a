//! Caption templates: five distinct reference captions per scene (attributes, counts, positions,
//! pairwise relations, with synonyms and varied word order), alt-text-like noise captions, and
//! the canonical phrasing the compositional tasks perturb.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{RelationKind, Scene, SceneObject};

/// Number words for counts 0..=8.
pub(crate) fn number_word(n: usize) -> &'static str {
    const WORDS: [&str; 9] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
    ];
    WORDS.get(n).copied().unwrap_or("many")
}

/// "a" or "an" for the phrase that follows.
fn article(phrase: &str) -> &'static str {
    match phrase.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

fn with_article(phrase: String) -> String {
    format!("{} {phrase}", article(&phrase))
}

fn pick<'a>(rng: &mut ChaCha8Rng, words: &[&'a str]) -> &'a str {
    words[rng.random_range(0..words.len())]
}

/// "small red star" (with synonyms); `with_size` = false gives "red star".
fn phrase(o: &SceneObject, rng: &mut ChaCha8Rng, with_size: bool) -> String {
    let shape = pick(rng, o.shape.synonyms());
    if with_size {
        let size = pick(rng, o.size.synonyms());
        format!("{size} {} {shape}", o.colour.name())
    } else {
        format!("{} {shape}", o.colour.name())
    }
}

/// "x", "x and y", "x, y and z".
fn join_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn relation_words(kind: RelationKind, rng: &mut ChaCha8Rng) -> &'static str {
    match kind {
        RelationKind::LeftOf => pick(rng, &["left of", "to the left of"]),
        RelationKind::RightOf => pick(rng, &["right of", "to the right of"]),
        RelationKind::Above => pick(rng, &["above", "over"]),
        RelationKind::Below => pick(rng, &["below", "under"]),
    }
}

/// Objects in a random order (captions should not leak the drawing order).
fn shuffled(scene: &Scene, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scene.objects.len()).collect();
    order.shuffle(rng);
    order
}

/// Template 1: a list of objects with size and colour.
fn list_caption(scene: &Scene, rng: &mut ChaCha8Rng) -> String {
    let items: Vec<String> = shuffled(scene, rng)
        .into_iter()
        .map(|i| with_article(phrase(&scene.objects[i], rng, true)))
        .collect();
    join_list(&items)
}

/// Template 2: the count first, then the objects.
fn count_caption(scene: &Scene, rng: &mut ChaCha8Rng) -> String {
    let n = scene.objects.len();
    let noun = match (n, rng.random_bool(0.5)) {
        (1, true) => "object",
        (1, false) => "shape",
        (_, true) => "objects",
        (_, false) => "shapes",
    };
    let items: Vec<String> = shuffled(scene, rng)
        .into_iter()
        .map(|i| with_article(phrase(&scene.objects[i], rng, false)))
        .collect();
    format!("{} {noun}: {}", number_word(n), join_list(&items))
}

/// Template 3: a pairwise relation ("a small red star left of a large blue ring").
fn relation_caption(scene: &Scene, rng: &mut ChaCha8Rng) -> String {
    let relations = scene.relations();
    if relations.is_empty() {
        let o = &scene.objects[0];
        return format!("{} on its own", with_article(phrase(o, rng, true)));
    }
    let r = relations[rng.random_range(0..relations.len())];
    let a = with_article(phrase(&scene.objects[r.subject], rng, true));
    let b = with_article(phrase(&scene.objects[r.object], rng, true));
    let words = relation_words(r.kind, rng);
    if rng.random_bool(0.5) {
        format!("{a} {words} {b}")
    } else {
        format!("{a} is {words} {b}")
    }
}

/// Template 4: existence with positions ("there is a green hexagon in the top left and ...").
fn position_caption(scene: &Scene, rng: &mut ChaCha8Rng) -> String {
    let items: Vec<String> = shuffled(scene, rng)
        .into_iter()
        .map(|i| {
            let o = &scene.objects[i];
            format!(
                "{} {}",
                with_article(phrase(o, rng, false)),
                o.cell.phrase()
            )
        })
        .collect();
    let lead = pick(rng, &["there is", "you can see"]);
    format!("{lead} {}", join_list(&items))
}

/// Template 5: the largest object and its place.
fn largest_caption(scene: &Scene, rng: &mut ChaCha8Rng) -> String {
    let o = &scene.objects[scene.largest()];
    let n = scene.objects.len();
    if n == 1 {
        return format!("a single {} {}", phrase(o, rng, true), o.cell.phrase());
    }
    let subject = pick(rng, &["the largest shape", "the biggest object"]);
    format!(
        "{subject} is {} {}, with {} smaller {}",
        with_article(phrase(o, rng, false)),
        o.cell.phrase(),
        number_word(n - 1),
        if n == 2 { "one" } else { "ones" }
    )
}

/// Template 6: the shapes only.
fn shapes_caption(scene: &Scene, rng: &mut ChaCha8Rng) -> String {
    let items: Vec<String> = shuffled(scene, rng)
        .into_iter()
        .map(|i| with_article(pick(rng, scene.objects[i].shape.synonyms()).to_string()))
        .collect();
    let lead = pick(rng, &["an image of", "a picture showing", "a drawing of"]);
    format!("{lead} {}", join_list(&items))
}

/// Template 7: position first ("in the top left there is a big green hexagon").
fn place_first_caption(scene: &Scene, rng: &mut ChaCha8Rng) -> String {
    let o = &scene.objects[rng.random_range(0..scene.objects.len())];
    let base = format!(
        "{} there is {}",
        o.cell.phrase(),
        with_article(phrase(o, rng, true))
    );
    match scene.objects.len() {
        1 => base,
        n => format!("{base} and {} more", number_word(n - 1)),
    }
}

/// Five distinct reference captions, each from a different template.
pub(crate) fn references(scene: &Scene, rng: &mut ChaCha8Rng) -> Vec<String> {
    type Template = fn(&Scene, &mut ChaCha8Rng) -> String;
    let mut templates: [Template; 7] = [
        list_caption,
        count_caption,
        relation_caption,
        position_caption,
        largest_caption,
        shapes_caption,
        place_first_caption,
    ];
    templates.shuffle(rng);
    let mut out: Vec<String> = Vec::with_capacity(5);
    for template in templates {
        let caption = template(scene, rng);
        if !out.contains(&caption) {
            out.push(caption);
        }
        if out.len() == 5 {
            break;
        }
    }
    // The templates differ in structure, so this only guards against future edits.
    let mut k = 2;
    while out.len() < 5 {
        let caption = format!("{} ({k})", out[0]);
        out.push(caption);
        k += 1;
    }
    out
}

/// The canonical description: every object in reading order (top row first, left to right),
/// each with its canonical size, colour and shape words. Deterministic for a scene.
pub(crate) fn canonical(scene: &Scene) -> String {
    let mut order: Vec<&SceneObject> = scene.objects.iter().collect();
    order.sort_by_key(|o| (o.cell.row, o.cell.col));
    let items: Vec<String> = order
        .into_iter()
        .map(|o| {
            with_article(format!(
                "{} {} {}",
                o.size.name(),
                o.colour.name(),
                o.shape.name()
            ))
        })
        .collect();
    join_list(&items)
}

/// A partial alt-text: only one object mentioned.
pub(crate) fn partial(scene: &Scene, rng: &mut ChaCha8Rng) -> String {
    let o = &scene.objects[rng.random_range(0..scene.objects.len())];
    let p = phrase(o, rng, false);
    match rng.random_range(0..3) {
        0 => with_article(p),
        1 => format!("{p} stock image"),
        _ => format!("{} icon", o.shape.name()),
    }
}

/// A generic alt-text that says nothing about the content.
pub(crate) fn generic(rng: &mut ChaCha8Rng) -> String {
    match rng.random_range(0..7) {
        0 => "a picture".to_string(),
        1 => format!("image {}", rng.random_range(1000..10000)),
        2 => "stock photo".to_string(),
        3 => format!("img_{:04}.jpg", rng.random_range(0..10000)),
        4 => "untitled".to_string(),
        5 => "click to enlarge".to_string(),
        _ => format!("photo by user{}", rng.random_range(1..1000)),
    }
}
