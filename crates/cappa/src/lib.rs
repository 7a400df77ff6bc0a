//! The experiments of cappa, as a library: evaluating checkpoints, `compare` (CLIP, Cap and
//! CapPa trained at matched compute, then evaluated on every task) and `scale` (sweeps over
//! model size, examples seen and caption quality), with their reports: Markdown, JSON and PNG
//! plots. The `cappa` binary (its commands in `src/cli/`, one module each) is a thin command
//! line over this crate: [`checkpoint_eval`] loads and evaluates one checkpoint (what `cappa
//! eval` and the experiments share), [`experiment`] runs `compare` and `scale`, [`plots`]
//! draws their figures.
//!
//! ```no_run
//! use cappa::experiment::{compare, CompareOptions, Preset};
//!
//! let preset = Preset::named("cpu-quick").expect("a built-in preset");
//! let options = CompareOptions::new("runs/quick".into(), tch::Device::Cpu);
//! let results = compare(&preset, &options).expect("the comparison runs");
//! println!("{}", results.table_markdown());
//! ```

pub mod checkpoint_eval;
pub mod experiment;
pub mod plots;
