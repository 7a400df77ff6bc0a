//! Building blocks shared by the encoder, the text tower and the decoder.
//!
//! Variable names follow PyTorch's (and so open_clip's) state-dict names: `ln_1.weight`,
//! `attn.in_proj_weight`, `attn.out_proj.bias`, `mlp.c_fc.weight`, ...
//!
//! Dimension letters: B batch, T query tokens, S key tokens, D width, H heads, K head size
//! (D / H), M MLP width.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Standard deviation of the normal initialisation of projection weights.
pub(crate) const INIT_STD: f64 = 0.02;

pub(crate) fn normal(std: f64) -> nn::Init {
    nn::Init::Randn {
        mean: 0.0,
        stdev: std,
    }
}

/// How a projection's weight is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum WeightInit {
    /// N(0, std²) whatever the shape (open_clip: 0.02).
    Normal(f64),
    /// N(0, 1 / fan_in): flax's default `lecun_normal` (same variance; flax truncates at 2σ).
    LecunNormal,
    /// U(−a, a) with a = √(6 / (fan_in + fan_out)): flax's and PyTorch's `xavier_uniform`.
    XavierUniform,
}

impl WeightInit {
    /// The initialiser of a weight that maps `fan_in` inputs to `fan_out` outputs.
    pub(crate) fn init(self, fan_in: i64, fan_out: i64) -> nn::Init {
        match self {
            WeightInit::Normal(std) => normal(std),
            WeightInit::LecunNormal => normal((fan_in as f64).powf(-0.5)),
            WeightInit::XavierUniform => {
                let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
                nn::Init::Uniform { lo: -a, up: a }
            }
        }
    }
}

/// The weight initialisation and bias of a layer's projections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Projections {
    pub(crate) init: WeightInit,
    /// Biases start at 0.
    pub(crate) bias: bool,
}

impl Projections {
    /// open_clip's: N(0, 0.02²) weights, zero biases.
    pub(crate) const OPEN_CLIP: Projections = Projections {
        init: WeightInit::Normal(INIT_STD),
        bias: true,
    };
}

/// A linear layer with the given weight initialisation; its bias (if any) starts at 0.
pub(crate) fn linear_with(
    p: nn::Path<'_>,
    input: i64,
    output: i64,
    projections: Projections,
) -> nn::Linear {
    nn::linear(
        p,
        input,
        output,
        nn::LinearConfig {
            ws_init: projections.init.init(input, output),
            bs_init: projections.bias.then_some(nn::Init::Const(0.0)),
            bias: projections.bias,
        },
    )
}

/// Layer normalisation over the last dimension, with an optional bias (the CapPa decoder
/// has none).
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    dim: i64,
}

impl LayerNorm {
    pub fn new(p: nn::Path<'_>, dim: i64, bias: bool) -> Self {
        Self {
            weight: p.var("weight", &[dim], nn::Init::Const(1.0)),
            bias: bias.then(|| p.var("bias", &[dim], nn::Init::Const(0.0))),
            dim,
        }
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.dim],
            Some(&self.weight),
            self.bias.as_ref(),
            1e-5,
            true,
        )
    }
}

/// Which positions a query may attend to.
#[derive(Debug, Clone, Copy)]
pub enum AttentionMask<'a> {
    /// Every query sees every key.
    Full,
    /// Query t sees keys ≤ t (query and key sequences aligned at the start).
    Causal,
    /// A boolean mask broadcastable to (B, H, T, S); `true` where attention is allowed.
    Explicit(&'a Tensor),
}

/// Dropout that costs nothing when it does nothing (p = 0, the CapPa default, or evaluation).
pub(crate) fn dropout(x: Tensor, p: f64, train: bool) -> Tensor {
    if train && p > 0.0 {
        x.dropout(p, train)
    } else {
        x
    }
}

/// Splits (B, T, D) into heads: (B, H, T, K).
pub(crate) fn split_heads(x: &Tensor, num_heads: i64) -> Tensor {
    let (b, t, d) = x.size3().expect("split_heads expects (B, T, D)");
    x.view([b, t, num_heads, d / num_heads]).transpose(1, 2)
}

/// Merges heads back: (B, H, T, K) -> (B, T, D).
pub(crate) fn merge_heads(x: &Tensor) -> Tensor {
    let (b, h, t, k) = x.size4().expect("merge_heads expects (B, H, T, K)");
    x.transpose(1, 2).contiguous().view([b, t, h * k])
}

