//! The caption tokenizer: a thin wrapper around Hugging Face `tokenizers` with the fixed
//! special tokens the models rely on and the caption encoding CapPa uses (tokens, then EOS,
//! truncated so that EOS survives, padded with the pad id).
//!
//! [`Tokenizer::train_bpe`] trains a byte-level BPE whose vocabulary starts with `<pad>` = 0,
//! `<bos>` = 1, `<eos>` = 2, `<mask>` = 3. Lower-casing and white-space normalisation are
//! normalizers inside the saved `tokenizer.json`, so the file is self-contained and any HF
//! runtime reproduces the ids. [`Tokenizer::load`] accepts any HF `tokenizer.json` and finds
//! the special tokens by name.
//!
//! Note: the CapPa reference uses `vocab_size` itself as the mask id (one extra embedding
//! row). Here the mask token is an ordinary vocabulary entry (id 3 for trained tokenizers), so
//! an embedding table of [`Tokenizer::vocab_size`] rows covers it.
//!
//! ```no_run
//! # use cappa_data::tokenizer::Tokenizer;
//! let captions = vec!["a cat on a mat".to_string(), "two dogs".to_string()];
//! let tokenizer = Tokenizer::train_bpe(captions.into_iter(), 1000, true).unwrap();
//! let ids = tokenizer.encode("A cat", 16); // 16 ids: tokens, EOS, then pad (0).
//! assert_eq!(tokenizer.decode(&ids), "a cat");
//! ```

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::{Lowercase, Replace, Sequence, Strip, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, NormalizerWrapper};

/// Names tried, in order, for each special token of a loaded tokenizer.
const PAD_NAMES: &[&str] = &["<pad>", "[PAD]", "<|pad|>"];
const BOS_NAMES: &[&str] = &[
    "<bos>",
    "<s>",
    "[CLS]",
    "<|startoftext|>",
    "<|begin_of_text|>",
];
const EOS_NAMES: &[&str] = &["<eos>", "</s>", "[SEP]", "<|endoftext|>", "<|end_of_text|>"];
const MASK_NAMES: &[&str] = &["<mask>", "[MASK]", "<|mask|>"];

/// The special tokens of a trained tokenizer, in id order.
const SPECIALS: [&str; 4] = ["<pad>", "<bos>", "<eos>", "<mask>"];

/// What can go wrong when training, loading or saving a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The underlying `tokenizers` library failed while training.
    #[error("training the BPE tokenizer failed: {0}")]
    Train(String),
    /// The requested vocabulary cannot even hold the special tokens and the byte alphabet.
    #[error("vocab_size {0} is too small: it must exceed 4 specials + 256 byte symbols")]
    VocabTooSmall(usize),
    /// The file could not be read or parsed as a `tokenizer.json`.
    #[error("cannot load tokenizer from {path}: {message}")]
    Load { path: PathBuf, message: String },
    /// The file could not be written.
    #[error("cannot save tokenizer to {path}: {message}")]
    Save { path: PathBuf, message: String },
    /// A required special token is absent from the vocabulary.
    #[error("tokenizer {path} has no {what} token (looked for {names}); add it as an added token")]
    MissingSpecial {
        path: PathBuf,
        what: &'static str,
        names: String,
    },
}

/// A file error while saving becomes [`TokenizerError::Save`].
impl From<cappa_io::FileError> for TokenizerError {
    fn from(error: cappa_io::FileError) -> Self {
        let path = error.path().to_path_buf();
        let message = match error {
            cappa_io::FileError::Io { source, .. } => source.to_string(),
            json @ cappa_io::FileError::Json { .. } => json.to_string(),
        };
        TokenizerError::Save { path, message }
    }
}

/// A caption tokenizer with known pad/BOS/EOS/mask ids.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
    bos_id: Option<u32>,
    eos_id: u32,
    mask_id: Option<u32>,
}

