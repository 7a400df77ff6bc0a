//! Models on `tch`: the ViT image encoder, the CLIP text tower and two-tower `Clip`, the
//! Cap/CapPa transformer decoder with its KV cache, named presets, parameter and FLOP counts,
//! and checkpoint naming compatible with open_clip.
//!
//! Boundaries: models expose task methods (`encode_image`, `encode_text`, `decode`, `score`)
//! and compute no loss; losses live in `cappa-objectives`, training in `cappa-trainer`.
//!
//! The models arrive with the "Models and objectives" issue; a usage example will stand here
//! with them. Today the crate carries the libtorch smoke tests (`tests/tch_smoke.rs`) that
//! show the bindings, the libtorch build and the rpath work together.
