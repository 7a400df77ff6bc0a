//! Export of CLIP models to open_clip: `open_clip_config.json` (`model_cfg` +
//! `preprocess_cfg`) and `open_clip_model.safetensors`, the layout open_clip's
//! `create_model_and_transforms("local-dir:DIR")` loads. cappa's variable names already are
//! open_clip's state-dict names, so the weights are written as they are.

use std::path::Path;

use serde_json::json;
use tch::nn::VarStore;

use crate::checkpoint::{save_weights, write_json, CheckpointError};
use crate::clip::{ClipConfig, ContrastiveLoss};
use crate::validate::ConfigError;
use crate::vit::{Pooling, PositionEmbedding};

pub const OPEN_CLIP_CONFIG_FILE: &str = "open_clip_config.json";
pub const OPEN_CLIP_WEIGHTS_FILE: &str = "open_clip_model.safetensors";

/// open_clip's `open_clip_config.json` for a cappa CLIP, or the field open_clip cannot express.
pub fn open_clip_config(config: &ClipConfig) -> Result<serde_json::Value, ConfigError> {
    let (v, t) = (&config.vision, &config.text);
    if !v.class_token {
        return Err(ConfigError::new(
            "vision",
            "class_token",
            "is false, but open_clip's ViT always has a class token: train with \
             vision.class_token = true to export",
        ));
    }
    let pool_type = match v.pooling {
        Pooling::Cls => "tok",
        Pooling::Gap => "avg",
        Pooling::Map => {
            return Err(ConfigError::new(
                "vision",
                "pooling",
                "= map, but open_clip's attentional pooler differs from cappa's MAP head: use \
                 vision.pooling = cls or gap to export",
            ))
        }
    };
    if v.position_embedding != PositionEmbedding::Learned {
        return Err(ConfigError::new(
            "vision",
            "position_embedding",
            "is not learned, and only learned position embeddings are exported: use \
             vision.position_embedding = learned",
        ));
    }
    let mut model_cfg = json!({
        "embed_dim": t.output_dim,
        "vision_cfg": {
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "width": v.width,
            "layers": v.depth,
            "head_width": v.width / v.num_heads,
            "mlp_ratio": v.mlp_dim as f64 / v.width as f64,
            "no_ln_pre": !v.ln_pre,
            "pool_type": pool_type,
        },
        "text_cfg": {
            "context_length": t.context_length,
            "vocab_size": t.vocab_size,
            "width": t.width,
            "heads": t.num_heads,
            "layers": t.depth,
            "mlp_ratio": t.mlp_dim as f64 / t.width as f64,
            // cappa pools at the first EOS, which is open_clip's 'eos' pooling.
            "pool_type": "eos",
            "eos_id": t.eos_id,
            "pad_id": t.pad_id,
        },
    });
    if config.loss == ContrastiveLoss::Sigmoid {
        // Makes open_clip create the `logit_bias` parameter that the weights carry.
        model_cfg["init_logit_bias"] = json!(-10.0);
    }
    Ok(json!({
        "model_cfg": model_cfg,
        // cappa scales pixels to [-1, 1]: (x - 0.5) / 0.5.
        "preprocess_cfg": {
            "size": v.image_size,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
    }))
}

/// Writes an open_clip model directory for a CLIP model's weights and configuration.
pub fn export_open_clip(
    vs: &VarStore,
    config: &ClipConfig,
    out_dir: &Path,
) -> Result<(), CheckpointError> {
    let config_json =
        open_clip_config(config).map_err(|source| CheckpointError::InvalidConfig {
            path: out_dir.join(OPEN_CLIP_CONFIG_FILE),
            source,
        })?;
    std::fs::create_dir_all(out_dir).map_err(|source| CheckpointError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    save_weights(vs, &out_dir.join(OPEN_CLIP_WEIGHTS_FILE))?;
    write_json(&out_dir.join(OPEN_CLIP_CONFIG_FILE), &config_json)
}
