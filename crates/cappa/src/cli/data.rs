//! `cappa data …`: dataset tools.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cappa_data::inspect::{inspect, DatasetFormat, InspectOptions};
use cappa_data::pipeline::DecodeLimits;
use cappa_data::scene::{write_synth, ImageFormat, SceneConfig, SynthConfig};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum DataCommand {
    /// Read a dataset end to end (every image decoded) and print sample counts, image sizes,
    /// caption lengths and bad samples by reason.
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct InspectArgs {
    /// Files, globs or brace ranges (`shards/{00000..00009}.tar`), a CSV/TSV, a COCO, Karpathy,
    /// SugarCrepe or VQA JSON file, or an ImageFolder directory.
    #[arg(required = true)]
    paths: Vec<String>,
    /// The format, when it cannot be told from the path.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Where an annotation file's images are (default: the file's directory).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Largest accepted image, in pixels (width × height).
    #[arg(long, default_value_t = DecodeLimits::default().max_pixels)]
    max_pixels: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Webdataset,
    Csv,
    Tsv,
    Coco,
    Karpathy,
    ImageFolder,
    Sugarcrepe,
    Vqa,
}

impl From<Format> for DatasetFormat {
    fn from(format: Format) -> Self {
        match format {
            Format::Webdataset => DatasetFormat::WebDataset,
            Format::Csv => DatasetFormat::Csv,
            Format::Tsv => DatasetFormat::Tsv,
            Format::Coco => DatasetFormat::Coco,
            Format::Karpathy => DatasetFormat::Karpathy,
            Format::ImageFolder => DatasetFormat::ImageFolder,
            Format::Sugarcrepe => DatasetFormat::SugarCrepe,
            Format::Vqa => DatasetFormat::Vqa,
        }
    }
}

pub(crate) fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Inspect(args) => {
            let options = InspectOptions {
                format: args.format.map(DatasetFormat::from),
                image_root: args.images,
                limits: DecodeLimits {
                    max_pixels: args.max_pixels,
                },
            };
            let report = inspect(&args.paths, &options)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
        }
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct SynthArgs {
    /// Output directory (shards/ and eval/ are written inside).
    #[arg(long)]
    out: PathBuf,
    /// Training samples, written as tar shards.
    #[arg(long)]
    samples: u64,
    /// Held-out evaluation images (every evaluation set is built from them).
    #[arg(long, default_value_t = 500)]
    eval_samples: u64,
    /// Samples per shard.
    #[arg(long, default_value_t = 10_000)]
    shard_size: u64,
    /// Side of the square images in pixels.
    #[arg(long, default_value_t = 64)]
    image_size: u32,
    /// Encoding of the training images.
    #[arg(long, value_enum, default_value = "jpg")]
    image_format: SynthImageFormat,
    /// A JSON file with a full scene-world configuration (difficulty knobs); flags above
    /// override its image size.
    #[arg(long)]
    world: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SynthImageFormat {
    Jpg,
    Png,
}

pub(crate) fn synth(args: &SynthArgs, seed: i64) -> Result<()> {
    let mut world = match &args.world {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("could not read the world configuration {}", path.display())
            })?;
            serde_json::from_str::<SceneConfig>(&text).with_context(|| {
                format!("{}: not a valid scene-world configuration", path.display())
            })?
        }
        None => SceneConfig::default(),
    };
    world.image_size = args.image_size;
    let config = SynthConfig {
        world,
        seed: seed as u64,
        train_samples: args.samples,
        eval_samples: args.eval_samples,
        shard_size: args.shard_size,
        image_format: match args.image_format {
            SynthImageFormat::Jpg => ImageFormat::Jpg,
            SynthImageFormat::Png => ImageFormat::Png,
        },
    };
    let report = write_synth(&args.out, &config)?;
    println!(
        "wrote {} training samples in {} shards and {} evaluation images to {}",
        report.train_samples,
        report.shards.len(),
        report.eval_images,
        report.out_dir.display()
    );
    println!(
        "read them with: cappa data inspect '{}/shards/*.tar'",
        report.out_dir.display()
    );
    Ok(())
}
