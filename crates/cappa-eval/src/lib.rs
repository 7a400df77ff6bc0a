//! Evaluators for frozen image encoders: few-shot and linear probes, zero-shot classification,
//! retrieval, captioning metrics (BLEU, ROUGE-L, CIDEr-D as pycocoevalcap computes them),
//! compositional benchmarks and vision-and-language transfer.
//!
//! Boundaries: evaluators see models only through small traits (image encoder, text encoder,
//! captioner, likelihood scorer), never concrete model types; data comes from `cappa-data`.
//!
//! The code arrives with the "Evaluators" issue; a usage example will stand here with it.
