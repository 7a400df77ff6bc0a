//! Checks shared by the model configurations' `validate` methods. Messages name the field as
//! it is written in a configuration file (`vit.width`, `decoder.eos_id`).

/// Every `(field, value)` must be positive.
pub(crate) fn positive(section: &str, fields: &[(&str, i64)]) -> Result<(), String> {
    match fields.iter().find(|(_, value)| *value <= 0) {
        Some((name, value)) => Err(format!("{section}.{name} must be positive, got {value}")),
        None => Ok(()),
    }
}

/// Attention heads must split the width evenly.
pub(crate) fn heads_divide_width(section: &str, width: i64, num_heads: i64) -> Result<(), String> {
    if width % num_heads == 0 {
        Ok(())
    } else {
        Err(format!(
            "{section}.width {width} is not divisible by {section}.num_heads {num_heads}"
        ))
    }
}

/// Special token ids must lie inside the vocabulary.
pub(crate) fn ids_in_vocabulary(
    section: &str,
    vocab_size: i64,
    ids: &[(&str, i64)],
) -> Result<(), String> {
    match ids.iter().find(|(_, id)| !(0..vocab_size).contains(id)) {
        Some((name, id)) => Err(format!(
            "{section}.{name} {id} is outside the vocabulary 0..{vocab_size}"
        )),
        None => Ok(()),
    }
}

/// A dropout probability must be in [0, 1).
pub(crate) fn dropout(section: &str, p: f64) -> Result<(), String> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(format!("{section}.dropout must be in [0, 1), got {p}"))
    }
}
