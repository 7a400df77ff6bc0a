//! Vision Transformer image encoder (Dosovitskiy et al., 2020), in the two flavours cappa
//! needs: the CapPa/big_vision one (no class token, no pre-LN, global average pooling) and
//! open_clip's (class token, `ln_pre`, class-token pooling).
//!
//! Reference code: big_vision `models/vit.py`; open_clip `transformer.py` (`VisionTransformer`),
//! whose state-dict names the variables here follow (`conv1`, `class_embedding`,
//! `positional_embedding`, `ln_pre`, `transformer.resblocks.{i}`, `ln_post`, `proj`).
//!
//! Dimension letters: B batch, C channels (3), H×W image, P patch, N patch tokens, D width,
//! E output (embedding) width.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::layers::{dropout, normal, AttentionMask, CrossAttention, LayerNorm, Mlp, Transformer};
use crate::validate::{self, ConfigError};

/// How the encoder's tokens are reduced to one vector per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Global average of the patch tokens (after the final LayerNorm); CapPa's probe features.
    Gap,
    /// The class token (requires `class_token: true`).
    Cls,
    /// Multihead attention pooling with a learned probe (big_vision's `MAPHead`).
    Map,
}

/// Position embeddings added to the patch tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionEmbedding {
    Learned,
    /// Fixed 2-D sine-cosine embeddings (MoCo v3 / big_vision `posemb_sincos_2d`).
    SinCos2d,
}

/// Configuration of a [`Vit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    pub image_size: i64,
    pub patch_size: i64,
    pub width: i64,
    pub depth: i64,
    pub num_heads: i64,
    pub mlp_dim: i64,
    pub class_token: bool,
    /// A LayerNorm after the embeddings, before the blocks (open_clip has one; big_vision not).
    pub ln_pre: bool,
    pub position_embedding: PositionEmbedding,
    pub pooling: Pooling,
    /// Width of a linear projection of the pooled vector (`proj`, no bias); `None` for none.
    pub output_dim: Option<i64>,
    pub dropout: f64,
}

impl VitConfig {
    /// The CapPa encoder layout with the given size: no class token, no pre-LN, learned
    /// positions, GAP, no projection.
    pub fn cappa(image_size: i64, patch_size: i64, width: i64, depth: i64, num_heads: i64) -> Self {
        Self {
            image_size,
            patch_size,
            width,
            depth,
            num_heads,
            mlp_dim: 4 * width,
            class_token: false,
            ln_pre: false,
            position_embedding: PositionEmbedding::Learned,
            pooling: Pooling::Gap,
            output_dim: None,
            dropout: 0.0,
        }
    }

    /// Test preset: 32×32 images, 8×8 patches (16 tokens), width 64, 2 layers.
    pub fn tiny() -> Self {
        Self::cappa(32, 8, 64, 2, 4)
    }
    /// Small CPU preset: 64×64 images, 8×8 patches (64 tokens), width 192, 6 layers.
    pub fn small() -> Self {
        Self::cappa(64, 8, 192, 6, 3)
    }
    /// ViT-S/16 at 224.
    pub fn s16() -> Self {
        Self::cappa(224, 16, 384, 12, 6)
    }
    /// ViT-B/16 at 224 (the paper's main encoder).
    pub fn b16() -> Self {
        Self::cappa(224, 16, 768, 12, 12)
    }
    /// ViT-B/32 at 224.
    pub fn b32() -> Self {
        Self::cappa(224, 32, 768, 12, 12)
    }
    /// ViT-L/14 at 224.
    pub fn l14() -> Self {
        Self::cappa(224, 14, 1024, 24, 16)
    }
    /// ViT-L/16 at 224.
    pub fn l16() -> Self {
        Self::cappa(224, 16, 1024, 24, 16)
    }
    /// SigLIP's shape-optimised So400m/14 at 224 (width 1152, depth 27, MLP 4304).
    pub fn so400m14() -> Self {
        Self {
            mlp_dim: 4304,
            ..Self::cappa(224, 14, 1152, 27, 16)
        }
    }