impl Tokenizer {
    /// Trains a byte-level BPE of `vocab_size` entries (specials included) on `captions`.
    ///
    /// The normalizer is NFC, white-space runs collapsed to one space, leading and trailing
    /// white space stripped, and (if `lowercase`) lower-casing. No prefix space is added, so
    /// [`Tokenizer::decode`] gives back the normalised text exactly.
    pub fn train_bpe(
        captions: impl Iterator<Item = String>,
        vocab_size: usize,
        lowercase: bool,
    ) -> Result<Self, TokenizerError> {
        if vocab_size <= SPECIALS.len() + 256 {
            return Err(TokenizerError::VocabTooSmall(vocab_size));
        }
        let specials: Vec<AddedToken> = SPECIALS
            .iter()
            .map(|name| AddedToken::from(name.to_string(), true))
            .collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(0)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();

        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        inner.with_normalizer(Some(normalizer(lowercase)?));
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, false, true)));
        inner.with_decoder(Some(ByteLevelDecoder::new(false, false, true)));
        // The caller's iterator need not be Send; training needs a Send one.
        let captions: Vec<String> = captions.collect();
        inner
            .train(&mut trainer, captions.into_iter())
            .map_err(|error| TokenizerError::Train(error.to_string()))?;
        // Training leaves the specials in the model's vocabulary; registering them as added
        // tokens too makes them atomic in text and skippable when decoding.
        let specials: Vec<AddedToken> = SPECIALS
            .iter()
            .map(|name| AddedToken::from(name.to_string(), true))
            .collect();
        inner.add_special_tokens(&specials);
        for (id, name) in SPECIALS.iter().enumerate() {
            if inner.token_to_id(name) != Some(id as u32) {
                return Err(TokenizerError::Train(format!(
                    "special token {name} did not get id {id}"
                )));
            }
        }
        Ok(Tokenizer {
            inner,
            pad_id: 0,
            bos_id: Some(1),
            eos_id: 2,
            mask_id: Some(3),
        })
    }

    /// Loads any HF `tokenizer.json`. Pad and EOS are required; BOS and mask are optional.
    /// Each is looked up by its usual names (`<pad>`/`[PAD]`, `<eos>`/`</s>`/`[SEP]`/
    /// `<|endoftext|>`, ...).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|error| TokenizerError::Load {
                path: path.to_path_buf(),
                message: error.to_string(),
            })?;
        Self::with_specials(inner, path)
    }

    /// [`Tokenizer::load`] from the text of a `tokenizer.json`; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &Path) -> Result<Self, TokenizerError> {
        let inner: tokenizers::Tokenizer =
            text.parse()
                .map_err(|error: tokenizers::Error| TokenizerError::Load {
                    path: origin.to_path_buf(),
                    message: error.to_string(),
                })?;
        Self::with_specials(inner, origin)
    }

    /// The `tokenizer.json` text [`Tokenizer::save`] writes.
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner
            .to_string(false)
            .map_err(|error| TokenizerError::Save {
                path: PathBuf::from("<memory>"),
                message: error.to_string(),
            })
    }

    fn with_specials(inner: tokenizers::Tokenizer, path: &Path) -> Result<Self, TokenizerError> {
        let find = |names: &[&str]| names.iter().find_map(|name| inner.token_to_id(name));
        let require = |names: &[&str], what: &'static str| {
            find(names).ok_or_else(|| TokenizerError::MissingSpecial {
                path: path.to_path_buf(),
                what,
                names: names.join(", "),
            })
        };
        let pad_id = require(PAD_NAMES, "pad")?;
        let eos_id = require(EOS_NAMES, "end-of-sequence")?;
        let bos_id = find(BOS_NAMES);
        let mask_id = find(MASK_NAMES);
        Ok(Tokenizer {
            inner,
            pad_id,
            bos_id,
            eos_id,
            mask_id,
        })
    }

    /// Writes a standard HF `tokenizer.json` (self-contained: the normalizer carries the
    /// lower-casing), atomically: a crash leaves the old file or the new one.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let path = path.as_ref();
        cappa_io::write_atomically_with(path, |temp| {
            self.inner
                .save(temp, true)
                .map_err(|error| TokenizerError::Save {
                    path: path.to_path_buf(),
                    message: error.to_string(),
                })
        })
    }

    /// The number of ids, added tokens included: an embedding table needs this many rows.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The padding id (0 for trained tokenizers).
    pub fn pad_id(&self) -> i64 {
        i64::from(self.pad_id)
    }

    /// The beginning-of-sequence id (1 for trained tokenizers), if the tokenizer has one.
    pub fn bos_id(&self) -> Option<i64> {
        self.bos_id.map(i64::from)
    }

    /// The end-of-sequence id (2 for trained tokenizers).
    pub fn eos_id(&self) -> i64 {
        i64::from(self.eos_id)
    }

    /// The mask id (3 for trained tokenizers), if the tokenizer has one.
    pub fn mask_id(&self) -> Option<i64> {
        self.mask_id.map(i64::from)
    }

    /// The underlying HF tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encodes `text` as its tokens followed by EOS, then pad up to `max_len`.
    ///
    /// Too long captions lose their last tokens, never the EOS: with `n` tokens the result is
    /// `tokens[..min(n, max_len - 1)]`, EOS, pads. `max_len == 0` gives an empty vector. Text
    /// the tokenizer cannot encode (not possible for byte-level BPE) encodes as EOS alone.
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<i64> {
        let mut ids = Vec::with_capacity(max_len);
        self.encode_into(text, &mut ids, max_len);
        ids
    }

    fn encode_into(&self, text: &str, ids: &mut Vec<i64>, max_len: usize) {
        if max_len == 0 {
            return;
        }
        if let Ok(encoding) = self.inner.encode_fast(text, false) {
            ids.extend(
                encoding
                    .get_ids()
                    .iter()
                    .take(max_len - 1)
                    .map(|&id| i64::from(id)),
            );
        }
        ids.push(self.eos_id());
        ids.resize(max_len, self.pad_id());
    }

    /// Encodes captions in parallel into a `(B, max_len)` int64 tensor; see
    /// [`Tokenizer::encode`].
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S], max_len: usize) -> tch::Tensor {
        let mut ids = vec![0i64; texts.len() * max_len];
        if max_len > 0 {
            ids.par_chunks_mut(max_len)
                .zip(texts.par_iter())
                .for_each(|(row, text)| row.copy_from_slice(&self.encode(text.as_ref(), max_len)));
        }
        tch::Tensor::from_slice(&ids).view([texts.len() as i64, max_len as i64])
    }

    /// Decodes ids up to (not including) the first EOS, skipping special tokens. Ids outside
    /// the vocabulary are skipped.
    pub fn decode(&self, ids: &[i64]) -> String {
        let vocab_size = self.vocab_size() as i64;
        let kept: Vec<u32> = ids
            .iter()
            .take_while(|&&id| id != self.eos_id())
            .filter(|&&id| (0..vocab_size).contains(&id))
            .map(|&id| id as u32)
            .collect();
        self.inner.decode(&kept, true).unwrap_or_default()
    }
}

