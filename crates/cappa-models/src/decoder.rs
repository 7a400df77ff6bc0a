//! The Cap/CapPa caption decoder (Tschannen et al., 2023): a pre-LN transformer decoder whose
//! blocks run self-attention, cross-attention to *all* image tokens, then an MLP.
//!
//! Reference: big_vision `models/proj/cappa/cappa.py`. As there: no dropout by default,
//! learned positions, LayerNorms and MLP without bias, an untied output projection that starts
//! at zero, and a token table with one extra row, the mask token (id = vocabulary size) used
//! by parallel prediction. The initialisation is the reference's ([`DecoderInit::Reference`]):
//! token embedding N(0, 1), attention without biases and with lecun-normal weights,
//! xavier-uniform MLP weights, positions N(0, 1/D), a final LayerNorm with bias. Checkpoints
//! from before it load as [`DecoderInit::Legacy`] (open_clip style: N(0, 0.02²) weights and
//! token embedding, biased attention, final LayerNorm without bias), which training can still
//! select (`model.decoder_init = "legacy"`).
//!
//! Incremental decoding keeps, per layer, the self-attention keys/values of the tokens so far
//! and the cross-attention keys/values of the image, computed once ([`KvCache`]).
//!
//! Scoring many candidates per image ([`CapDecoder::score`]) uses that cache: the inputs that
//! every candidate shares (BOS and the common prompt prefix) are decoded once per image, the
//! candidates' own tokens after them, and only up to the longest candidate.
//!
//! Dimension letters: B batch, C candidates per image, L tokens, N image tokens, V vocabulary,
//! D width, H heads, K head size.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Tensor};

use crate::layers::{
    attend, dropout, normal, AttentionMask, CrossAttention, LayerNorm, Mlp, Projections,
    SelfAttention, WeightInit, INIT_STD,
};
use crate::tokens::SpecialTokens;
use crate::validate::{self, ConfigError};

/// Configuration of a [`CapDecoder`]. `vocab_size`, `bos_id`, `eos_id` and `pad_id` come from
/// the tokenizer ([`DecoderConfig::new`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    /// Vocabulary size V; the mask token is id V, so the token table has V + 1 rows.
    pub vocab_size: i64,
    /// Longest sequence (training length and generation limit).
    pub max_len: i64,
    pub width: i64,
    pub depth: i64,
    pub num_heads: i64,
    pub mlp_dim: i64,
    /// Width of the image tokens the decoder attends to.
    pub memory_width: i64,
    /// The first decoder input: the tokenizer's pad id ([`SpecialTokens::decoder_start_id`]),
    /// as in big_vision's CapPa, not its BOS. The name is kept so that checkpoints load.
    pub bos_id: i64,
    /// Generation stops at it.
    pub eos_id: i64,
    /// Scores and the caption loss ignore pad targets; finished beams continue with it.
    pub pad_id: i64,
    pub dropout: f64,
    /// How the parameters start; a configuration without it (a checkpoint written before it
    /// existed) is [`DecoderInit::Legacy`], whose parameters it holds.
    #[serde(default = "DecoderInit::before_it_was_recorded")]
    pub init: DecoderInit,
}

/// The decoder's initialisation, which also decides which biases exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderInit {
    /// big_vision's CapPa decoder: token embedding N(0, 1); self- and cross-attention without
    /// biases, lecun-normal weights (N(0, 1/fan_in)); MLP weights xavier-uniform; final
    /// LayerNorm with bias; zero logits layer.
    #[default]
    Reference,
    /// cappa's first decoder (open_clip conventions): token embedding and every projection
    /// N(0, 0.02²), attention with zero-initialised biases, final LayerNorm without bias.
    Legacy,
}

impl DecoderInit {
    /// What a stored configuration without an `init` field was built with.
    fn before_it_was_recorded() -> Self {
        DecoderInit::Legacy
    }

    fn attention(self) -> Projections {
        match self {
            DecoderInit::Reference => Projections {
                init: WeightInit::LecunNormal,
                bias: false,
            },
            DecoderInit::Legacy => Projections::OPEN_CLIP,
        }
    }

    fn mlp(self) -> Projections {
        let init = match self {
            DecoderInit::Reference => WeightInit::XavierUniform,
            DecoderInit::Legacy => WeightInit::Normal(INIT_STD),
        };
        Projections { init, bias: false }
    }

