//! Caption metrics computed exactly as the reference COCO caption evaluation code,
//! pycocoevalcap 1.2 (<https://github.com/salaniz/pycocoevalcap>, the `Bleu`, `Rouge` and `Cider`
//! classes), computes them: corpus BLEU-1..4, ROUGE-L and CIDEr-D.
//!
//! The scorers take captions that are already tokenised (tokens separated by spaces), as
//! pycocoevalcap's scorers do. [`tokenize`] is a Java-free stand-in for the PTBTokenizer that
//! pycocoevalcap runs first; [`score_captions`] applies it and then scores.
//!
//! Faithfulness: the arithmetic follows the Python code operation by operation, including its
//! quirks (the `tiny`/`small` constants of BLEU, ROUGE-L's `split(" ")`, CIDEr-D's bigram-count
//! "length"), floating-point sums run in the order Python and numpy run them (dict insertion
//! order, numpy's pairwise summation in means), and `pow`/`exp`/`ln` are the same libm calls, so
//! on the fixture of `tests/caption_metrics.rs` (40 images) every score, corpus and per image, is
//! bit-identical to pycocoevalcap's on x86-64 Linux. Everything is deterministic: hash maps are
//! only used for lookups, never iterated in an order that reaches a floating-point sum.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Corpus-level caption scores, on pycocoevalcap's scale (BLEU and ROUGE-L in `[0, 1]`,
/// CIDEr-D in `[0, 10]`, usually reported ×100).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaptionScores {
    /// Corpus BLEU with n-grams up to 1 (see [`bleu`]).
    pub bleu_1: f64,
    /// Corpus BLEU with n-grams up to 2.
    pub bleu_2: f64,
    /// Corpus BLEU with n-grams up to 3.
    pub bleu_3: f64,
    /// Corpus BLEU with n-grams up to 4.
    pub bleu_4: f64,
    /// Mean per-image ROUGE-L (see [`rouge_l`]).
    pub rouge_l: f64,
    /// Mean per-image CIDEr-D (see [`cider_d`]).
    pub cider_d: f64,
    /// Number of images scored.
    pub images: usize,
}

/// One image: its reference captions and one hypothesis, already tokenised (space-separated).
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionItem {
    /// The reference (ground-truth) captions; at least one is required.
    pub refs: Vec<String>,
    /// The generated caption being scored.
    pub hyp: String,
}

/// Longest n-gram used by BLEU and CIDEr-D (pycocoevalcap's `n=4`).
const MAX_ORDER: usize = 4;
/// BLEU's numerator offset, "so that if guess is 0 still return 0" (bleu_scorer.py).
const BLEU_TINY: f64 = 1e-15;
/// BLEU's denominator offset that avoids dividing by zero (bleu_scorer.py).
const BLEU_SMALL: f64 = 1e-9;
/// ROUGE-L's recall weight β (rouge.py).
const ROUGE_BETA: f64 = 1.2;
/// Standard deviation of CIDEr-D's Gaussian length penalty (cider.py's `sigma=6.0`).
const CIDER_SIGMA: f64 = 6.0;
/// Factor CIDEr-D scores are multiplied by (cider_scorer.py's `score_avg *= 10.0`).
const CIDER_SCALE: f64 = 10.0;

/// Tokenises a caption the way pycocoevalcap's PTBTokenizer + punctuation filter roughly does,
/// without Java.
///
/// Exactly what it does:
/// 1. lower-cases the text (Unicode lower case);
/// 2. replaces each of the characters `. ? ! , : ; ' " `` ` `` ( ) [ ] { }` by a space (PTB turns
///    them into the tokens `.`, `?`, ..., `''`, `` ` ``, `-LRB-`, `-RRB-`, `-LCB-`, `-RCB-` and
///    pycocoevalcap drops those tokens; PTB spells `[`/`]` as `-LSB-`/`-RSB-`, which it does not
///    drop, but brackets are rare in captions);
/// 3. replaces each `-` by a space unless it joins two letters or digits, so `t-shirt` stays one
///    token (as in PTB) while stand-alone `-`, `--` and leading or trailing hyphens disappear;
/// 4. splits on whitespace (as Python's `str.split()` does) and joins the tokens with single
///    spaces.
///
/// Where it differs from PTB: contractions and possessives are not split off (`dog's` becomes
/// `dog s`, PTB gives `dog 's`; `don't` becomes `don t`, PTB gives `do n't`); periods inside
/// numbers and abbreviations are removed (`3.5` becomes `3 5`); other symbols (`/ & $ % #` ...)
/// stay attached to their neighbours instead of becoming tokens of their own. For typical
/// captions (lower-case words, commas, a final period) the output is the same as PTB's.
///
/// ```
/// use cappa_eval::caption_metrics::tokenize;
/// assert_eq!(tokenize("A man in a T-shirt, riding a horse."), "a man in a t-shirt riding a horse");
/// ```
pub fn tokenize(text: &str) -> String {
    let chars: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    let mut spaced = String::with_capacity(chars.len());
    for (i, &c) in chars.iter().enumerate() {
        let dropped = match c {
            '.' | '?' | '!' | ',' | ':' | ';' | '\'' | '"' | '`' | '(' | ')' | '[' | ']' | '{'
            | '}' => true,
            '-' => {
                let is_word_char = |position: Option<usize>| {
                    position
                        .and_then(|p| chars.get(p))
                        .is_some_and(|n| n.is_alphanumeric())
                };
                !(is_word_char(i.checked_sub(1)) && is_word_char(Some(i + 1)))
            }
            _ => false,
        };
        spaced.push(if dropped { ' ' } else { c });
    }
    python_split(&spaced).join(" ")
}

