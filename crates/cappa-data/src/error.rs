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
    #[error("cannot understand the pattern `{pattern}`: {problem}")]
    BadPattern {
        pattern: String,
        problem: PatternError,
    },
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

/// What is wrong with a path pattern (see [`crate::readers::expand_paths`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("`}}` without a matching `{{`")]
    UnmatchedClose,
    #[error("`{{` without a matching `}}`")]
    UnmatchedOpen,
    /// A range such as `{00000..00099}` whose bounds are not two non-negative integers.
    #[error("`{{{body}}}`: a range needs two non-negative integers")]
    BadRange { body: String },
    /// A range bound too large for a 64-bit integer.
    #[error("`{bound}`: {source}")]
    BadBound {
        bound: String,
        source: std::num::ParseIntError,
    },
    /// One range alone names more paths than the limit.
    #[error("`{{{body}}}` expands to more than {limit} paths")]
    RangeTooLong { body: String, limit: usize },
    /// The braces of the whole pattern together name more paths than the limit.
    #[error("expands to more than {limit} paths")]
    TooManyPaths { limit: usize },
    /// The glob could not be parsed.
    #[error("glob syntax error at character {position}: {message}")]
    Glob {
        position: usize,
        message: &'static str,
    },
}

impl From<glob::PatternError> for PatternError {
    fn from(error: glob::PatternError) -> Self {
        PatternError::Glob {
            position: error.pos,
            message: error.msg,
        }
    }
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

/// A JSON file's error becomes [`DataError::Io`] when the file cannot be read and
/// [`DataError::Format`] when it is not UTF-8 text or not JSON of the expected shape (the
/// detail then names the offending field).
impl From<cappa_io::FileError> for DataError {
    fn from(error: cappa_io::FileError) -> Self {
        match error {
            cappa_io::FileError::Io { path, source }
                if source.kind() != std::io::ErrorKind::InvalidData =>
            {
                DataError::Io { path, source }
            }
            // Not UTF-8, or not JSON of the expected shape: the file's format is wrong.
            error => DataError::format(error.path().to_path_buf(), error.detail()),
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

    #[test]
    fn json_file_errors_name_the_file_and_the_field() {
        #[derive(Debug, serde::Deserialize)]
        struct Outer {
            #[allow(dead_code)]
            images: Vec<Image>,
        }
        #[derive(Debug, serde::Deserialize)]
        struct Image {
            #[allow(dead_code)]
            id: u64,
        }
        let dir = tempfile::tempdir().unwrap();
        let read = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            DataError::from(cappa_io::read_json::<Outer>(&path).unwrap_err())
        };
        let error = read("a.json", br#"{"images": [{"id": 1}, {"id": "x"}]}"#);
        assert!(matches!(error, DataError::Format { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("a.json") && message.contains("field `images[1].id`"),
            "{message}"
        );
        let error = read("b.json", b"{\"images\": [\xff]}");
        assert!(matches!(error, DataError::Format { .. }), "{error}");
        let error = read("c.json", b"{\"images\": []");
        assert!(matches!(error, DataError::Format { .. }), "{error}");
        let missing = dir.path().join("missing.json");
        let error = DataError::from(cappa_io::read_json::<Outer>(&missing).unwrap_err());
        assert!(
            matches!(&error, DataError::Io { path, .. } if *path == missing),
            "{error}"
        );
    }
}