    fn token_embedding_std(self) -> f64 {
        match self {
            DecoderInit::Reference => 1.0,
            DecoderInit::Legacy => INIT_STD,
        }
    }

    fn final_norm_bias(self) -> bool {
        self == DecoderInit::Reference
    }
}

impl DecoderConfig {
    /// The paper's default for an encoder of width `width` and depth `depth` and a tokenizer's
    /// ids: half the depth, the same width, heads and MLP; the first input is the pad id.
    pub fn new(
        tokens: SpecialTokens,
        max_len: i64,
        width: i64,
        depth: i64,
        num_heads: i64,
        mlp_dim: i64,
    ) -> Self {
        Self {
            vocab_size: tokens.vocab_size,
            max_len,
            width,
            depth: (depth / 2).max(1),
            num_heads,
            mlp_dim,
            memory_width: width,
            bos_id: tokens.decoder_start_id(),
            eos_id: tokens.eos_id,
            pad_id: tokens.pad_id,
            dropout: 0.0,
            init: DecoderInit::Reference,
        }
    }

    /// The vocabulary and ids this decoder was configured for.
    pub fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens {
            vocab_size: self.vocab_size,
            pad_id: self.pad_id,
            eos_id: self.eos_id,
        }
    }

    /// The mask token of parallel prediction.
    pub fn mask_id(&self) -> i64 {
        self.vocab_size
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::positive(
            "decoder",
            &[
                ("vocab_size", self.vocab_size),
                ("max_len", self.max_len),
                ("width", self.width),
                ("depth", self.depth),
                ("num_heads", self.num_heads),
                ("mlp_dim", self.mlp_dim),
                ("memory_width", self.memory_width),
            ],
        )?;
        validate::heads_divide_width("decoder", self.width, self.num_heads)?;
        validate::ids_in_vocabulary(
            "decoder",
            self.vocab_size,
            &[
                ("bos_id", self.bos_id),
                ("eos_id", self.eos_id),
                ("pad_id", self.pad_id),
            ],
        )?;
        if self.eos_id == self.pad_id {
            return Err(ConfigError::new(
                "decoder",
                "eos_id",
                format!(
                    "{} equals decoder.pad_id: the caption loss ignores pad targets, so the \
                     decoder would never learn to end a caption (give the tokenizer its own \
                     pad token)",
                    self.eos_id
                ),
            ));
        }
        validate::dropout("decoder", self.dropout)?;
        Ok(())
    }
}

/// How the decoder's self-attention sees its inputs.
#[derive(Debug, Clone, Copy)]
pub enum Decoding<'a> {
    /// Autoregressive: position t sees positions ≤ t (inputs are the caption shifted right).
    Causal,
    /// Parallel prediction: every position sees every position (inputs are mask tokens).
    Parallel,
    /// Per example: a (B) boolean tensor, `true` for parallel, `false` for causal.
    PerExample(&'a Tensor),
}

/// One decoder block: self-attention, cross-attention to the image, MLP; all pre-LN.
#[derive(Debug)]
struct DecoderBlock {
    ln_1: LayerNorm,
    self_attn: SelfAttention,
    ln_2: LayerNorm,
    cross_attn: CrossAttention,
    ln_3: LayerNorm,
    mlp: Mlp,
    dropout: f64,
}

impl DecoderBlock {
    fn new(p: nn::Path<'_>, c: &DecoderConfig) -> Self {
        Self {
            ln_1: LayerNorm::new(&p / "ln_1", c.width, false),
            self_attn: SelfAttention::with(
                &p / "self_attn",
                c.width,
                c.num_heads,
                c.init.attention(),
            ),
            ln_2: LayerNorm::new(&p / "ln_2", c.width, false),
            cross_attn: CrossAttention::with(
                &p / "cross_attn",
                c.width,
                c.memory_width,
                c.num_heads,
                c.init.attention(),
            ),
            ln_3: LayerNorm::new(&p / "ln_3", c.width, false),
            mlp: Mlp::with(&p / "mlp", c.width, c.mlp_dim, c.init.mlp()),
            dropout: c.dropout,
        }
    }