/// Tokenises every reference and hypothesis with [`tokenize`], then computes BLEU-1..4, ROUGE-L
/// and CIDEr-D on the whole set, as pycocoevalcap's COCOEvalCap does (after its PTBTokenizer).
///
/// An empty `items` gives all scores 0.0 and `images: 0`.
///
/// # Panics
///
/// If an item has no reference captions.
pub fn score_captions(items: &[CaptionItem]) -> CaptionScores {
    assert_has_refs(items);
    let tokenised: Vec<CaptionItem> = items
        .iter()
        .map(|item| CaptionItem {
            refs: item.refs.iter().map(|r| tokenize(r)).collect(),
            hyp: tokenize(&item.hyp),
        })
        .collect();
    let [bleu_1, bleu_2, bleu_3, bleu_4] = bleu(&tokenised);
    CaptionScores {
        bleu_1,
        bleu_2,
        bleu_3,
        bleu_4,
        rouge_l: rouge_l(&tokenised),
        cider_d: cider_d(&tokenised),
        images: items.len(),
    }
}

/// Corpus-level BLEU-1..4 as pycocoevalcap's `Bleu(4)` computes it (bleu_scorer.py,
/// `compute_score(option='closest')`).
///
/// Sentences are split on whitespace. Clipped n-gram matches (each n-gram counted at most as often
/// as in the reference where it is most frequent) and hypothesis n-gram counts are summed over
/// the corpus; BLEU-n is the geometric mean of the precisions up to n, each computed as
/// `(matches + 1e-15) / (guesses + 1e-9)`, times the brevity penalty `exp(1 - r/c)` when the total
/// hypothesis length `c` is below the total reference length `r`. Each image's reference length
/// is that of its reference closest in length to the hypothesis, the shorter one on a tie.
///
/// An empty `items` gives `[0.0; 4]`.
///
/// # Panics
///
/// If an item has no reference captions.
pub fn bleu(items: &[CaptionItem]) -> [f64; 4] {
    assert_has_refs(items);
    if items.is_empty() {
        return [0.0; MAX_ORDER];
    }
    let mut hyp_len = 0usize;
    let mut ref_len = 0usize;
    let mut guesses = [0usize; MAX_ORDER];
    let mut matches = [0usize; MAX_ORDER];
    for item in items {
        let hyp_words = python_split(&item.hyp);
        let ref_words: Vec<Vec<&str>> = item.refs.iter().map(|r| python_split(r)).collect();
        let mut max_ref_counts: HashMap<&[&str], usize> = HashMap::new();
        for words in &ref_words {
            for (ngram, count) in NgramCounts::new(words).entries {
                let max = max_ref_counts.entry(ngram).or_insert(0);
                *max = (*max).max(count);
            }
        }
        let closest = ref_words
            .iter()
            .map(|words| (words.len().abs_diff(hyp_words.len()), words.len()))
            .min()
            .map(|(_, len)| len)
            .unwrap_or_default();
        hyp_len += hyp_words.len();
        ref_len += closest;
        for (k, guess) in guesses.iter_mut().enumerate() {
            *guess += hyp_words.len().saturating_sub(k);
        }
        for (ngram, count) in NgramCounts::new(&hyp_words).entries {
            let clip = max_ref_counts.get(ngram).copied().unwrap_or(0);
            matches[ngram.len() - 1] += count.min(clip);
        }
    }
    let mut scores = [0.0; MAX_ORDER];
    let mut product = 1.0;
    for (k, score) in scores.iter_mut().enumerate() {
        product *= (matches[k] as f64 + BLEU_TINY) / (guesses[k] as f64 + BLEU_SMALL);
        *score = product.powf(1.0 / (k + 1) as f64);
    }
    let ratio = (hyp_len as f64 + BLEU_TINY) / (ref_len as f64 + BLEU_SMALL);
    if ratio < 1.0 {
        let brevity_penalty = (1.0 - 1.0 / ratio).exp();
        for score in &mut scores {
            *score *= brevity_penalty;
        }
    }
    scores
}

