//! Fatal data errors: problems that make a run refuse to start (or stop) instead of skipping a
//! sample. Per-sample problems are [`crate::BadSample`]s and are counted, not raised.

use std::path::PathBuf;

/// A problem with the data that the user has to fix before training or evaluation can run.
///
/// Every message names the path, pattern or field at fault and says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A path, glob or brace pattern matched no file.
    #[error(
        "no file matches `{pattern}`: check the path (relative paths start at the current \
         directory), the glob (`shards/*.tar`) or the brace range (`shards/{{00000..00099}}.tar`)"
    )]
    NoMatch { pattern: String },
    /// A pattern could not be understood (a malformed glob or brace expression).
    #[error("cannot understand the pattern `{pattern}`: {detail}")]
    BadPattern { pattern: String, detail: String },
    /// A file or directory could not be read.
    #[error("cannot read `{}`: {source}; check that it exists and is readable", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An index or annotation file does not have the expected format.
    #[error("`{}` is not in the expected format: {detail}", path.display())]
    Format { path: PathBuf, detail: String },
    /// More samples were bad than the configured threshold allows.
    #[error(
        "{bad} of {seen} samples were bad ({:.2}%), more than the allowed {:.2}%: look at the \
         logged skip reasons, repair or drop the broken files, or raise the bad-sample threshold",
        100.0 * (*bad as f64) / (*seen).max(1) as f64,
        100.0 * threshold
    )]
    TooManyBad { bad: u64, seen: u64, threshold: f64 },
}

impl DataError {
    /// An [`DataError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`DataError::Format`] for `path`.
    pub fn format(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_error_messages_name_what_is_wrong() {
        let e = DataError::NoMatch {
            pattern: "x/{0..3}.tar".into(),
        };
        assert!(e.to_string().contains("`x/{0..3}.tar`"), "{e}");
        let e = DataError::format("a.json", "missing field `caption`");
        assert!(
            e.to_string().contains("a.json") && e.to_string().contains("caption"),
            "{e}"
        );
        let e = DataError::TooManyBad {
            bad: 3,
            seen: 10,
            threshold: 0.1,
        };
        assert!(
            e.to_string().contains("30.00%") && e.to_string().contains("10.00%"),
            "{e}"
        );
    }
}
