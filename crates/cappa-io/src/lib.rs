//! Durable files for every cappa crate: atomic writes (a temporary file in the same directory,
//! fsynced, renamed into place, then the directory fsynced), JSON read and write whose errors
//! name the file and the field, and file digests (size + XXH3-128) for verifying checkpoints.
//!
//! A crash at any point of a write leaves either the old file or the complete new one, never a
//! half-written file. No libtorch here: any crate can use it.
//!
//! ```no_run
//! use std::path::Path;
//!
//! let path = Path::new("runs/demo/summary.json");
//! cappa_io::write_json(path, &serde_json::json!({"steps": 200}))?;
//! let back: serde_json::Value = cappa_io::read_json(path)?;
//! let digest = cappa_io::FileDigest::of(path)?;
//! assert_eq!(back["steps"], 200);
//! println!("{} bytes, xxh3 {}", digest.size, digest.xxh3);
//! # Ok::<(), cappa_io::FileError>(())
//! ```

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

/// A file that could not be read, written or parsed; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// Not JSON, or not JSON of the expected shape; `field` is the path of the offending
    /// field (`data.scene.image_size`), empty at the top level.
    #[error("{}: {}", path.display(), json_detail(field, source))]
    Json {
        path: PathBuf,
        field: String,
        source: serde_json::Error,
    },
}

fn json_detail(field: &str, source: &serde_json::Error) -> String {
    if field.is_empty() || field == "." {
        source.to_string()
    } else {
        format!("field `{field}`: {source}")
    }
}

impl FileError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            FileError::Io { path, .. } | FileError::Json { path, .. } => path,
        }
    }

    /// What is wrong, without the path (for errors that name the file themselves).
    pub fn detail(&self) -> String {
        match self {
            FileError::Io { source, .. } => source.to_string(),
            FileError::Json { field, source, .. } => json_detail(field, source),
        }
    }

    /// Whether the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Maps an `io::Error` on `path` to a [`FileError`].
pub fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Flushes a file's data to disk.
pub fn sync_file(path: &Path) -> Result<(), FileError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_error(path))
}

/// Flushes a directory's entries (a rename into it, a new file) to disk.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    sync_file(dir)
}

/// Writes `path` atomically: `write` fills a temporary path in the same directory (any
/// writer that takes a path, such as libtorch's savers); the temporary file is then fsynced,
/// renamed onto `path` and the directory fsynced. On an error the temporary file is removed
/// and `path` is untouched. The temporary name keeps `path`'s extension, for writers that
/// choose the format by extension.
pub fn write_atomically_with<E: From<FileError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let temp = match path.extension() {
        Some(ext) => temp.with_extension(format!(
            "{}.{}",
            temp.extension()
                .map_or(String::new(), |e| e.to_string_lossy().into_owned()),
            ext.to_string_lossy()
        )),
        None => temp,
    };
    let result = write(&temp).and_then(|()| {
        sync_file(&temp)?;
        fs::rename(&temp, path).map_err(io_error(path))?;
        sync_dir(dir).map_err(E::from)
    });
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Writes `bytes` to `path` atomically (see [`write_atomically_with`]).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_error(dir))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(io_error(temp.path()))?;
    temp.persist(path).map_err(|e| FileError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir)
}

/// Writes `value` as pretty-printed JSON (with a final newline) to `path` atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), FileError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| FileError::Json {
        path: path.to_path_buf(),
        field: String::new(),
        source,
    })?;
    text.push('\n');
    write_atomically(path, text.as_bytes())
}

/// Reads `path` as JSON of type `T`; an error names the file and the field that failed.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    parse_json(&text, path)
}

/// Parses `text` (read from `path`) as JSON of type `T`; errors as [`read_json`]'s.
pub fn parse_json<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, FileError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| FileError::Json {
            path: path.to_path_buf(),
            field: e.path().to_string(),
            source: e.into_inner(),
        })?;
    deserializer.end().map_err(|source| FileError::Json {
        path: path.to_path_buf(),
        field: String::new(),
        source,
    })?;
    Ok(value)
}

/// A file's size and content hash (XXH3-128, lower-case hex), as a checkpoint manifest
/// records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub size: u64,
    pub xxh3: String,
}

impl FileDigest {
    /// Reads `path` once, streaming.
    pub fn of(path: &Path) -> Result<Self, FileError> {
        let mut file = File::open(path).map_err(io_error(path))?;
        let mut hasher = Xxh3::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buffer).map_err(io_error(path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            size += n as u64;
        }
        Ok(FileDigest {
            size,
            xxh3: format!("{:032x}", hasher.digest128()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_errors_name_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_json(&path, &serde_json::json!({"outer": {"n": 3}})).unwrap();
        let back: serde_json::Value = read_json(&path).unwrap();
        assert_eq!(back["outer"]["n"], 3);

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            outer: Inner,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            n: String,
        }
        let error = read_json::<Outer>(&path).unwrap_err().to_string();
        assert!(error.contains("a.json"), "{error}");
        assert!(error.contains("field `outer.n`"), "{error}");
        let missing = read_json::<Outer>(&dir.path().join("none.json")).unwrap_err();
        assert!(missing.is_not_found());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        write_atomically(&path, b"old").unwrap();
        let result: Result<(), FileError> = write_atomically_with(&path, |temp| {
            assert_eq!(temp.extension().unwrap(), "safetensors");
            fs::write(temp, b"half").map_err(io_error(temp))?;
            Err(io_error(temp)(io::Error::other("disk full")))
        });
        assert!(result.unwrap_err().to_string().contains("disk full"));
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn digests_see_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut bytes = vec![7u8; 3 << 20];
        fs::write(&path, &bytes).unwrap();
        let a = FileDigest::of(&path).unwrap();
        assert_eq!(a.size, 3 << 20);
        assert_eq!(a.xxh3.len(), 32);
        bytes[(2 << 20) + 5] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let b = FileDigest::of(&path).unwrap();
        assert_eq!(a.size, b.size);
        assert_ne!(a.xxh3, b.xxh3);
        // The streaming hash equals the one-shot hash of the same bytes.
        let one_shot = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes));
        assert_eq!(b.xxh3, one_shot);
    }
}