pub(crate) fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: AttentionMask<'_>) -> Tensor {
    match mask {
        AttentionMask::Full => {
            Tensor::scaled_dot_product_attention(q, k, v, None::<&Tensor>, 0.0, false, None, false)
        }
        AttentionMask::Causal => {
            Tensor::scaled_dot_product_attention(q, k, v, None::<&Tensor>, 0.0, true, None, false)
        }
        AttentionMask::Explicit(mask) => {
            Tensor::scaled_dot_product_attention(q, k, v, Some(mask), 0.0, false, None, false)
        }
    }
}

/// Multi-head self-attention with a packed input projection, as `torch.nn.MultiheadAttention`
/// (`in_proj_weight` (3D, D), `in_proj_bias` (3D, when biased), `out_proj`).
#[derive(Debug)]
pub struct SelfAttention {
    in_proj_weight: Tensor,
    in_proj_bias: Option<Tensor>,
    out_proj: nn::Linear,
    num_heads: i64,
}

impl SelfAttention {
    /// open_clip's layout: biased projections, N(0, 0.02²) weights.
    pub fn new(p: nn::Path<'_>, width: i64, num_heads: i64) -> Self {
        Self::with(p, width, num_heads, Projections::OPEN_CLIP)
    }

    pub(crate) fn with(
        p: nn::Path<'_>,
        width: i64,
        num_heads: i64,
        projections: Projections,
    ) -> Self {
        assert_eq!(
            width % num_heads,
            0,
            "width {width} is not divisible by num_heads {num_heads}"
        );
        Self {
            // Each of q, k, v maps D inputs to D outputs.
            in_proj_weight: p.var(
                "in_proj_weight",
                &[3 * width, width],
                projections.init.init(width, width),
            ),
            in_proj_bias: projections
                .bias
                .then(|| p.var("in_proj_bias", &[3 * width], nn::Init::Const(0.0))),
            out_proj: linear_with(&p / "out_proj", width, width, projections),
            num_heads,
        }
    }

    /// Queries, keys and values of `x` (B, T, D), each (B, H, T, K).
    pub(crate) fn qkv(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (b, t, d) = x.size3().expect("attention input must be (B, T, D)");
        let h = self.num_heads;
        let packed = x.linear(&self.in_proj_weight, self.in_proj_bias.as_ref()); // (B, T, 3D)
        let parts = packed
            .view([b, t, 3, h, d / h])
            .permute([2, 0, 3, 1, 4]) // (3, B, H, T, K)
            .unbind(0);
        let [q, k, v]: [Tensor; 3] = parts.try_into().expect("three parts");
        (q, k, v)
    }

    pub(crate) fn output(&self, heads: &Tensor) -> Tensor {
        merge_heads(heads).apply(&self.out_proj)
    }

    pub fn forward(&self, x: &Tensor, mask: AttentionMask<'_>) -> Tensor {
        let (q, k, v) = self.qkv(x);
        self.output(&attend(&q, &k, &v, mask))
    }
}

/// Attention from queries of one sequence to keys/values of another (the decoder attending to
/// image tokens, or a MAP probe attending to patch tokens).
#[derive(Debug)]
pub struct CrossAttention {
    q_proj: nn::Linear,
    kv_proj: nn::Linear,
    out_proj: nn::Linear,
    num_heads: i64,
}

impl CrossAttention {
    /// open_clip's layout: biased projections, N(0, 0.02²) weights.
    pub fn new(p: nn::Path<'_>, width: i64, memory_width: i64, num_heads: i64) -> Self {
        Self::with(p, width, memory_width, num_heads, Projections::OPEN_CLIP)
    }

    pub(crate) fn with(
        p: nn::Path<'_>,
        width: i64,
        memory_width: i64,
        num_heads: i64,
        projections: Projections,
    ) -> Self {
        assert_eq!(
            width % num_heads,
            0,
            "width {width} is not divisible by num_heads {num_heads}"
        );
        Self {
            q_proj: linear_with(&p / "q_proj", width, width, projections),
            kv_proj: linear_with(&p / "kv_proj", memory_width, 2 * width, projections),
            out_proj: linear_with(&p / "out_proj", width, width, projections),
            num_heads,
        }
    }

    /// Keys and values of the memory (B, S, E), each (B, H, S, K); computed once per image
    /// when decoding incrementally.
    pub fn memory_kv(&self, memory: &Tensor) -> (Tensor, Tensor) {
        let (b, s, _) = memory.size3().expect("memory must be (B, S, E)");
        let h = self.num_heads;
        let kv = memory
            .apply(&self.kv_proj) // (B, S, 2D)
            .view([b, s, 2, h, -1])
            .permute([2, 0, 3, 1, 4]) // (2, B, H, S, K)
            .unbind(0);
        let [k, v]: [Tensor; 2] = kv.try_into().expect("two parts");
        (k, v)
    }