/// Mean over images of [`rouge_l_per_image`], as pycocoevalcap's `Rouge().compute_score` returns
/// it. An empty `items` gives 0.0.
///
/// # Panics
///
/// If an item has no reference captions.
pub fn rouge_l(items: &[CaptionItem]) -> f64 {
    numpy_mean(&rouge_l_per_image(items))
}

/// ROUGE-L of each image, as pycocoevalcap's `Rouge.calc_score`: sentences are split on single
/// spaces (`split(" ")`, so an empty caption is one empty token and a double space makes an empty
/// token), the longest common subsequence with each reference gives a precision and a recall, the
/// best precision and the best recall are taken separately over the references, and the score is
/// `(1 + β²)·P·R / (R + β²·P)` with β = 1.2 (0 when either is 0).
///
/// # Panics
///
/// If an item has no reference captions.
pub fn rouge_l_per_image(items: &[CaptionItem]) -> Vec<f64> {
    assert_has_refs(items);
    let beta_sq = ROUGE_BETA * ROUGE_BETA;
    items
        .iter()
        .map(|item| {
            let hyp: Vec<&str> = item.hyp.split(' ').collect();
            let (mut best_precision, mut best_recall) = (0.0f64, 0.0f64);
            for reference in &item.refs {
                let reference: Vec<&str> = reference.split(' ').collect();
                let lcs = lcs_len(&reference, &hyp) as f64;
                best_precision = best_precision.max(lcs / hyp.len() as f64);
                best_recall = best_recall.max(lcs / reference.len() as f64);
            }
            if best_precision != 0.0 && best_recall != 0.0 {
                (1.0 + beta_sq) * best_precision * best_recall
                    / (best_recall + beta_sq * best_precision)
            } else {
                0.0
            }
        })
        .collect()
}

/// Mean over images of [`cider_d_per_image`], as pycocoevalcap's `Cider().compute_score` returns
/// it (the "CIDEr" of COCO leaderboards, which is CIDEr-D). An empty `items` gives 0.0.
///
/// # Panics
///
/// If an item has no reference captions.
pub fn cider_d(items: &[CaptionItem]) -> f64 {
    numpy_mean(&cider_d_per_image(items))
}

/// CIDEr-D of each image, as pycocoevalcap's `CiderScorer` (n = 4, σ = 6) computes it.
///
/// Sentences are split on whitespace. The document frequency of an n-gram is the number of images
/// of `items` whose references contain it, so scores depend on the whole set, not just the image.
/// Each sentence becomes, for n = 1..4, a tf-idf vector `count · (ln(images) − ln(max(1, df)))`.
/// For each reference and each n the score is `Σ min(hyp, ref) · ref` over the hypothesis n-grams,
/// divided by the two vector norms (when both are non-zero), times the Gaussian length penalty
/// `exp(−δ² / (2σ²))`; the image score is 10 × the mean over n and over references.
///
/// The length difference δ is pycocoevalcap's: the "length" of a sentence is its number of bigram
/// occurrences (max(words − 1, 0)), not its number of words. That shifts both lengths by one and
/// so only matters for empty sentences, which score 0 anyway; it is replicated regardless.
///
/// # Panics
///
/// If an item has no reference captions.
pub fn cider_d_per_image(items: &[CaptionItem]) -> Vec<f64> {
    assert_has_refs(items);
    let words: Vec<(Vec<&str>, Vec<Vec<&str>>)> = items
        .iter()
        .map(|item| {
            let refs = item.refs.iter().map(|r| python_split(r)).collect();
            (python_split(&item.hyp), refs)
        })
        .collect();
    let cooked: Vec<(NgramCounts<'_>, Vec<NgramCounts<'_>>)> = words
        .iter()
        .map(|(hyp, refs)| {
            let refs = refs.iter().map(|r| NgramCounts::new(r)).collect();
            (NgramCounts::new(hyp), refs)
        })
        .collect();
    let mut document_frequency: HashMap<&[&str], f64> = HashMap::new();
    for (_, refs) in &cooked {
        let distinct: HashSet<&[&str]> = refs
            .iter()
            .flat_map(|r| r.entries.iter().map(|&(ngram, _)| ngram))
            .collect();
        for ngram in distinct {
            *document_frequency.entry(ngram).or_insert(0.0) += 1.0;
        }
    }
    let log_images = (items.len() as f64).ln();
    let idf = |ngram: &[&str]| {
        let df = document_frequency.get(ngram).copied().unwrap_or(0.0);
        log_images - df.max(1.0).ln()
    };
    cooked
        .iter()
        .map(|(hyp, refs)| {
            let hyp = TfIdf::new(hyp, idf);
            let mut per_order = [0.0; MAX_ORDER];
            for reference in refs {
                let similarity = cider_similarity(&hyp, &TfIdf::new(reference, idf));
                for (total, s) in per_order.iter_mut().zip(similarity) {
                    *total += s;
                }
            }
            numpy_mean(&per_order) / refs.len() as f64 * CIDER_SCALE
        })
        .collect()
}

