//! Helpers shared by the cappa-data integration tests: real PNG images and tar shards.
#![allow(dead_code, unreachable_pub)]

use std::io::Cursor;
use std::path::{Path, PathBuf};

pub fn png(seed: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(20, 12, |x, y| {
        image::Rgb([
            (x * 13 + seed * 7) as u8,
            (y * 17 + seed) as u8,
            (seed * 31) as u8,
        ])
    });
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    bytes
}

pub fn caption(i: u32) -> String {
    let colours = ["red", "green", "blue", "yellow"];
    let shapes = ["circle", "square", "star"];
    format!(
        "a {} {} number {i}",
        colours[i as usize % 4],
        shapes[i as usize % 3]
    )
}

/// Writes `shards` tar files of `per_shard` samples; `bad` lists global indices whose image
/// is garbage bytes.
pub fn write_shards(dir: &Path, shards: u32, per_shard: u32, bad: &[u32]) -> Vec<PathBuf> {
    (0..shards)
        .map(|s| {
            let path = dir.join(format!("{s:05}.tar"));
            let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
            for j in 0..per_shard {
                let i = s * per_shard + j;
                let image = if bad.contains(&i) {
                    b"not an image".to_vec()
                } else {
                    png(i)
                };
                for (name, data) in [
                    (format!("{i:09}.png"), image),
                    (format!("{i:09}.txt"), caption(i).into_bytes()),
                ] {
                    let mut header = tar::Header::new_gnu();
                    header.set_size(data.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    builder
                        .append_data(&mut header, name, data.as_slice())
                        .unwrap();
                }
            }
            builder.finish().unwrap();
            path
        })
        .collect()
}
