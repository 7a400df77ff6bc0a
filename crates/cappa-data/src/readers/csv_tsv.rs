//! CSV/TSV tables in open_clip's style: one row per image with a file path column and a
//! caption column (`filepath` and `title`, tab-separated, by default).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FileRecord;
use crate::error::DataError;

/// Which columns hold what, and how fields are separated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvConfig {
    /// Column with the image path, relative to the table's directory unless absolute.
    pub path_column: String,
    /// Column with the caption.
    pub caption_column: String,
    /// Field separator (one byte).
    pub separator: u8,
}

impl Default for CsvConfig {
    fn default() -> Self {
        CsvConfig::open_clip()
    }
}

impl CsvConfig {
    /// open_clip's defaults: `filepath`, `title`, tab-separated.
    pub fn open_clip() -> Self {
        CsvConfig {
            path_column: "filepath".into(),
            caption_column: "title".into(),
            separator: b'\t',
        }
    }

    /// Comma-separated with open_clip's column names.
    pub fn comma() -> Self {
        CsvConfig {
            separator: b',',
            ..CsvConfig::open_clip()
        }
    }
}

/// Reads the index of a CSV/TSV table. The table must have a header row naming both columns
/// ([`DataError::Format`] names the file and the missing column otherwise). Keys are
/// `FILE:LINE`; metadata is `{"row": N}` (0-based data row). Rows too short to hold a column
/// get an empty value, which [`FileRecord::load`] reports as unreadable or empty.
pub fn read_csv(path: &Path, config: &CsvConfig) -> Result<Vec<FileRecord>, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(config.separator)
        .flexible(true)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                let found: Vec<&str> = headers.iter().collect();
                DataError::format(
                    path,
                    format!(
                        "no column `{name}` in the header row (found {found:?}); set the column \
                     names or the separator (currently {:?}) to match the file",
                        config.separator as char
                    ),
                )
            })
    };
    let (path_index, caption_index) = (
        column(&config.path_column)?,
        column(&config.caption_column)?,
    );
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut records = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.map_err(|e| csv_error(path, e))?;
        let file = PathBuf::from(record.get(path_index).unwrap_or(""));
        let line = record.position().map_or(row as u64 + 2, |p| p.line());
        records.push(FileRecord {
            key: format!("{}:{line}", path.display()),
            path: if file.is_absolute() {
                file
            } else {
                base.join(file)
            },
            captions: vec![record.get(caption_index).unwrap_or("").to_owned()],
            meta: serde_json::json!({ "row": row }),
        });
    }
    Ok(records)
}

fn csv_error(path: &Path, error: csv::Error) -> DataError {
    if matches!(error.kind(), csv::ErrorKind::Io(_)) {
        if let csv::ErrorKind::Io(e) = error.into_kind() {
            return DataError::io(path, e);
        }
        unreachable!("the kind was checked to be Io");
    }
    DataError::format(path, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{png_bytes, write};
    use super::super::FileSamples;
    use super::*;
    use crate::{ImageData, SkipReason};

    #[test]
    fn readers_csv_reads_open_clip_tables() {
        let dir = tempfile::tempdir().unwrap();
        let png = png_bytes();
        write(dir.path(), "img/a.png", &png);
        let absolute = write(dir.path(), "elsewhere/b.png", &png);
        let table = format!(
            "filepath\ttitle\textra\nimg/a.png\ta cat\t1\n{}\t\"a dog, quoted\"\t2\nimg/missing.png\tgone\t3\nimg/a.png\t  \t4\n",
            absolute.display()
        );
        let path = write(dir.path(), "data/../train.tsv", table.as_bytes());
        let records = read_csv(&path, &CsvConfig::default()).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(records[0].path, dir.path().join("data/../img/a.png"));
        assert_eq!(records[1].path, absolute);
        let items: Vec<_> = FileSamples::new(records).collect();
        let sample = items[0].as_ref().unwrap();
        assert_eq!(sample.captions, ["a cat"]);
        assert_eq!(sample.image, ImageData::Encoded(png));
        assert_eq!(sample.meta["row"], 0);
        assert_eq!(items[1].as_ref().unwrap().captions, ["a dog, quoted"]);
        assert_eq!(
            items[2].as_ref().unwrap_err().reason,
            SkipReason::UnreadableFile
        );
        assert_eq!(
            items[3].as_ref().unwrap_err().reason,
            SkipReason::EmptyCaption
        );

        let path = write(dir.path(), "b.csv", b"image,text\nimg/a.png,hello\n");
        let config = CsvConfig {
            path_column: "image".into(),
            caption_column: "text".into(),
            ..CsvConfig::comma()
        };
        let records = read_csv(&path, &config).unwrap();
        assert_eq!(records[0].captions, ["hello"]);
        assert_eq!(records[0].path, dir.path().join("img/a.png"));
    }

    #[test]
    fn readers_csv_missing_column_names_file_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "t.tsv", b"filepath\tcaption\na.png\tx\n");
        let err = read_csv(&path, &CsvConfig::default()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, DataError::Format { .. }), "{message}");
        assert!(
            message.contains("t.tsv") && message.contains("`title`"),
            "{message}"
        );
        let err = read_csv(&dir.path().join("none.tsv"), &CsvConfig::default()).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }), "{err}");
    }
}