/// Why a caption file (the input of `cappa metrics caption`) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptionFileError {
    /// The file could not be read.
    #[error("cannot read caption file `{}`: {source}; check that it exists and is readable", path.display())]
    Read {
        /// The caption file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON.
    #[error(
        "caption file `{}` is not valid JSON ({source}); it must be an object like \
         {{\"<image id>\": {{\"refs\": [\"<reference>\", ...], \"hyp\": \"<caption>\"}}}}",
        path.display()
    )]
    Json {
        /// The caption file.
        path: PathBuf,
        /// The parse error, with its line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The top-level JSON value is not an object.
    #[error(
        "caption file `{}` holds {found} at the top level; it must be an object mapping image ids \
         to {{\"refs\": [\"<reference>\", ...], \"hyp\": \"<caption>\"}}",
        path.display()
    )]
    NotAnObject {
        /// The caption file.
        path: PathBuf,
        /// What the top level is instead ("an array", "a string", ...).
        found: &'static str,
    },
    /// An image's entry is not an object.
    #[error(
        "caption file `{}`: entry \"{id}\" is {found}; it must be an object \
         {{\"refs\": [\"<reference>\", ...], \"hyp\": \"<caption>\"}}",
        path.display()
    )]
    EntryNotAnObject {
        /// The caption file.
        path: PathBuf,
        /// The image id of the entry.
        id: String,
        /// What the entry is instead.
        found: &'static str,
    },
    /// An image's entry lacks a required field.
    #[error(
        "caption file `{}`: entry \"{id}\" has no \"{field}\"; add it as \"{field}\": {expected}",
        path.display()
    )]
    MissingField {
        /// The caption file.
        path: PathBuf,
        /// The image id of the entry.
        id: String,
        /// The missing field, `hyp` or `refs`.
        field: &'static str,
        /// What the field should hold, as a JSON sketch.
        expected: &'static str,
    },
    /// A field holds the wrong kind of JSON value.
    #[error(
        "caption file `{}`: entry \"{id}\", field \"{field}\" is {found}; it must be {expected}",
        path.display()
    )]
    WrongType {
        /// The caption file.
        path: PathBuf,
        /// The image id of the entry.
        id: String,
        /// The offending field (`hyp`, `refs` or `refs[i]`).
        field: String,
        /// What the field should hold.
        expected: &'static str,
        /// What it holds instead.
        found: &'static str,
    },
    /// An image has an empty list of references.
    #[error(
        "caption file `{}`: entry \"{id}\" has an empty \"refs\"; every image needs at least one \
         reference caption (drop the entry or add its references)",
        path.display()
    )]
    EmptyRefs {
        /// The caption file.
        path: PathBuf,
        /// The image id of the entry.
        id: String,
    },
}

/// Reads `{id: {"refs": [...], "hyp": "..."}}` (the `cappa metrics caption` input), in id order.
///
/// Ids are sorted as strings (so `"10"` comes before `"9"`); the order only affects the rounding
/// of the means. Captions are returned as written, not tokenised; fields other than `refs` and
/// `hyp` are ignored. Every entry needs a string `hyp` and a non-empty list of string `refs`.
pub fn read_caption_file(path: &Path) -> Result<Vec<(String, CaptionItem)>, CaptionFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| CaptionFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|source| CaptionFileError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let Value::Object(entries) = value else {
        return Err(CaptionFileError::NotAnObject {
            path: path.to_path_buf(),
            found: json_kind(&value),
        });
    };
    let mut items = Vec::with_capacity(entries.len());
    for (id, entry) in entries {
        let item = parse_entry(path, &id, &entry)?;
        items.push((id, item));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(items)
}

