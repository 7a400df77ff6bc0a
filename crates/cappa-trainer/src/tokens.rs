//! The tokenizer's ids in the model. [`special_tokens`] reads the vocabulary size and the
//! special ids a new model is configured with ([`crate::config::ExperimentConfig::model_config`]);
//! [`check_tokenizer`] refuses a checkpoint whose `tokenizer.json` is not the one its
//! `config.json` was built for, which would otherwise pool, mask and stop at the wrong tokens
//! without a word.

use std::path::{Path, PathBuf};

use cappa_data::tokenizer::Tokenizer;
use cappa_models::{ModelConfig, SpecialTokens};

/// The vocabulary size and the special ids of `tokenizer` that the models use.
pub fn special_tokens(tokenizer: &Tokenizer) -> SpecialTokens {
    SpecialTokens {
        vocab_size: tokenizer.vocab_size() as i64,
        pad_id: tokenizer.pad_id(),
        eos_id: tokenizer.eos_id(),
    }
}

/// A model configuration and a tokenizer that disagree on an id or on the vocabulary size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{config_path} has {field} = {config_value}, but {tokenizer_path} has {what} \
     {tokenizer_value}: the model was built for another tokenizer; use the tokenizer.json it \
     was trained with"
)]
pub struct TokenizerMismatch {
    /// The field of the model configuration, as `config.json` names it (`text.eos_id`).
    pub field: &'static str,
    pub config_value: i64,
    pub config_path: PathBuf,
    /// What the tokenizer's value is (`EOS id`).
    pub what: &'static str,
    pub tokenizer_value: i64,
    pub tokenizer_path: PathBuf,
}

/// Checks that `config` (read from `config_path`) was built for `tokenizer` (read from
/// `tokenizer_path`): the same vocabulary size, pad and EOS ids, and for a captioner the pad id
/// as the decoder's first input. The paths only name the files in the error.
pub fn check_tokenizer(
    config: &ModelConfig,
    config_path: &Path,
    tokenizer: &Tokenizer,
    tokenizer_path: &Path,
) -> Result<(), TokenizerMismatch> {
    let tokens = special_tokens(tokenizer);
    let (fields, tower) = match config {
        ModelConfig::Clip(clip) => (
            ["text.vocab_size", "text.pad_id", "text.eos_id"],
            clip.text.special_tokens(),
        ),
        ModelConfig::Cap(cap) => (
            ["decoder.vocab_size", "decoder.pad_id", "decoder.eos_id"],
            cap.decoder.special_tokens(),
        ),
    };
    let mut pairs = vec![
        Pair {
            field: fields[0],
            config_value: tower.vocab_size,
            what: "a vocabulary of size",
            tokenizer_value: tokens.vocab_size,
        },
        Pair {
            field: fields[1],
            config_value: tower.pad_id,
            what: "the pad id",
            tokenizer_value: tokens.pad_id,
        },
        Pair {
            field: fields[2],
            config_value: tower.eos_id,
            what: "the EOS id",
            tokenizer_value: tokens.eos_id,
        },
    ];
    if let ModelConfig::Cap(cap) = config {
        pairs.push(Pair {
            field: "decoder.bos_id",
            config_value: cap.decoder.bos_id,
            what: "the pad id (the decoder's first input)",
            tokenizer_value: tokens.decoder_start_id(),
        });
    }
    match pairs
        .into_iter()
        .find(|p| p.config_value != p.tokenizer_value)
    {
        None => Ok(()),
        Some(pair) => Err(TokenizerMismatch {
            field: pair.field,
            config_value: pair.config_value,
            config_path: config_path.to_path_buf(),
            what: pair.what,
            tokenizer_value: pair.tokenizer_value,
            tokenizer_path: tokenizer_path.to_path_buf(),
        }),
    }
}