    /// The block on new positions `x` (B, T, D), given their self-attention result per head
    /// `heads` (B, H, T, K) — computed by the caller, against cached keys/values or not.
    fn forward(
        &self,
        x: &Tensor,
        heads: &Tensor,
        memory: &(Tensor, Tensor),
        train: bool,
    ) -> Tensor {
        let x = x + dropout(self.self_attn.output(heads), self.dropout, train);
        let cross = self.cross_attend(&x.apply(&self.ln_2), memory);
        let x = &x + dropout(cross, self.dropout, train);
        &x + dropout(x.apply(&self.ln_3).apply(&self.mlp), self.dropout, train)
    }

    /// Cross-attention of `x` (B·G, T, D) to the memory keys/values (B, H, N, K) of B images,
    /// G consecutive rows per image (G = 1 normally; the candidates of one image when
    /// scoring). Queries do not interact in cross-attention, so an image's G rows are attended
    /// as one sequence of G·T queries instead of copying its keys/values G times.
    fn cross_attend(&self, x: &Tensor, memory: &(Tensor, Tensor)) -> Tensor {
        let (rows, len, width) = x.size3().expect("decoder activations must be (B, T, D)");
        let images = memory.0.size()[0];
        if rows == images {
            return self.cross_attn.forward_with_kv(x, &memory.0, &memory.1);
        }
        assert!(
            images > 0 && rows % images == 0,
            "decoder rows {:?} are not a whole number of rows per image of the memory {:?}",
            x.size(),
            memory.0.size()
        );
        let grouped = x.reshape([images, rows / images * len, width]); // (B, G·T, D)
        self.cross_attn
            .forward_with_kv(&grouped, &memory.0, &memory.1)
            .reshape([rows, len, width]) // (B·G, T, D)
    }
}

/// Self-attention keys/values of the tokens decoded so far and the image's cross-attention
/// keys/values, per layer.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: i64,
    /// Token rows per memory row: 1, except in [`CapDecoder::score`], where each image's
    /// keys/values serve all of its candidates' rows (see [`KvCache::share_image`]).
    rows_per_image: i64,
}

#[derive(Debug)]
struct LayerCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
    memory: (Tensor, Tensor),
}

impl KvCache {
    /// Number of positions already decoded.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps batch rows `index` (B') in that order, e.g. the surviving beams.
    pub fn reorder(&mut self, index: &Tensor) {
        let times = std::mem::replace(&mut self.rows_per_image, 1);
        for layer in &mut self.layers {
            if times > 1 {
                layer.memory = (
                    repeat_rows(&layer.memory.0, times),
                    repeat_rows(&layer.memory.1, times),
                );
            }
            layer.keys = layer.keys.as_ref().map(|t| t.index_select(0, index));
            layer.values = layer.values.as_ref().map(|t| t.index_select(0, index));
            layer.memory = (
                layer.memory.0.index_select(0, index),
                layer.memory.1.index_select(0, index),
            );
        }
    }

    /// Gives every row `times` consecutive copies (B -> B·times) that continue from the same
    /// tokens so far, as [`KvCache::reorder`] with each index repeated would, except that the
    /// image keys/values are not copied: the copies of a row share its image's.
    fn share_image(&mut self, times: i64) {
        for layer in &mut self.layers {
            layer.keys = layer.keys.as_ref().map(|t| repeat_rows(t, times));
            layer.values = layer.values.as_ref().map(|t| repeat_rows(t, times));
        }
        self.rows_per_image *= times;
    }
}

/// Settings of [`CapDecoder::generate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// Most tokens to generate (at most the decoder's `max_len`).
    pub max_len: i64,
    /// 1 = greedy decoding.
    pub beam_size: i64,
    /// Beams are ranked at the end by log-probability / length^length_penalty.
    pub length_penalty: f64,
    /// Stop a sequence at EOS (otherwise always generate `max_len` tokens).
    pub stop_at_eos: bool,
}

impl GenerateConfig {
    pub fn greedy(max_len: i64) -> Self {
        Self {
            max_len,
            beam_size: 1,
            length_penalty: 0.0,
            stop_at_eos: true,
        }
    }

    pub fn beam(max_len: i64, beam_size: i64, length_penalty: f64) -> Self {
        Self {
            beam_size,
            length_penalty,
            ..Self::greedy(max_len)
        }
    }
}

