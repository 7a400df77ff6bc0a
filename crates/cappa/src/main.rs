//! `cappa`: pretrain ViT image encoders with contrastive (CLIP, SigLIP) and captioning (Cap,
//! CapPa) objectives at matched compute, then compare them downstream.
//!
//! ```text
//! cappa info [--json]                    # libtorch, threads, CUDA devices, bf16 support
//! cappa export --format open_clip CKPT OUT  # a CLIP checkpoint as an open_clip model directory
//! cappa bench models --preset tiny       # step time and decoding throughput (see xtask bench)
//! cappa data inspect 'shards/{00000..00009}.tar' [--json]  # counts, sizes, bad samples
//! cappa synth --out DIR --samples N      # the scene world as webdataset shards + eval sets
//! cappa train --config exp.json --set optim.lr=3e-4 [--resume auto]  # one training run
//! cappa launch --nproc 2 train --config exp.json  # data parallel: 2 ranks on this machine
//! cappa eval runs/NAME/checkpoints/step-00000200 [--transfer]  # every scene-world task
//! cappa checkpoint verify runs/NAME     # every checkpoint's files against its manifest
//! cappa compare [--preset default|cpu-quick|test|FILE] [--seeds 3]  # CLIP vs Cap vs CapPa
//! cappa scale [--preset default|test|FILE]  # model size × examples × caption noise
//! cappa metrics caption captions.json    # BLEU, ROUGE-L, CIDEr-D as pycocoevalcap
//! cappa probe fewshot features.safetensors --shots 1,5,10,25   # probes on any features
//! cappa --device cuda:1 --threads 8 …    # global flags every subcommand honours
//! ```
//!
//! Run it through `cargo xtask run -- ARGS…`, which provisions libtorch first.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