/// One value that the model configuration and the tokenizer must share.
#[derive(Debug, Clone, Copy)]
struct Pair {
    field: &'static str,
    config_value: i64,
    what: &'static str,
    tokenizer_value: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    /// A word-level `tokenizer.json` whose vocabulary is `words` in id order.
    fn word_level(words: &[&str]) -> Tokenizer {
        let vocab: serde_json::Map<String, serde_json::Value> = words
            .iter()
            .enumerate()
            .map(|(id, word)| (word.to_string(), serde_json::json!(id)))
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
        });
        Tokenizer::from_json(&json.to_string(), Path::new("words.json")).unwrap()
    }

    /// Pad 4, BOS 6, EOS 5: none where the built-in tokenizer has them.
    fn unusual() -> Tokenizer {
        word_level(&["a", "b", "c", "<unk>", "<pad>", "</s>", "<s>", "d"])
    }

    fn model(objective: &str, tokenizer: &Tokenizer) -> ModelConfig {
        let overrides = [format!("objective={objective}")];
        let experiment = config::resolve(None, &overrides).unwrap();
        experiment.model_config(special_tokens(tokenizer)).unwrap()
    }

    fn check(config: &ModelConfig, tokenizer: &Tokenizer) -> Result<(), TokenizerMismatch> {
        check_tokenizer(
            config,
            Path::new("ckpt/config.json"),
            tokenizer,
            Path::new("ckpt/tokenizer.json"),
        )
    }

    #[test]
    fn special_tokens_are_the_tokenizers() {
        let t5_like = word_level(&["<pad>", "</s>", "<unk>", "a"]);
        let expected = SpecialTokens {
            vocab_size: 4,
            pad_id: 0,
            eos_id: 1,
        };
        assert_eq!(special_tokens(&t5_like), expected);
        assert_eq!(special_tokens(&unusual()).pad_id, 4);
        assert_eq!(special_tokens(&unusual()).eos_id, 5);
    }

    #[test]
    fn a_model_built_for_its_tokenizer_passes() {
        for objective in ["clip", "cap"] {
            let tokenizer = unusual();
            check(&model(objective, &tokenizer), &tokenizer).unwrap();
        }
    }

    #[test]
    fn another_tokenizer_is_refused_naming_both_ids_and_both_files() {
        let tokenizer = unusual();
        // The same vocabulary size, the EOS moved from 5 to 7.
        let other = word_level(&["a", "b", "c", "<unk>", "<pad>", "d", "<s>", "</s>"]);
        let error = check(&model("clip", &tokenizer), &other).unwrap_err();
        assert_eq!(
            (error.field, error.config_value, error.tokenizer_value),
            ("text.eos_id", 5, 7)
        );
        let message = error.to_string();
        for part in [
            "ckpt/config.json",
            "ckpt/tokenizer.json",
            "text.eos_id = 5",
            "EOS id 7",
        ] {
            assert!(message.contains(part), "{part} missing from: {message}");
        }
        let error = check(&model("cap", &tokenizer), &other).unwrap_err();
        assert_eq!(error.field, "decoder.eos_id");
        // The pad id moved: for a captioner the decoder's first input moved with it.
        let other = word_level(&["a", "b", "c", "<unk>", "d", "</s>", "<s>", "<pad>"]);
        let error = check(&model("cap", &tokenizer), &other).unwrap_err();
        assert_eq!((error.field, error.tokenizer_value), ("decoder.pad_id", 7));
        // A larger vocabulary with the same ids.
        let other = word_level(&["a", "b", "c", "<unk>", "<pad>", "</s>", "<s>", "d", "e"]);
        let error = check(&model("clip", &tokenizer), &other).unwrap_err();
        assert_eq!((error.field, error.config_value), ("text.vocab_size", 8));
    }

    #[test]
    fn a_decoder_that_starts_elsewhere_than_the_pad_id_is_refused() {
        let tokenizer = unusual();
        let ModelConfig::Cap(mut cap) = model("cap", &tokenizer) else {
            panic!("cap builds a captioner")
        };
        cap.decoder.bos_id = 6; // the tokenizer's BOS, which the decoder does not start from
        let error = check(&ModelConfig::Cap(cap), &tokenizer).unwrap_err();
        assert_eq!(
            (error.field, error.config_value, error.tokenizer_value),
            ("decoder.bos_id", 6, 4)
        );
    }
}
