//! `cappa export`: a checkpoint in another library's layout.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cappa_models::checkpoint::{self, Model};
use cappa_models::export::export_open_clip;
use tch::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// open_clip's `local-dir:` layout.
    #[value(name = "open_clip", alias = "open-clip")]
    OpenClip,
}

pub(crate) fn run(format: Format, checkpoint_dir: &Path, out_dir: &Path) -> Result<()> {
    let (vs, model, _) = checkpoint::load(checkpoint_dir, Device::Cpu).with_context(|| {
        format!(
            "could not load the checkpoint in {}: pass a directory holding config.json and model.safetensors",
            checkpoint_dir.display()
        )
    })?;
    match (format, model) {
        (Format::OpenClip, Model::Clip(clip)) => {
            export_open_clip(&vs, clip.config(), out_dir)?;
            println!(
                "wrote {} (open_clip.create_model_and_transforms(\"local-dir:{}\"))",
                out_dir.display(),
                out_dir.display()
            );
            Ok(())
        }
        (Format::OpenClip, Model::Cap(_)) => bail!(
            "{} holds a Cap/CapPa model; open_clip export takes CLIP models only",
            checkpoint_dir.display()
        ),
    }
}