/// Parses one `{"refs": [...], "hyp": "..."}` entry of a caption file.
fn parse_entry(path: &Path, id: &str, entry: &Value) -> Result<CaptionItem, CaptionFileError> {
    let wrong_type = |field: String, expected, found| CaptionFileError::WrongType {
        path: path.to_path_buf(),
        id: id.to_owned(),
        field,
        expected,
        found,
    };
    let missing = |field, expected| CaptionFileError::MissingField {
        path: path.to_path_buf(),
        id: id.to_owned(),
        field,
        expected,
    };
    let Value::Object(fields) = entry else {
        return Err(CaptionFileError::EntryNotAnObject {
            path: path.to_path_buf(),
            id: id.to_owned(),
            found: json_kind(entry),
        });
    };
    let hyp = match fields.get("hyp") {
        None => return Err(missing("hyp", "\"<generated caption>\"")),
        Some(Value::String(hyp)) => hyp.clone(),
        Some(other) => return Err(wrong_type("hyp".into(), "a string", json_kind(other))),
    };
    let refs = match fields.get("refs") {
        None => return Err(missing("refs", "[\"<reference caption>\", ...]")),
        Some(Value::Array(refs)) => refs,
        Some(other) => {
            return Err(wrong_type(
                "refs".into(),
                "a list of strings",
                json_kind(other),
            ))
        }
    };
    if refs.is_empty() {
        return Err(CaptionFileError::EmptyRefs {
            path: path.to_path_buf(),
            id: id.to_owned(),
        });
    }
    let refs = refs
        .iter()
        .enumerate()
        .map(|(i, r)| match r {
            Value::String(r) => Ok(r.clone()),
            other => Err(wrong_type(
                format!("refs[{i}]"),
                "a string",
                json_kind(other),
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok(CaptionItem { refs, hyp })
}

/// "a string", "an array", ...: the kind of a JSON value, for error messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Panics with a clear message if an item has no references (pycocoevalcap asserts the same).
fn assert_has_refs(items: &[CaptionItem]) {
    if let Some(index) = items.iter().position(|item| item.refs.is_empty()) {
        panic!(
            "caption item {index} (hypothesis {:?}) has no reference captions; every image needs \
             at least one reference",
            items[index].hyp
        );
    }
}

/// Python's `str.split()`: splits on runs of whitespace, dropping empty pieces. Python counts
/// the separators U+001C..U+001F as whitespace too, Rust's `char::is_whitespace` does not.
fn python_split(text: &str) -> Vec<&str> {
    text.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|word| !word.is_empty())
        .collect()
}

/// The n-gram counts (n = 1..4) of one sentence, as pycocoevalcap's `precook` builds them.
///
/// Entries are in first-occurrence order, all unigrams first, then bigrams and so on, which is
/// the iteration order of the Python dict; CIDEr-D sums floating-point terms in that order.
#[derive(Debug)]
struct NgramCounts<'a> {
    /// Each distinct n-gram with its number of occurrences.
    entries: Vec<(&'a [&'a str], usize)>,
    /// Position of each n-gram in `entries`.
    index: HashMap<&'a [&'a str], usize>,
}

impl<'a> NgramCounts<'a> {
    /// Counts the n-grams of a sentence given as words.
    fn new(words: &'a [&'a str]) -> Self {
        let mut counts = NgramCounts {
            entries: Vec::new(),
            index: HashMap::new(),
        };
        for n in 1..=MAX_ORDER {
            for ngram in words.windows(n) {
                match counts.index.entry(ngram) {
                    Entry::Occupied(position) => counts.entries[*position.get()].1 += 1,
                    Entry::Vacant(slot) => {
                        slot.insert(counts.entries.len());
                        counts.entries.push((ngram, 1));
                    }
                }
            }
        }
        counts
    }
}

/// A sentence's CIDEr tf-idf vectors, pycocoevalcap's `counts2vec`.
#[derive(Debug)]
struct TfIdf<'c, 'a> {
    /// The sentence's n-gram counts.
    counts: &'c NgramCounts<'a>,
    /// The tf-idf weight of each entry of `counts.entries`.
    weights: Vec<f64>,
    /// The Euclidean norm of the vector of each n-gram order.
    norms: [f64; MAX_ORDER],
    /// pycocoevalcap's length: the number of bigram occurrences.
    length: usize,
}

impl<'c, 'a> TfIdf<'c, 'a> {
    /// Weighs each n-gram's count by `idf(ngram)`.
    fn new(counts: &'c NgramCounts<'a>, idf: impl Fn(&[&str]) -> f64) -> Self {
        let mut weights = Vec::with_capacity(counts.entries.len());
        let mut squared_norms = [0.0; MAX_ORDER];
        let mut length = 0;
        for &(ngram, count) in &counts.entries {
            let weight = count as f64 * idf(ngram);
            weights.push(weight);
            squared_norms[ngram.len() - 1] += weight * weight;
            if ngram.len() == 2 {
                length += count;
            }
        }
        TfIdf {
            counts,
            weights,
            norms: squared_norms.map(f64::sqrt),
            length,
        }
    }

    /// The weight of an n-gram, 0 if the sentence does not contain it.
    fn weight(&self, ngram: &[&str]) -> f64 {
        self.counts
            .index
            .get(ngram)
            .map_or(0.0, |&position| self.weights[position])
    }
}