    /// Looks a preset up by name (`tiny`, `small`, `s16`, `b16`, `b32`, `l14`, `l16`, `so400m14`).
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "tiny" => Self::tiny(),
            "small" => Self::small(),
            "s16" => Self::s16(),
            "b16" => Self::b16(),
            "b32" => Self::b32(),
            "l14" => Self::l14(),
            "l16" => Self::l16(),
            "so400m14" => Self::so400m14(),
            _ => return None,
        })
    }

    /// Patch tokens per image, N = (H / P)².
    pub fn num_patches(&self) -> i64 {
        (self.image_size / self.patch_size).pow(2)
    }

    /// Tokens through the blocks: patches plus the class token, if any.
    pub fn seq_len(&self) -> i64 {
        self.num_patches() + i64::from(self.class_token)
    }

    /// Width of the pooled output (after the projection, if any).
    pub fn pooled_dim(&self) -> i64 {
        self.output_dim.unwrap_or(self.width)
    }

    /// Checks the invariants that the forward pass relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::positive(
            "vision",
            &[
                ("image_size", self.image_size),
                ("patch_size", self.patch_size),
                ("width", self.width),
                ("depth", self.depth),
                ("num_heads", self.num_heads),
                ("mlp_dim", self.mlp_dim),
            ],
        )?;
        if self.image_size % self.patch_size != 0 {
            return Err(ConfigError::new(
                "vision",
                "image_size",
                format!(
                    "{} is not a multiple of vision.patch_size {}",
                    self.image_size, self.patch_size
                ),
            ));
        }
        validate::heads_divide_width("vision", self.width, self.num_heads)?;
        if self.pooling == Pooling::Cls && !self.class_token {
            return Err(ConfigError::new(
                "vision",
                "pooling",
                "= cls needs vision.class_token = true",
            ));
        }
        validate::dropout("vision", self.dropout)?;
        Ok(())
    }
}

/// Multihead attention pooling: a learned probe attends to the tokens, then a residual MLP.
#[derive(Debug)]
struct MapHead {
    probe: Tensor,
    attn: CrossAttention,
    ln: LayerNorm,
    mlp: Mlp,
}

impl MapHead {
    fn new(p: nn::Path<'_>, width: i64, num_heads: i64, mlp_dim: i64) -> Self {
        Self {
            probe: p.var("probe", &[1, 1, width], normal(0.02)),
            attn: CrossAttention::new(&p / "attn", width, width, num_heads),
            ln: LayerNorm::new(&p / "ln", width, true),
            mlp: Mlp::new(&p / "mlp", width, mlp_dim, true),
        }
    }

    fn forward(&self, tokens: &Tensor) -> Tensor {
        let b = tokens.size()[0];
        let probe = self.probe.expand([b, 1, -1], false); // (B, 1, D)
        let (k, v) = self.attn.memory_kv(tokens);
        let x = self.attn.forward_with_kv(&probe, &k, &v); // (B, 1, D)
        let x = &x + x.apply(&self.ln).apply(&self.mlp);
        x.squeeze_dim(1)
    }
}

/// Output of [`Vit::encode_image`].
#[derive(Debug)]
pub struct ImageEncoding {
    /// Patch tokens after the final LayerNorm, (B, N, D); the class token is not included.
    pub tokens: Tensor,
    /// Pooled (and projected, if configured) representation, (B, E).
    pub pooled: Tensor,
}

/// The ViT image encoder.
#[derive(Debug)]
pub struct Vit {
    config: VitConfig,
    conv1: nn::Conv2D,
    class_embedding: Option<Tensor>,
    positional_embedding: Tensor,
    ln_pre: Option<LayerNorm>,
    transformer: Transformer,
    ln_post: LayerNorm,
    map_head: Option<MapHead>,
    proj: Option<Tensor>,
}

