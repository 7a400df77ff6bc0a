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
    let table = Table::open(path, config.separator)?;
    let (path_index, caption_index) = (
        table.column(&config.path_column)?,
        table.column(&config.caption_column)?,
    );
    let mut records = Vec::new();
    for (row, record) in table.rows() {
        let (record, line) = record?;
        records.push(FileRecord {
            key: format!("{}:{line}", path.display()),
            path: image_path(path, record.get(path_index).unwrap_or("")),
            captions: vec![record.get(caption_index).unwrap_or("").to_owned()],
            meta: serde_json::json!({ "row": row }),
        });
    }
    Ok(records)
}

/// Reads a table of image paths with integer class labels (path relative to the table's
/// directory unless absolute), in file order. A missing column, or a label that is not a
/// non-negative integer (surrounding white space ignored), is a [`DataError::Format`]; the
/// latter names `FILE:LINE` and the value.
pub fn read_labelled_csv(
    path: &Path,
    path_column: &str,
    label_column: &str,
    separator: u8,
) -> Result<Vec<(PathBuf, i64)>, DataError> {
    let table = Table::open(path, separator)?;
    let (path_index, label_index) = (table.column(path_column)?, table.column(label_column)?);
    let mut rows = Vec::new();
    for (_, record) in table.rows() {
        let (record, line) = record?;
        let value = record.get(label_index).unwrap_or("");
        let label = match value.trim().parse::<i64>() {
            Ok(label) if label >= 0 => label,
            _ => {
                return Err(DataError::format(
                    path,
                    format!(
                        "{}:{line}: label {value:?} in column `{label_column}` is not a \
                         non-negative integer (labels index the class names, from 0)",
                        path.display()
                    ),
                ))
            }
        };
        rows.push((
            image_path(path, record.get(path_index).unwrap_or("")),
            label,
        ));
    }
    Ok(rows)
}

/// An image path from the table at `table`: relative to the table's directory unless
/// absolute.
fn image_path(table: &Path, value: &str) -> PathBuf {
    let file = PathBuf::from(value);
    if file.is_absolute() {
        file
    } else {
        table.parent().unwrap_or(Path::new("")).join(file)
    }
}

/// An open table with its header row.
struct Table<'a> {
    path: &'a Path,
    separator: u8,
    reader: csv::Reader<std::fs::File>,
    headers: csv::StringRecord,
}

impl<'a> Table<'a> {
    fn open(path: &'a Path, separator: u8) -> Result<Self, DataError> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(separator)
            .flexible(true)
            .from_path(path)
            .map_err(|e| csv_error(path, e))?;
        let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
        Ok(Table {
            path,
            separator,
            reader,
            headers,
        })
    }

    /// The index of the column `name` in the header row.
    fn column(&self, name: &str) -> Result<usize, DataError> {
        self.headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                let found: Vec<&str> = self.headers.iter().collect();
                DataError::format(
                    self.path,
                    format!(
                        "no column `{name}` in the header row (found {found:?}); set the column \
                         names or the separator (currently {:?}) to match the file",
                        self.separator as char
                    ),
                )
            })
    }

    /// The data rows with their 0-based index and 1-based line number.
    fn rows(
        self,
    ) -> impl Iterator<Item = (usize, Result<(csv::StringRecord, u64), DataError>)> + 'a {
        let path = self.path;
        self.reader
            .into_records()
            .enumerate()
            .map(move |(row, record)| {
                let item = record.map_err(|e| csv_error(path, e)).map(|record| {
                    let line = record.position().map_or(row as u64 + 2, |p| p.line());
                    (record, line)
                });
                (row, item)
            })
    }
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

    #[test]
    fn readers_labelled_csv_reads_paths_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let table = "label,extra,image\n3,x,img/a.png\n 0 ,y,/abs/b.jpg\n12,\"q, uoted\",c d.png\n";
        let path = write(dir.path(), "sub/test.csv", table.as_bytes());
        let rows = read_labelled_csv(&path, "image", "label", b',').unwrap();
        assert_eq!(
            rows,
            [
                (dir.path().join("sub/img/a.png"), 3),
                (PathBuf::from("/abs/b.jpg"), 0),
                (dir.path().join("sub/c d.png"), 12),
            ]
        );
        let tsv = write(dir.path(), "t.tsv", b"filepath\tcls\na.png\t1\n");
        assert_eq!(
            read_labelled_csv(&tsv, "filepath", "cls", b'\t').unwrap(),
            [(dir.path().join("a.png"), 1)]
        );

        let err = read_labelled_csv(&path, "image", "class", b',').unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, DataError::Format { .. }), "{message}");
        assert!(
            message.contains("test.csv") && message.contains("`class`"),
            "{message}"
        );
        for (value, line_and_value) in [
            ("-1", ":3: label \"-1\""),
            ("dog", ":3: label \"dog\""),
            ("2.0", ":3: label \"2.0\""),
            ("", ":3: label \"\""),
        ] {
            let text = format!("image,label\na.png,1\nb.png,{value}\n");
            let bad = write(dir.path(), "bad.csv", text.as_bytes());
            let err = read_labelled_csv(&bad, "image", "label", b',').unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, DataError::Format { .. }), "{message}");
            assert!(
                message.contains(&format!("bad.csv{line_and_value}")),
                "{value:?}: {message}"
            );
        }
    }
}
