//! The vocabulary size and special token ids the models depend on. They belong to the
//! tokenizer a model is trained with: `cappa-trainer` reads them from it
//! (`cappa_trainer::tokens::special_tokens`) and every tower's configuration stores them, so a
//! checkpoint's `config.json` carries them (`vocab_size`, `pad_id`, `eos_id`, `bos_id`).

/// The ids of a tokenizer that reach the models.
///
/// - `pad_id`: a row without an EOS pools at its last non-pad token, caption scores and the
///   caption loss ignore pad targets, and it is the decoder's first input
///   ([`SpecialTokens::decoder_start_id`]).
/// - `eos_id`: the text tower pools at a row's first EOS; generation stops at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Number of ids, specials included: the rows of a token table.
    pub vocab_size: i64,
    pub pad_id: i64,
    pub eos_id: i64,
}

impl SpecialTokens {
    /// The ids of cappa's trained byte-level BPE (`cappa_data::tokenizer::Tokenizer::train_bpe`):
    /// `<pad>` 0, `<bos>` 1, `<eos>` 2, `<mask>` 3.
    pub const fn built_in(vocab_size: i64) -> Self {
        SpecialTokens {
            vocab_size,
            pad_id: 0,
            eos_id: 2,
        }
    }

    /// The caption decoder's first input: the pad id, not the tokenizer's BOS. big_vision's
    /// CapPa shifts the caption right with the pad id 0, as T5 does; with cappa's built-in
    /// tokenizer (pad 0, BOS 1, EOS 2) this is the 0 it has always used.
    pub const fn decoder_start_id(&self) -> i64 {
        self.pad_id
    }
}