/// NFC, white-space runs to one space, strip, optionally lower-case.
fn normalizer(lowercase: bool) -> Result<NormalizerWrapper, TokenizerError> {
    let collapse = Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
        " ",
    )
    .map_err(|error| TokenizerError::Train(error.to_string()))?;
    let mut steps: Vec<NormalizerWrapper> =
        vec![NFC.into(), collapse.into(), Strip::new(true, true).into()];
    if lowercase {
        steps.push(Lowercase.into());
    }
    Ok(Sequence::new(steps).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captions() -> Vec<String> {
        let base = [
            "A cat sitting on a mat.",
            "Two dogs play in the   park",
            "a red car parked next to a blue house",
            "The Quick brown fox jumps over the lazy dog",
            "a man riding a bike down the street",
            "several birds flying over the ocean at sunset",
        ];
        (0..20)
            .flat_map(|_| base.iter().map(|s| s.to_string()))
            .collect()
    }

    fn trained(lowercase: bool) -> Tokenizer {
        Tokenizer::train_bpe(captions().into_iter(), 400, lowercase).unwrap()
    }

    #[test]
    fn special_ids_are_fixed() {
        let tokenizer = trained(true);
        assert_eq!(tokenizer.pad_id(), 0);
        assert_eq!(tokenizer.bos_id(), Some(1));
        assert_eq!(tokenizer.eos_id(), 2);
        assert_eq!(tokenizer.mask_id(), Some(3));
        assert!(tokenizer.vocab_size() > 260 && tokenizer.vocab_size() <= 400);
        // Special names in text are single tokens, not spelled out.
        let ids = tokenizer.encode("<mask>", 4);
        assert_eq!(ids, vec![3, 2, 0, 0]);
    }

    #[test]
    fn train_save_load_round_trip_gives_identical_ids() {
        let dir = tempfile::tempdir().unwrap();
        for lowercase in [true, false] {
            let tokenizer = trained(lowercase);
            let path = dir.path().join(format!("tokenizer-{lowercase}.json"));
            tokenizer.save(&path).unwrap();
            // Through a file, and through the JSON text (how data-parallel ranks get rank 0's).
            let from_text =
                Tokenizer::from_json(&tokenizer.to_json().unwrap(), Path::new("text")).unwrap();
            for loaded in [Tokenizer::load(&path).unwrap(), from_text] {
                assert_eq!(loaded.vocab_size(), tokenizer.vocab_size());
                assert_eq!(
                    (
                        loaded.pad_id(),
                        loaded.bos_id(),
                        loaded.eos_id(),
                        loaded.mask_id()
                    ),
                    (0, Some(1), 2, Some(3))
                );
                for caption in captions()
                    .iter()
                    .take(6)
                    .chain(&["Unseen WORDS ü 日本".to_string()])
                {
                    assert_eq!(loaded.encode(caption, 32), tokenizer.encode(caption, 32));
                }
            }
        }
        // Saving over a file replaces it and leaves no temporary file behind.
        let path = dir.path().join("tokenizer-true.json");
        trained(false).save(&path).unwrap();
        assert_ne!(
            Tokenizer::load(&path).unwrap().encode("A CAT", 8),
            trained(true).encode("A CAT", 8)
        );
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["tokenizer-false.json", "tokenizer-true.json"]);
        let missing = dir.path().join("no-such-dir").join("tokenizer.json");
        let error = trained(true).save(&missing).unwrap_err();
        assert!(
            matches!(&error, TokenizerError::Save { path, .. } if path.starts_with(dir.path().join("no-such-dir"))),
            "{error}"
        );
    }

    #[test]
    fn lowercasing_is_in_the_normalizer() {
        let lower = trained(true);
        assert_eq!(lower.encode("A CAT", 8), lower.encode("a cat", 8));
        let cased = trained(false);
        assert_ne!(cased.encode("A CAT", 8), cased.encode("a cat", 8));
        let json = serde_json::to_string(lower.inner()).unwrap();
        assert!(
            json.contains("Lowercase"),
            "the saved JSON carries the lower-casing"
        );
    }

    #[test]
    fn truncation_keeps_eos_and_padding_uses_zero() {
        let tokenizer = trained(true);
        let full = tokenizer.encode("a man riding a bike down the street", 64);
        let length = full.iter().position(|&id| id == 2).unwrap();
        assert!(length > 3);
        assert!(full[length + 1..].iter().all(|&id| id == 0));
        let short = tokenizer.encode("a man riding a bike down the street", 3);
        assert_eq!(short, vec![full[0], full[1], 2]);
        assert_eq!(tokenizer.encode("anything", 1), vec![2]);
        assert_eq!(tokenizer.encode("", 3), vec![2, 0, 0]);
        assert!(tokenizer.encode("x", 0).is_empty());
    }

    #[test]
    fn decode_inverts_encode_up_to_normalisation() {
        let tokenizer = trained(true);
        let check = |text: &str, expected: &str| {
            let ids = tokenizer.encode(text, 64);
            assert_eq!(tokenizer.decode(&ids), expected, "ids {ids:?}");
        };
        check("A cat sitting on a mat.", "a cat sitting on a mat.");
        check(
            "  Two dogs play\tin the   park ",
            "two dogs play in the park",
        );
        check("Unseen WORDS, ü and 日本!", "unseen words, ü and 日本!");
        // Decoding stops at EOS and skips other specials.
        let mut ids = tokenizer.encode("a cat", 8);
        ids.insert(0, 1);
        let eos = ids.iter().position(|&id| id == 2).unwrap();
        ids[eos + 1] = tokenizer.encode("dog", 8)[0];
        assert_eq!(tokenizer.decode(&ids), "a cat");
    }

    #[test]
    fn encode_batch_matches_encode() {
        let tokenizer = trained(true);
        let texts = ["a cat", "two dogs play in the park", ""];
        let batch = tokenizer.encode_batch(&texts, 6);
        assert_eq!(batch.size(), vec![3, 6]);
        assert_eq!(batch.kind(), tch::Kind::Int64);
        for (row, text) in texts.iter().enumerate() {
            let ids: Vec<i64> = Vec::try_from(batch.get(row as i64)).unwrap();
            assert_eq!(ids, tokenizer.encode(text, 6));
        }
    }

    #[test]
    fn a_tokenizer_without_specials_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.json");
        // A trained tokenizer with the specials renamed away.
        let json = serde_json::to_string(trained(true).inner())
            .unwrap()
            .replace("<pad>", "<nothing>")
            .replace("<eos>", "<gone>");
        std::fs::write(&path, json).unwrap();
        let error = Tokenizer::load(&path).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("plain.json"), "{message}");
        assert!(message.contains("pad"), "{message}");

        let missing = dir.path().join("absent.json");
        let message = Tokenizer::load(&missing).unwrap_err().to_string();
        assert!(message.contains("absent.json"), "{message}");
    }

    #[test]
    fn tiny_vocabularies_are_refused() {
        assert!(matches!(
            Tokenizer::train_bpe(captions().into_iter(), 100, true),
            Err(TokenizerError::VocabTooSmall(100))
        ));
    }
}