impl Vit {
    /// Creates the encoder's variables under `p` (e.g. `vs.root() / "visual"`).
    ///
    /// Panics with the offending field when the configuration is invalid; call
    /// [`VitConfig::validate`] first to get an error instead.
    pub fn new(p: nn::Path<'_>, config: &VitConfig) -> Self {
        if let Err(why) = config.validate() {
            panic!("invalid ViT config: {why}");
        }
        let c = config;
        let conv1 = nn::conv2d(
            &p / "conv1",
            3,
            c.width,
            c.patch_size,
            nn::ConvConfig {
                stride: c.patch_size,
                bias: false,
                ..Default::default()
            },
        );
        let scale = (c.width as f64).powf(-0.5);
        let class_embedding = c
            .class_token
            .then(|| p.var("class_embedding", &[c.width], normal(scale)));
        let positional_embedding = match c.position_embedding {
            PositionEmbedding::Learned => p.var(
                "positional_embedding",
                &[c.seq_len(), c.width],
                normal(scale),
            ),
            PositionEmbedding::SinCos2d => {
                let grid = c.image_size / c.patch_size;
                let table = sincos_2d(grid, grid, c.width);
                let table = match c.class_token {
                    // The class token gets a zero position embedding.
                    true => Tensor::cat(
                        &[
                            Tensor::zeros([1, c.width], (Kind::Float, tch::Device::Cpu)),
                            table,
                        ],
                        0,
                    ),
                    false => table,
                };
                // Fixed, not trained: stored in the checkpoint but outside the optimizer's view.
                let mut var = p.zeros_no_train("positional_embedding", &[c.seq_len(), c.width]);
                tch::no_grad(|| var.copy_(&table));
                var
            }
        };
        Self {
            conv1,
            class_embedding,
            positional_embedding,
            ln_pre: c
                .ln_pre
                .then(|| LayerNorm::new(&p / "ln_pre", c.width, true)),
            transformer: Transformer::new(
                &p / "transformer",
                c.depth,
                c.width,
                c.num_heads,
                c.mlp_dim,
                c.dropout,
            ),
            ln_post: LayerNorm::new(&p / "ln_post", c.width, true),
            map_head: (c.pooling == Pooling::Map)
                .then(|| MapHead::new(&p / "attn_pool", c.width, c.num_heads, c.mlp_dim)),
            proj: c
                .output_dim
                .map(|e| p.var("proj", &[c.width, e], normal(scale))),
            config: config.clone(),
        }
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// The device of the encoder's variables.
    pub fn device(&self) -> tch::Device {
        self.conv1.ws.device()
    }

    /// Encodes images (B, 3, H, W) into patch tokens (B, N, D) and a pooled vector (B, E).
    pub fn encode_image(&self, images: &Tensor, train: bool) -> ImageEncoding {
        let c = &self.config;
        let size = images.size();
        assert!(
            size.len() == 4 && size[1] == 3 && size[2] == c.image_size && size[3] == c.image_size,
            "images must be (B, 3, {0}, {0}), got {size:?}",
            c.image_size
        );
        let b = size[0];
        let x = images.apply(&self.conv1); // (B, D, H/P, W/P)
        let x = x.flatten(2, 3).transpose(1, 2); // (B, N, D)
        let x = match &self.class_embedding {
            Some(cls) => Tensor::cat(&[cls.expand([b, 1, c.width], false), x], 1), // (B, 1+N, D)
            None => x,
        };
        let mut x = dropout(x + &self.positional_embedding, c.dropout, train);
        if let Some(ln_pre) = &self.ln_pre {
            x = x.apply(ln_pre);
        }
        let x = self
            .transformer
            .forward(&x, AttentionMask::Full, train)
            .apply(&self.ln_post);
        let patches = match c.class_token {
            true => x.narrow(1, 1, c.num_patches()),
            false => x.shallow_clone(),
        };
        let pooled = match c.pooling {
            Pooling::Gap => patches.mean_dim(1, false, None),
            Pooling::Cls => x.select(1, 0),
            Pooling::Map => self
                .map_head
                .as_ref()
                .expect("a MAP head exists when pooling is Map")
                .forward(&patches),
        };
        let pooled = match &self.proj {
            Some(proj) => pooled.matmul(proj),
            None => pooled,
        };
        ImageEncoding {
            tokens: patches,
            pooled,
        }
    }
}

impl Module for Vit {
    /// The pooled representation, in evaluation mode.
    fn forward(&self, images: &Tensor) -> Tensor {
        self.encode_image(images, false).pooled
    }
}

/// 2-D sine-cosine position embeddings (h·w, D) as big_vision's `posemb_sincos_2d`
/// (temperature 10 000): the first half of the channels encodes x, the second half y.
pub fn sincos_2d(h: i64, w: i64, width: i64) -> Tensor {
    assert_eq!(
        width % 4,
        0,
        "sincos_2d needs a width divisible by 4, got {width}"
    );
    let quarter = width / 4;
    let omega =
        Tensor::arange(quarter, (Kind::Float, tch::Device::Cpu)) / (quarter - 1).max(1) as f64;
    let omega = (omega * -(10_000f64.ln())).exp(); // 1 / 10000^(i / (q-1))
    let ys = Tensor::arange(h, (Kind::Float, tch::Device::Cpu));
    let xs = Tensor::arange(w, (Kind::Float, tch::Device::Cpu));
    let grid = Tensor::meshgrid_indexing(&[&ys, &xs], "ij");
    let y = grid[0].flatten(0, -1).unsqueeze(1) * omega.unsqueeze(0); // (h·w, q)
    let x = grid[1].flatten(0, -1).unsqueeze(1) * omega.unsqueeze(0);
    Tensor::cat(&[x.sin(), x.cos(), y.sin(), y.cos()], 1)
}