    pub fn forward_with_kv(&self, x: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let q = split_heads(&x.apply(&self.q_proj), self.num_heads);
        merge_heads(&attend(&q, k, v, AttentionMask::Full)).apply(&self.out_proj)
    }
}

/// Two-layer GELU MLP (`c_fc`, `c_proj`, as open_clip names them).
#[derive(Debug)]
pub struct Mlp {
    c_fc: nn::Linear,
    c_proj: nn::Linear,
}

impl Mlp {
    /// N(0, 0.02²) weights (open_clip).
    pub fn new(p: nn::Path<'_>, width: i64, hidden: i64, bias: bool) -> Self {
        Self::with(
            p,
            width,
            hidden,
            Projections {
                init: WeightInit::Normal(INIT_STD),
                bias,
            },
        )
    }

    pub(crate) fn with(p: nn::Path<'_>, width: i64, hidden: i64, projections: Projections) -> Self {
        Self {
            c_fc: linear_with(&p / "c_fc", width, hidden, projections),
            c_proj: linear_with(&p / "c_proj", hidden, width, projections),
        }
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.apply(&self.c_fc).gelu("none").apply(&self.c_proj)
    }
}

/// The pre-LN transformer block of the encoder and text towers:
/// `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Debug)]
pub struct EncoderBlock {
    ln_1: LayerNorm,
    attn: SelfAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
    dropout: f64,
}

impl EncoderBlock {
    pub fn new(p: nn::Path<'_>, width: i64, num_heads: i64, mlp_dim: i64, dropout: f64) -> Self {
        Self {
            ln_1: LayerNorm::new(&p / "ln_1", width, true),
            attn: SelfAttention::new(&p / "attn", width, num_heads),
            ln_2: LayerNorm::new(&p / "ln_2", width, true),
            mlp: Mlp::new(&p / "mlp", width, mlp_dim, true),
            dropout,
        }
    }

    pub fn forward(&self, x: &Tensor, mask: AttentionMask<'_>, train: bool) -> Tensor {
        let x = x + dropout(
            self.attn.forward(&x.apply(&self.ln_1), mask),
            self.dropout,
            train,
        );
        &x + dropout(x.apply(&self.ln_2).apply(&self.mlp), self.dropout, train)
    }
}

/// `transformer.resblocks.{i}`: a stack of encoder blocks.
#[derive(Debug)]
pub struct Transformer {
    blocks: Vec<EncoderBlock>,
}

impl Transformer {
    pub fn new(
        p: nn::Path<'_>,
        depth: i64,
        width: i64,
        num_heads: i64,
        mlp_dim: i64,
        dropout: f64,
    ) -> Self {
        let p = &p / "resblocks";
        Self {
            blocks: (0..depth)
                .map(|i| EncoderBlock::new(&p / i, width, num_heads, mlp_dim, dropout))
                .collect(),
        }
    }

    pub fn forward(&self, x: &Tensor, mask: AttentionMask<'_>, train: bool) -> Tensor {
        let mut x = x.shallow_clone();
        for block in &self.blocks {
            x = block.forward(&x, mask, train);
        }
        x
    }
}

/// L2-normalises the last dimension.
pub fn l2_normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12)
}

/// Position index of each row's pooling token: the first `eos_id`, or the last non-pad token
/// when a row has no EOS (e.g. it was truncated). tokens: (B, L) -> (B).
pub fn eos_positions(tokens: &Tensor, eos_id: i64, pad_id: i64) -> Tensor {
    let (_, len) = tokens.size2().expect("tokens must be (B, L)");
    let positions = Tensor::arange(len, (Kind::Int64, tokens.device())).unsqueeze(0); // (1, L)
    let is_eos = tokens.eq(eos_id);
    // First EOS: the smallest position where is_eos; rows without one get L.
    let first_eos = positions
        .masked_fill(&is_eos.logical_not(), len)
        .min_dim(1, false)
        .0;
    // Last non-pad token (0 for an all-pad row).
    let last_token = positions
        .masked_fill(&tokens.eq(pad_id), -1)
        .max_dim(1, false)
        .0
        .clamp_min(0);
    first_eos.where_self(&first_eos.lt(len), &last_token)
}
