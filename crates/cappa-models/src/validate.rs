//! The error of the model configurations' `validate` methods, and the checks they share.
//! Errors name the field as it is written in a checkpoint's `config.json` (`vision.width`,
//! `decoder.eos_id`).

/// A model configuration the models cannot be built from: the field at fault and why.
///
/// `section` is the tower as `config.json` names it (`vision`, `text` or `decoder`), so
/// `format!("{section}.{field}")` is the field's path there; an experiment config has the
/// towers under `model.` (`model.vision.patch_size`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{section}.{field} {why}")]
pub struct ConfigError {
    pub section: &'static str,
    pub field: &'static str,
    /// What is wrong, worded to follow the field's name (`must be positive, got 0`).
    pub why: String,
}

impl ConfigError {
    pub fn new(section: &'static str, field: &'static str, why: impl Into<String>) -> Self {
        ConfigError {
            section,
            field,
            why: why.into(),
        }
    }

    /// The field's path in `config.json`, e.g. `vision.patch_size`.
    pub fn path(&self) -> String {
        format!("{}.{}", self.section, self.field)
    }
}

/// Every `(field, value)` must be positive.
pub(crate) fn positive(
    section: &'static str,
    fields: &[(&'static str, i64)],
) -> Result<(), ConfigError> {
    match fields.iter().find(|(_, value)| *value <= 0) {
        Some((name, value)) => Err(ConfigError::new(
            section,
            name,
            format!("must be positive, got {value}"),
        )),
        None => Ok(()),
    }
}

/// Attention heads must split the width evenly.
pub(crate) fn heads_divide_width(
    section: &'static str,
    width: i64,
    num_heads: i64,
) -> Result<(), ConfigError> {
    if width % num_heads == 0 {
        Ok(())
    } else {
        Err(ConfigError::new(
            section,
            "width",
            format!("{width} is not divisible by {section}.num_heads {num_heads}"),
        ))
    }
}

/// Special token ids must lie inside the vocabulary.
pub(crate) fn ids_in_vocabulary(
    section: &'static str,
    vocab_size: i64,
    ids: &[(&'static str, i64)],
) -> Result<(), ConfigError> {
    match ids.iter().find(|(_, id)| !(0..vocab_size).contains(id)) {
        Some((name, id)) => Err(ConfigError::new(
            section,
            name,
            format!("{id} is outside the vocabulary 0..{vocab_size}"),
        )),
        None => Ok(()),
    }
}

/// A dropout probability must be in [0, 1).
pub(crate) fn dropout(section: &'static str, p: f64) -> Result<(), ConfigError> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(ConfigError::new(
            section,
            "dropout",
            format!("must be in [0, 1), got {p}"),
        ))
    }
}