/// pycocoevalcap's CIDEr-D `sim`: for each n-gram order, the clipped cosine similarity of the
/// hypothesis and reference vectors times the Gaussian length penalty.
fn cider_similarity(hyp: &TfIdf<'_, '_>, reference: &TfIdf<'_, '_>) -> [f64; MAX_ORDER] {
    let delta = hyp.length as f64 - reference.length as f64;
    // `np.e ** x` in Python is `pow(e, x)`, which can differ from `exp(x)` in the last bit.
    let penalty = std::f64::consts::E.powf(-(delta * delta) / (2.0 * CIDER_SIGMA * CIDER_SIGMA));
    let mut similarity = [0.0; MAX_ORDER];
    for (&(ngram, _), &weight) in hyp.counts.entries.iter().zip(&hyp.weights) {
        let reference_weight = reference.weight(ngram);
        similarity[ngram.len() - 1] += weight.min(reference_weight) * reference_weight;
    }
    for (n, value) in similarity.iter_mut().enumerate() {
        if hyp.norms[n] != 0.0 && reference.norms[n] != 0.0 {
            *value /= hyp.norms[n] * reference.norms[n];
        }
        *value *= penalty;
    }
    similarity
}

/// Length of the longest common subsequence of two token lists (rouge.py's `my_lcs`).
fn lcs_len(a: &[&str], b: &[&str]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut previous = vec![0usize; short.len() + 1];
    let mut current = vec![0usize; short.len() + 1];
    for token in long {
        for (j, other) in short.iter().enumerate() {
            current[j + 1] = if token == other {
                previous[j] + 1
            } else {
                previous[j + 1].max(current[j])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[short.len()]
}

/// `np.mean` of a float64 array: numpy's pairwise sum divided by the length; 0.0 when empty
/// (numpy would give NaN).
fn numpy_mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        numpy_pairwise_sum(values) / values.len() as f64
    }
}

/// numpy's `pairwise_sum` for float64 (`np.add.reduce` on a contiguous array), replicated so that
/// means round exactly as numpy's do: below 8 values a plain left-to-right sum, up to 128 values
/// eight interleaved partial sums combined as a tree and then the remainder, beyond that the two
/// halves (split at a multiple of 8) summed recursively.
fn numpy_pairwise_sum(values: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = values.len();
    if n < 8 {
        values.iter().fold(0.0, |sum, &v| sum + v)
    } else if n <= BLOCK {
        let unrolled = n - n % 8;
        let mut partial = [0.0; 8];
        partial.copy_from_slice(&values[..8]);
        for chunk in values[8..unrolled].chunks_exact(8) {
            for (p, &v) in partial.iter_mut().zip(chunk) {
                *p += v;
            }
        }
        let [p0, p1, p2, p3, p4, p5, p6, p7] = partial;
        let tree = ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7));
        values[unrolled..].iter().fold(tree, |sum, &v| sum + v)
    } else {
        let half = n / 2;
        let split = half - half % 8;
        numpy_pairwise_sum(&values[..split]) + numpy_pairwise_sum(&values[split..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(refs: &[&str], hyp: &str) -> CaptionItem {
        CaptionItem {
            refs: refs.iter().map(|r| r.to_string()).collect(),
            hyp: hyp.to_string(),
        }
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() <= 1e-12,
            "{actual} != {expected} (difference {})",
            actual - expected
        );
    }

    #[test]
    fn tokenize_lowercases_and_drops_ptb_punctuation() {
        assert_eq!(
            tokenize("A dog, sitting on the Bench."),
            "a dog sitting on the bench"
        );
        assert_eq!(
            tokenize("\"Quoted\" `text` (in) [brackets] {braces}; yes: no? wow!!"),
            "quoted text in brackets braces yes no wow"
        );
        assert_eq!(
            tokenize("  several   spaces\tand\nnewlines  "),
            "several spaces and newlines"
        );
        assert_eq!(tokenize("Wait..."), "wait");
        assert_eq!(tokenize(""), "");
        assert_eq!(tokenize(" .,;! "), "");
    }

    #[test]
    fn tokenize_keeps_hyphens_inside_words_only() {
        assert_eq!(tokenize("A T-shirt"), "a t-shirt");
        assert_eq!(tokenize("a well-known 3-d film"), "a well-known 3-d film");
        assert_eq!(tokenize("dog - cat -- bird"), "dog cat bird");
        assert_eq!(tokenize("-lead trail- a--b"), "lead trail a b");
    }

    #[test]
    fn tokenize_differs_from_ptb_on_contractions_and_numbers() {
        // PTB would give "the dog 's ball" and "do n't", and keep "3.5".
        assert_eq!(tokenize("The dog's ball"), "the dog s ball");
        assert_eq!(tokenize("Don't"), "don t");
        assert_eq!(tokenize("3.5 feet"), "3 5 feet");
    }

    #[test]
    fn bleu_of_an_exact_match_is_one() {
        let scores = bleu(&[item(
            &["a man riding a horse on the beach"],
            "a man riding a horse on the beach",
        )]);
        for score in scores {
            assert!((score - 1.0).abs() < 1e-9, "{scores:?}");
        }
    }

    #[test]
    fn bleu_clips_counts_and_applies_the_brevity_penalty() {
        // Hypothesis of 4 words against a reference of 6. Unigrams: "the" ×2 (reference has 2),
        // "cat" ×2 (reference has 1) → 3 matches of 4. Bigrams: "the cat" ×2 (reference has 1),
        // "cat the" ×1 (absent) → 1 match of 3. Brevity penalty exp(1 − 6/4).
        let scores = bleu(&[item(&["the cat sat on the mat"], "the cat the cat")]);
        let penalty = (-0.5f64).exp();
        assert!((scores[0] - 0.75 * penalty).abs() < 1e-9, "{scores:?}");
        assert!((scores[1] - (0.75f64 * (1.0 / 3.0)).sqrt() * penalty).abs() < 1e-9);
        // No trigram or 4-gram matches: only the 1e-15 offsets keep BLEU-3/4 above zero.
        assert!(scores[2] < 1e-4 && scores[3] < 1e-3, "{scores:?}");
    }

    #[test]
    fn bleu_picks_the_closest_reference_length_and_the_shorter_on_a_tie() {
        // References of 3 and 5 words are both 1 away from the 4-word hypothesis: the shorter
        // counts, so there is no brevity penalty (with 5 it would be exp(1 − 5/4)).
        let scores = bleu(&[item(&["a b c", "a b c d e"], "a b c d")]);
        assert!((scores[0] - 1.0).abs() < 1e-9, "{scores:?}");
        let scores = bleu(&[item(&["a b c d e", "a b c d e f g"], "a b c d")]);
        assert!(
            (scores[0] - (1.0f64 - 5.0 / 4.0).exp()).abs() < 1e-9,
            "{scores:?}"
        );
    }

    #[test]
    fn bleu_is_pooled_over_the_corpus_not_averaged() {
        // Image 1: 2 of 2 unigrams match; image 2: 0 of 2. Pooled precision 2/4, equal lengths.
        let scores = bleu(&[item(&["a b"], "a b"), item(&["c d"], "x y")]);
        assert!((scores[0] - 0.5).abs() < 1e-9, "{scores:?}");
    }

    #[test]
    fn rouge_l_of_a_small_lcs_case() {
        // LCS("a b c d", "a c e d f") = "a c d": P = 3/4, R = 3/5.
        let (p, r, beta_sq) = (0.75, 0.6, 1.44);
        let expected = (1.0 + beta_sq) * p * r / (r + beta_sq * p);
        assert_close(rouge_l(&[item(&["a c e d f"], "a b c d")]), expected);
        assert!((expected - 1.098 / 1.68).abs() < 1e-12);
        // Precision and recall are maxed separately: "a b" adds P = 2/4 but R = 2/2.
        let (p, r) = (0.75, 1.0);
        let expected = (1.0 + beta_sq) * p * r / (r + beta_sq * p);
        assert_close(rouge_l(&[item(&["a c e d f", "a b"], "a b c d")]), expected);
    }

    #[test]
    fn rouge_l_splits_on_single_spaces_like_pycocoevalcap() {
        // "a  b" is three tokens ["a", "", "b"]: LCS 2 with "a b", P = 2/3, R = 1.
        let (p, r, beta_sq) = (2.0 / 3.0, 1.0, 1.44);
        let expected = (1.0 + beta_sq) * p * r / (r + beta_sq * p);
        assert_close(rouge_l(&[item(&["a b"], "a  b")]), expected);
        assert_eq!(rouge_l(&[item(&["a b"], "")]), 0.0);
        assert_eq!(
            rouge_l_per_image(&[item(&["a"], "a"), item(&["a"], "b")]),
            [1.0, 0.0]
        );
    }

    #[test]
    fn cider_d_of_a_two_image_toy_set() {
        // Two images, every n-gram in one image's references only: idf = ln 2 − ln 1 for all.
        // Image 1: hypothesis "a b" = reference "a b": unigram and bigram cosines are 1, there
        // are no tri- or 4-grams, equal lengths: 10 · (1 + 1 + 0 + 0) / 4 = 5.
        // Image 2: "d e" against "d e f": unigram cosine 2/√6, bigram 1/√2, lengths (bigram
        // counts) 1 and 2, penalty exp(−1/72).
        let items = [item(&["a b"], "a b"), item(&["d e f"], "d e")];
        let second = 10.0 * (2.0 / 6f64.sqrt() + 1.0 / 2f64.sqrt()) / 4.0 * (-1.0f64 / 72.0).exp();
        let per_image = cider_d_per_image(&items);
        assert_close(per_image[0], 5.0);
        assert_close(per_image[1], second);
        assert_close(cider_d(&items), (5.0 + second) / 2.0);
    }

    #[test]
    fn cider_d_rewards_consensus_and_ignores_ngrams_common_to_all_images() {
        let refs = [
            "a dog runs on the grass",
            "a dog running on grass",
            "the dog runs on grass",
        ];
        let others = [
            item(&["a cat sleeps on a sofa"], "a cat on a sofa"),
            item(&["two birds in the sky"], "birds"),
        ];
        let score = |hyp: &str| {
            let mut items = vec![item(&refs, hyp)];
            items.extend(others.iter().cloned());
            cider_d_per_image(&items)[0]
        };
        assert!(score("a dog runs on grass") > score("a dog sleeps on a sofa"));
        assert!(score("a dog sleeps on a sofa") > score("birds in the sky"));
        // An n-gram in the references of every image has idf 0 and earns nothing.
        let common = [item(&["x a"], "x"), item(&["x b"], "x")];
        assert_eq!(cider_d_per_image(&common), [0.0, 0.0]);
    }

    #[test]
    fn cider_d_length_is_the_number_of_bigrams() {
        let words = ["a", "b", "a", "b", "c"];
        let counts = NgramCounts::new(&words);
        assert_eq!(TfIdf::new(&counts, |_| 1.0).length, 4);
        let one = ["a"];
        let counts = NgramCounts::new(&one);
        assert_eq!(TfIdf::new(&counts, |_| 1.0).length, 0);
        let counts = NgramCounts::new(&[]);
        assert_eq!(TfIdf::new(&counts, |_| 1.0).length, 0);
    }

    #[test]
    fn ngram_counts_keep_first_occurrence_order() {
        let words = ["b", "a", "b", "a"];
        let counts = NgramCounts::new(&words);
        let entries: Vec<(String, usize)> = counts
            .entries
            .iter()
            .map(|(ngram, count)| (ngram.join(" "), *count))
            .collect();
        let expected = [
            ("b", 2),
            ("a", 2),
            ("b a", 2),
            ("a b", 1),
            ("b a b", 1),
            ("a b a", 1),
            ("b a b a", 1),
        ];
        assert_eq!(entries, expected.map(|(g, c)| (g.to_string(), c)));
    }

    #[test]
    fn python_split_matches_str_split() {
        assert_eq!(python_split("  a\tb\u{1f}c\u{a0}d  "), ["a", "b", "c", "d"]);
        assert!(python_split(" \n ").is_empty());
    }

    #[test]
    fn numpy_pairwise_sum_groups_like_numpy() {
        // Expected values from numpy 2.4: `np.sum([0.1] * 10)` is 1.0 where a left-to-right
        // sum gives 0.9999999999999999; `np.sum([1e16] + [1.0] * 9)` keeps the ones that a
        // left-to-right sum loses, but `np.sum([1e16, 1.0, 1.0])` (under 8 values) does not.
        assert_eq!(numpy_pairwise_sum(&[0.1; 10]), 1.0);
        assert_eq!(numpy_mean(&[0.1; 10]), 0.1);
        let mut big = vec![1e16];
        big.extend([1.0; 9]);
        assert_eq!(numpy_pairwise_sum(&big), 1.0000000000000008e16);
        assert_eq!(numpy_pairwise_sum(&big[..3]), 1e16);
        let long: Vec<f64> = (0..300).map(f64::from).collect();
        assert_eq!(numpy_pairwise_sum(&long), 299.0 * 300.0 / 2.0);
        assert_eq!(numpy_mean(&[]), 0.0);
    }

    #[test]
    fn empty_item_lists_score_zero() {
        let scores = score_captions(&[]);
        assert_eq!(
            scores,
            CaptionScores {
                bleu_1: 0.0,
                bleu_2: 0.0,
                bleu_3: 0.0,
                bleu_4: 0.0,
                rouge_l: 0.0,
                cider_d: 0.0,
                images: 0
            }
        );
    }

    #[test]
    #[should_panic(expected = "caption item 1 (hypothesis \"b\") has no reference captions")]
    fn items_without_references_panic() {
        bleu(&[item(&["a"], "a"), item(&[], "b")]);
    }

    #[test]
    fn score_captions_tokenises_first() {
        let raw = [item(&["A dog, running."], "a DOG running!")];
        let scores = score_captions(&raw);
        assert!(
            (scores.bleu_1 - 1.0).abs() < 1e-9 && scores.rouge_l == 1.0,
            "{scores:?}"
        );
        assert_eq!(scores.images, 1);
    }
}
