//! Fixtures for the reader tests: tar shards written with the `tar` crate and real PNG bytes.

use std::path::Path;

/// A small valid PNG.
pub(super) fn png_bytes() -> Vec<u8> {
    let image = image::RgbImage::from_fn(4, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 60, 7]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

/// A tar member to write: a regular file, or a directory.
pub(super) enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
}

/// Writes `entries` into an in-memory tar archive.
pub(super) fn tar_bytes(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        match entry {
            Entry::File(name, data) => {
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                builder.append_data(&mut header, name, *data).unwrap();
            }
            Entry::Dir(name) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(0o755);
                builder.append_data(&mut header, name, &[][..]).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

/// Writes `bytes` to `dir/name`, creating directories, and returns the path.
pub(super) fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}