/// The caption decoder.
#[derive(Debug)]
pub struct CapDecoder {
    config: DecoderConfig,
    token_embedding: nn::Embedding,
    positional_embedding: Tensor,
    blocks: Vec<DecoderBlock>,
    ln_final: LayerNorm,
    head: nn::Linear,
}

impl CapDecoder {
    pub fn new(p: nn::Path<'_>, config: &DecoderConfig) -> Self {
        if let Err(why) = config.validate() {
            panic!("invalid decoder config: {why}");
        }
        let c = config;
        let blocks_path = &p / "blocks";
        let head = nn::linear(
            &p / "head",
            c.width,
            c.vocab_size,
            nn::LinearConfig {
                ws_init: nn::Init::Const(0.0),
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            },
        );
        Self {
            token_embedding: nn::embedding(
                &p / "token_embedding",
                c.vocab_size + 1,
                c.width,
                nn::EmbeddingConfig {
                    ws_init: normal(c.init.token_embedding_std()),
                    ..Default::default()
                },
            ),
            positional_embedding: p.var(
                "positional_embedding",
                &[c.max_len, c.width],
                normal((c.width as f64).powf(-0.5)),
            ),
            blocks: (0..c.depth)
                .map(|i| DecoderBlock::new(&blocks_path / i, c))
                .collect(),
            ln_final: LayerNorm::new(&p / "ln_final", c.width, c.init.final_norm_bias()),
            head,
            config: config.clone(),
        }
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    fn embed(&self, tokens: &Tensor, start: i64, train: bool) -> Tensor {
        let len = tokens.size()[1];
        assert!(
            start + len <= self.config.max_len,
            "positions {start}..{} exceed the decoder's max_len {}",
            start + len,
            self.config.max_len
        );
        let x =
            tokens.apply(&self.token_embedding) + self.positional_embedding.narrow(0, start, len);
        dropout(x, self.config.dropout, train)
    }

    /// Cross-attention keys/values of the image tokens (B, N, E) for every layer.
    fn memory(&self, image_tokens: &Tensor) -> Vec<(Tensor, Tensor)> {
        assert_eq!(
            image_tokens.size().last().copied(),
            Some(self.config.memory_width),
            "image tokens {:?} must end in the decoder's memory_width {}",
            image_tokens.size(),
            self.config.memory_width
        );
        self.blocks
            .iter()
            .map(|block| block.cross_attn.memory_kv(image_tokens))
            .collect()
    }

    fn logits(&self, x: &Tensor) -> Tensor {
        x.apply(&self.ln_final).apply(&self.head)
    }

    /// Teacher-forced decoding: logits (B, L, V) for decoder inputs (B, L) given image tokens
    /// (B, N, E). Inputs are the caption shifted right (causal) or mask tokens (parallel).
    pub fn decode(
        &self,
        image_tokens: &Tensor,
        inputs: &Tensor,
        decoding: Decoding<'_>,
        train: bool,
    ) -> Tensor {
        let memory = self.memory(image_tokens);
        self.decode_with_memory(&memory, inputs, decoding, train)
    }

    fn decode_with_memory(
        &self,
        memory: &[(Tensor, Tensor)],
        inputs: &Tensor,
        decoding: Decoding<'_>,
        train: bool,
    ) -> Tensor {
        let (b, len) = inputs.size2().expect("decoder inputs must be (B, L)");
        let explicit;
        let mask = match decoding {
            Decoding::Causal => AttentionMask::Causal,
            Decoding::Parallel => AttentionMask::Full,
            Decoding::PerExample(parallel) => {
                assert_eq!(
                    parallel.size(),
                    [b],
                    "the per-example decoding flags must be (B)"
                );
                let causal = Tensor::ones([len, len], (Kind::Bool, inputs.device())).tril(0);
                // (B, 1, L, L): causal rows, or everything for parallel examples.
                explicit = causal
                    .view([1, 1, len, len])
                    .logical_or(&parallel.to_kind(Kind::Bool).view([b, 1, 1, 1]));
                AttentionMask::Explicit(&explicit)
            }
        };
        let mut x = self.embed(inputs, 0, train);
        for (block, memory) in self.blocks.iter().zip(memory) {
            let (q, k, v) = block.self_attn.qkv(&x.apply(&block.ln_1));
            x = block.forward(&x, &attend(&q, &k, &v, mask), memory, train);
        }
        self.logits(&x)
    }

    /// An empty cache for incremental decoding of these images (B, N, E).
    pub fn start(&self, image_tokens: &Tensor) -> KvCache {
        KvCache {
            layers: self
                .memory(image_tokens)
                .into_iter()
                .map(|memory| LayerCache {
                    keys: None,
                    values: None,
                    memory,
                })
                .collect(),
            len: 0,
            rows_per_image: 1,
        }
    }

    /// Decodes new tokens (B, T) that follow the cached ones causally; returns their logits
    /// (B, T, V) and appends their keys/values to the cache.
    pub fn step(&self, cache: &mut KvCache, tokens: &Tensor) -> Tensor {
        let new = tokens.size()[1];
        let start = cache.len;
        let mut x = self.embed(tokens, start, false);
        let explicit;
        let mask = if new == 1 {
            AttentionMask::Full
        } else if start == 0 {
            AttentionMask::Causal
        } else {
            // New position t (absolute start + t) sees absolute positions ≤ start + t.
            let device = tokens.device();
            let rows = Tensor::arange(new, (Kind::Int64, device)).view([new, 1]) + start;
            let cols = Tensor::arange(start + new, (Kind::Int64, device)).view([1, start + new]);
            explicit = cols.le_tensor(&rows).view([1, 1, new, start + new]);
            AttentionMask::Explicit(&explicit)
        };
        for (block, layer) in self.blocks.iter().zip(&mut cache.layers) {
            let (q, k, v) = block.self_attn.qkv(&x.apply(&block.ln_1));
            let (k, v) = match (&layer.keys, &layer.values) {
                (Some(old_k), Some(old_v)) => {
                    (Tensor::cat(&[old_k, &k], 2), Tensor::cat(&[old_v, &v], 2))
                }
                _ => (k, v),
            };
            x = block.forward(&x, &attend(&q, &k, &v, mask), &layer.memory, false);
            layer.keys = Some(k);
            layer.values = Some(v);
        }
        cache.len += new;
        self.logits(&x)
    }

    /// Generates token ids for each image (B, N, E): greedy for `beam_size == 1`, else beam
    /// search. Each sequence excludes the BOS and stops before EOS.
    pub fn generate(&self, image_tokens: &Tensor, config: &GenerateConfig) -> Vec<Vec<i64>> {
        tch::no_grad(|| {
            if config.beam_size <= 1 {
                self.greedy(image_tokens, config)
            } else {
                self.beam_search_no_grad(image_tokens, config)
            }
        })
    }

    fn check_length(&self, config: &GenerateConfig) {
        assert!(
            config.max_len >= 1 && config.max_len <= self.config.max_len,
            "generation length {} must be in 1..={} (the decoder's max_len)",
            config.max_len,
            self.config.max_len
        );
    }

    fn greedy(&self, image_tokens: &Tensor, config: &GenerateConfig) -> Vec<Vec<i64>> {
        self.check_length(config);
        let b = image_tokens.size()[0];
        let device = image_tokens.device();
        let mut cache = self.start(image_tokens);
        let mut next = Tensor::full([b, 1], self.config.bos_id, (Kind::Int64, device));
        let mut steps = Vec::with_capacity(config.max_len as usize);
        let mut done = Tensor::zeros([b], (Kind::Bool, device));
        for _ in 0..config.max_len {
            let logits = self.step(&mut cache, &next); // (B, 1, V)
            next = logits.argmax(-1, false); // (B, 1)
            steps.push(next.shallow_clone());
            if config.stop_at_eos {
                done = done.logical_or(&next.squeeze_dim(1).eq(self.config.eos_id));
                if bool::try_from(done.all()).expect("scalar") {
                    break;
                }
            }
        }
        self.collect(&Tensor::cat(&steps, 1), config.stop_at_eos)
    }

    /// Greedy decoding without any cache: every step reruns the whole decoder on the prefix,
    /// the image's cross-attention keys/values included. The reference the cached path is
    /// tested and benchmarked against.
    pub fn greedy_uncached(&self, image_tokens: &Tensor, config: &GenerateConfig) -> Vec<Vec<i64>> {
        self.check_length(config);
        tch::no_grad(|| {
            let b = image_tokens.size()[0];
            let memory = self.memory(image_tokens);
            let mut inputs = Tensor::full(
                [b, 1],
                self.config.bos_id,
                (Kind::Int64, image_tokens.device()),
            );
            for _ in 0..config.max_len {
                let logits = self.decode_with_memory(&memory, &inputs, Decoding::Causal, false);
                let next = logits.select(1, -1).argmax(-1, true); // (B, 1)
                inputs = Tensor::cat(&[&inputs, &next], 1);
            }
            self.collect(&inputs.narrow(1, 1, config.max_len), config.stop_at_eos)
        })
    }

    /// Rows of generated ids (B, T) as vectors, cut before the first EOS when asked.
    fn collect(&self, generated: &Tensor, stop_at_eos: bool) -> Vec<Vec<i64>> {
        let rows = Vec::<Vec<i64>>::try_from(generated.to_device(tch::Device::Cpu))
            .expect("generated ids are an int64 matrix");
        rows.into_iter()
            .map(|row| match stop_at_eos {
                true => row
                    .into_iter()
                    .take_while(|&t| t != self.config.eos_id)
                    .collect(),
                false => row,
            })
            .collect()
    }

    /// Beam search. Beams are extended by their raw log-probability; a beam that emitted EOS
    /// stays in the beam with its score frozen (it may only continue with padding, at no
    /// cost). At the end each image's beams are ranked by score / length^length_penalty.
    ///
    /// [`CapDecoder::generate`] uses it for `beam_size > 1`; with `beam_size == 1` it gives
    /// exactly the greedy result.
    pub fn beam_search(&self, image_tokens: &Tensor, config: &GenerateConfig) -> Vec<Vec<i64>> {
        tch::no_grad(|| self.beam_search_no_grad(image_tokens, config))
    }

    fn beam_search_no_grad(&self, image_tokens: &Tensor, config: &GenerateConfig) -> Vec<Vec<i64>> {
        self.check_length(config);
        assert!(config.beam_size >= 1, "beam_size must be at least 1");
        let (b, k, v) = (
            image_tokens.size()[0],
            config.beam_size,
            self.config.vocab_size,
        );
        let device = image_tokens.device();
        let (eos, pad) = (self.config.eos_id, self.config.pad_id);
        let mut cache = self.start(image_tokens);
        // Every image's beams share one cache row to begin with.
        let rows = Tensor::arange(b, (Kind::Int64, device)).repeat_interleave_self_int(k, 0, None);
        cache.reorder(&rows);
        let mut next = Tensor::full([b * k, 1], self.config.bos_id, (Kind::Int64, device));
        // Only the first beam of each image is live at the start; the others are copies.
        let scores = Tensor::full([b, k], f64::NEG_INFINITY, (Kind::Float, device));
        let _ = scores.select(1, 0).fill_(0.0);
        let mut scores = scores.view([b * k]);
        let mut finished = Tensor::zeros([b * k], (Kind::Bool, device));
        let mut lengths = Tensor::zeros([b * k], (Kind::Int64, device));
        let mut history: Vec<Tensor> = Vec::new();
        // A finished beam's continuation: padding at log-probability 0, nothing else.
        let frozen = Tensor::full([v], f64::NEG_INFINITY, (Kind::Float, device)).index_fill(
            0,
            &Tensor::from_slice(&[pad]).to_device(device),
            0.0,
        );
        for _ in 0..config.max_len {
            let logp = self
                .step(&mut cache, &next)
                .squeeze_dim(1)
                .log_softmax(-1, Kind::Float); // (B·k, V)
            let logp = logp.where_self(&finished.logical_not().unsqueeze(1), &frozen.unsqueeze(0));
            let total = (scores.unsqueeze(1) + logp).view([b, k * v]);
            let (best, index) = total.topk(k, -1, true, true); // (B, k)
            let beam = index.divide_scalar_mode(v, "floor"); // (B, k) beam within the image
            let token = index.remainder(v); // (B, k)
            let source =
                (beam + Tensor::arange(b, (Kind::Int64, device)).unsqueeze(1) * k).view([b * k]);
            cache.reorder(&source);
            history = history.iter().map(|h| h.index_select(0, &source)).collect();
            finished = finished.index_select(0, &source);
            lengths =
                lengths.index_select(0, &source) + finished.logical_not().to_kind(Kind::Int64);
            next = token.view([b * k, 1]);
            history.push(next.shallow_clone());
            scores = best.view([b * k]);
            if config.stop_at_eos {
                finished = finished.logical_or(&next.squeeze_dim(1).eq(eos));
                if bool::try_from(finished.all()).expect("scalar") {
                    break;
                }
            }
        }
        let normalised = (&scores
            / lengths
                .clamp_min(1)
                .to_kind(Kind::Float)
                .pow_tensor_scalar(config.length_penalty))
        .view([b, k]);
        let best = normalised.argmax(-1, false) + Tensor::arange(b, (Kind::Int64, device)) * k; // (B)
        let sequences = Tensor::cat(&history, 1).index_select(0, &best);
        self.collect(&sequences, config.stop_at_eos)
    }

    /// Summed log-likelihood of candidate captions: image tokens (B, N, E) and candidates
    /// (B, C, L) or (C, L) shared by all images; returns (B, C). Teacher forcing on the
    /// candidates shifted right ([`shift_right`]); pad targets are not scored, EOS is.
    ///
    /// The fast path, equal to [`CapDecoder::score_uncached`] up to float rounding:
    /// - Only the first [`CapDecoder::scored_len`] positions are decoded: later ones are pad in
    ///   every candidate, score nothing, and under causal self-attention (the only mode used
    ///   here) cannot change earlier positions. Cross-attention and the MLP act per position.
    ///   (Parallel decoding is not causal and could not be cut so.)
    /// - The inputs every candidate shares — BOS and the common prefix of
    ///   [`CapDecoder::shared_prefix_len`] = P tokens, input positions 0..=P (at most L') —
    ///   are decoded once per image (B rows) into a [`KvCache`]; the candidates' remaining
    ///   inputs continue from it ([`CapDecoder::step`], positions offset by P + 1): B·C rows
    ///   of L' − P − 1 tokens instead of L. The shared positions' logits score each
    ///   candidate's first P + 1 targets (the prefix and the token after it).
    /// - Each image's cross-attention keys/values serve its C rows without being copied.
    pub fn score(&self, image_tokens: &Tensor, candidates: &Tensor) -> Tensor {
        let targets = self.candidates_per_image(image_tokens, candidates); // (B, C, L)
        let (b, c, _) = targets.size3().expect("(B, C, L)");
        let device = targets.device();
        let len = self.scored_len(&targets);
        if len == 0 {
            return Tensor::zeros([b, c], (Kind::Float, device));
        }
        let targets = targets.narrow(2, 0, len); // (B, C, L')
        let rows = targets.reshape([b * c, len]); // (B·C, L')
        let inputs = shift_right(&rows, self.config.bos_id); // (B·C, L')
                                                             // Input positions 0..=P (BOS, then the prefix) are the same in every row.
        let shared = (self.shared_prefix_len(&targets) + 1).min(len);
        let mut cache = self.start(image_tokens);
        let head = self.step(
            &mut cache,
            &inputs
                .narrow(0, 0, 1)
                .narrow(1, 0, shared)
                .expand([b, shared], false),
        ); // (B, S, V)
        let scores = summed_log_likelihood(
            &head.unsqueeze(1), // (B, 1, S, V): the same for every candidate
            &targets.narrow(2, 0, shared),
            self.config.pad_id,
        ); // (B, C)
        if shared == len {
            return scores;
        }
        cache.share_image(c);
        let tail = self.step(&mut cache, &inputs.narrow(1, shared, len - shared)); // (B·C, T, V)
        let tail_scores = summed_log_likelihood(
            &tail,
            &rows.narrow(1, shared, len - shared),
            self.config.pad_id,
        ); // (B·C)
        scores + tail_scores.view([b, c])
    }

    /// [`CapDecoder::score`] the direct way, the reference it is tested and benchmarked
    /// against: every candidate is decoded over all L positions, with the image keys/values
    /// copied to each of its rows.
    pub fn score_uncached(&self, image_tokens: &Tensor, candidates: &Tensor) -> Tensor {
        let candidates = self.candidates_per_image(image_tokens, candidates);
        let (b, c, len) = candidates.size3().expect("(B, C, L)");
        let targets = candidates.reshape([b * c, len]); // (B·C, L)
        let memory: Vec<(Tensor, Tensor)> = self
            .memory(image_tokens)
            .into_iter()
            .map(|(k, v)| (repeat_rows(&k, c), repeat_rows(&v, c)))
            .collect();
        let inputs = shift_right(&targets, self.config.bos_id);
        let logp = self
            .decode_with_memory(&memory, &inputs, Decoding::Causal, false)
            .log_softmax(-1, Kind::Float); // (B·C, L, V)
        let token_logp = logp.gather(2, &targets.unsqueeze(2), false).squeeze_dim(2); // (B·C, L)
        let keep = targets.ne(self.config.pad_id).to_kind(Kind::Float);
        (token_logp * keep)
            .sum_dim_intlist(1, false, Kind::Float)
            .view([b, c])
    }

    /// Candidates (C, L) or (B, C, L) as (B, C, L) for image tokens (B, N, E).
    fn candidates_per_image(&self, image_tokens: &Tensor, candidates: &Tensor) -> Tensor {
        let b = image_tokens.size()[0];
        match candidates.dim() {
            2 => candidates.unsqueeze(0).expand([b, -1, -1], false),
            3 => {
                assert_eq!(
                    candidates.size()[0],
                    b,
                    "candidates {:?} must have one row per image of {:?}",
                    candidates.size(),
                    image_tokens.size()
                );
                candidates.shallow_clone()
            }
            _ => panic!(
                "candidates must be (C, L) or (B, C, L), got {:?}",
                candidates.size()
            ),
        }
    }

    /// Positions that [`CapDecoder::score`] decodes for candidates (…, L): up to and including
    /// the last non-pad token of the longest candidate (0 when all are padding).
    pub fn scored_len(&self, candidates: &Tensor) -> i64 {
        let len = candidates.size().last().copied().unwrap_or(0);
        if candidates.numel() == 0 {
            return 0;
        }
        let positions = Tensor::arange_start(1, len + 1, (Kind::Int64, candidates.device()));
        (candidates.ne(self.config.pad_id).to_kind(Kind::Int64) * positions)
            .max()
            .int64_value(&[])
    }

    /// Length P of the longest prefix of non-pad tokens that all candidates (…, L) share (0
    /// for none or no candidates).
    pub fn shared_prefix_len(&self, candidates: &Tensor) -> i64 {
        let len = candidates.size().last().copied().unwrap_or(0);
        if candidates.numel() == 0 {
            return 0;
        }
        let rows = candidates.reshape([-1, len]); // (R, L)
        let first = rows.get(0); // (L)
        let common = rows
            .eq_tensor(&first.unsqueeze(0))
            .all_dim(0, false)
            .logical_and(&first.ne(self.config.pad_id)); // (L)
                                                         // The leading run of `true`s.
        common
            .to_kind(Kind::Int64)
            .cumprod(0, Kind::Int64)
            .sum(Kind::Int64)
            .int64_value(&[])
    }
}

/// Summed log-probability of the non-pad `targets` (…, T) under `logits` (…, T, V) whose
/// leading dimensions broadcast to the targets', in float32: (…). As `log_softmax` then
/// `gather`, without materialising the log-softmax or the broadcast logits.
fn summed_log_likelihood(logits: &Tensor, targets: &Tensor, pad_id: i64) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    let v = logits.size().last().copied().expect("logits end in V");
    let shape: Vec<i64> = targets.size().into_iter().chain([v]).collect();
    let picked = logits
        .expand(&shape, false)
        .gather(-1, &targets.unsqueeze(-1), false)
        .squeeze_dim(-1); // (…, T)
    let token_logp = picked - logits.logsumexp([-1], false); // (…, T), broadcast
    let keep = targets.ne(pad_id).to_kind(Kind::Float);
    (token_logp * keep).sum_dim_intlist(-1, false, Kind::Float)
}

/// Repeats each row of (B, …) `times` times, consecutively: (B·times, …).
fn repeat_rows(x: &Tensor, times: i64) -> Tensor {
    x.repeat_interleave_self_int(times, 0, None)
}

/// The decoder inputs of a causal (teacher-forced) pass: BOS, then the caption without its
/// last token. (B, L) -> (B, L).
pub fn shift_right(targets: &Tensor, bos_id: i64) -> Tensor {
    let (b, len) = targets.size2().expect("targets must be (B, L)");
    let bos = Tensor::full([b, 1], bos_id, (Kind::Int64, targets.device()));
    Tensor::cat(&[bos, targets.narrow(1, 0, len - 1)], 1)
}
