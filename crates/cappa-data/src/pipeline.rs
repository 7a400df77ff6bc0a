//! The image pipeline: decoding encoded images to 8-bit RGB, the training and evaluation
//! transforms, and normalisation into a `(3, H, W)` float layout.
//!
//! Decoding uses the pure-Rust `image` crate (JPEG, PNG, WebP). Every colour layout is
//! converted to 8-bit RGB: grey is replicated, 16-bit samples are scaled to 8 bits, palettes
//! are expanded, CMYK JPEGs are converted by the decoder, and **alpha is dropped** (not
//! composited) so that the pixels equal what PIL's `convert("RGB")` and TensorFlow's
//! `decode_image(channels=3)` give the reference pipelines. EXIF orientation is applied.
//! Width × height is checked against [`DecodeLimits`] from the header, before any pixel is
//! decoded.
//!
//! Resizing uses `fast_image_resize` with a bilinear convolution filter, which is what PIL's
//! (and therefore torchvision's) `BILINEAR` does: it widens the filter support when
//! downsampling, so it is anti-aliased. The CapPa reference (big_vision, `tf.image.resize`
//! bilinear without anti-aliasing) differs slightly when shrinking a lot; this is a deliberate
//! deviation in favour of the anti-aliased result.
//!
//! ```no_run
//! # use cappa_data::pipeline::*;
//! # use cappa_data::ImageData;
//! # use rand::SeedableRng;
//! # let bytes: Vec<u8> = vec![];
//! let image = decode(&ImageData::Encoded(bytes), &DecodeLimits::default()).unwrap();
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! let view = TrainTransform::cappa(224).apply(&image, &mut rng);
//! let mut out = vec![0.0f32; 3 * 224 * 224];
//! write_chw(&view, Normalize::MinusOneToOne, &mut out);
//! ```

use std::cell::RefCell;
use std::io::Cursor;

use fast_image_resize::images::Image as FirImage;
use fast_image_resize::images::ImageRef as FirImageRef;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageError, ImageReader, RgbImage};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::sample::{ImageData, SkipReason};

/// Limits checked before an image's pixels are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeLimits {
    /// Largest accepted width × height; larger images are skipped as
    /// [`SkipReason::ImageTooLarge`] (decompression-bomb protection).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    /// 64 megapixels (for example 8192 × 8192).
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 64 * 1024 * 1024,
        }
    }
}

/// Decodes an image to 8-bit RGB with its EXIF orientation applied.
///
/// [`ImageData::Rgb`] is returned as is (cloned). Zero bytes give
/// [`SkipReason::EmptyImage`], an image whose header claims more than `limits.max_pixels`
/// pixels gives [`SkipReason::ImageTooLarge`] without decoding its pixels, and anything that
/// cannot be decoded gives [`SkipReason::UndecodableImage`].
pub fn decode(image: &ImageData, limits: &DecodeLimits) -> Result<RgbImage, SkipReason> {
    match image {
        ImageData::Rgb(rgb) => Ok(rgb.clone()),
        ImageData::Encoded(bytes) => decode_bytes(bytes, limits),
    }
}

/// Decodes encoded bytes; see [`decode`].
pub fn decode_bytes(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, SkipReason> {
    if bytes.is_empty() {
        return Err(SkipReason::EmptyImage);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| SkipReason::UndecodableImage)?;
    // The pixel limit below is ours; the allocation limit only has to admit what it allows
    // (the largest layout is RGBA with 16 bits per sample, 8 bytes per pixel).
    let mut image_limits = image::Limits::no_limits();
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(image_limits);
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(SkipReason::ImageTooLarge);
    }
    if width == 0 || height == 0 {
        return Err(SkipReason::UndecodableImage);
    }
    // A broken EXIF block is not worth losing the image for.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut dynamic = DynamicImage::from_decoder(decoder).map_err(classify)?;
    dynamic.apply_orientation(orientation);
    Ok(match dynamic {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    })
}

fn classify(error: ImageError) -> SkipReason {
    match error {
        ImageError::Limits(_) => SkipReason::ImageTooLarge,
        _ => SkipReason::UndecodableImage,
    }
}

/// How a training view is cut from the image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Crop {
    /// Plain resize of the whole image to `size × size`, ignoring the aspect ratio (the CapPa
    /// reference).
    Resize,
    /// torchvision's `RandomResizedCrop`: a crop with a random fraction `scale` of the area
    /// and a random aspect ratio, log-uniform in `ratio`, resized to `size × size`. After ten
    /// failed attempts it falls back to a centre crop clamped to `ratio`, as torchvision does.
    RandomResizedCrop {
        scale: (f64, f64),
        ratio: (f64, f64),
    },
}

impl Crop {
    /// torchvision's defaults: scale (0.08, 1), ratio (3/4, 4/3).
    pub fn random_resized_crop_default() -> Crop {
        Crop::RandomResizedCrop {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

/// The random training transform: crop, resize to `size × size`, optional horizontal flip.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainTransform {
    /// Side of the square output in pixels.
    pub size: u32,
    pub crop: Crop,
    /// Mirror left-right with probability 1/2.
    pub hflip: bool,
}

impl TrainTransform {
    /// The CapPa reference: plain resize, no flip.
    pub fn cappa(size: u32) -> Self {
        TrainTransform {
            size,
            crop: Crop::Resize,
            hflip: false,
        }
    }

    /// open_clip's training default: random resized crop with scale (0.9, 1), no flip.
    pub fn open_clip(size: u32) -> Self {
        TrainTransform {
            size,
            crop: Crop::RandomResizedCrop {
                scale: (0.9, 1.0),
                ratio: (3.0 / 4.0, 4.0 / 3.0),
            },
            hflip: false,
        }
    }

    /// Applies the transform. The random draws (crop first, then flip) depend only on `rng`
    /// and the image size, so a seeded generator gives the same view every time.
    pub fn apply(&self, image: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let (width, height) = image.dimensions();
        let crop = match self.crop {
            Crop::Resize => CropBox::full(width, height),
            Crop::RandomResizedCrop { scale, ratio } => {
                random_resized_crop_box(width, height, scale, ratio, rng)
            }
        };
        let mut out = resize_crop(image, crop, self.size, self.size);
        if self.hflip && rng.random_bool(0.5) {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        out
    }
}

/// The deterministic evaluation transform: resize the shorter side to
/// `size / crop_fraction`, then take the centre `size × size` crop.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalTransform {
    /// Side of the square output in pixels.
    pub size: u32,
    /// Fraction of the resized shorter side kept, in (0, 1]; 0.875 is the ImageNet habit and
    /// 1.0 keeps the whole shorter side (open_clip).
    pub crop_fraction: f64,
}

impl EvalTransform {
    /// The ImageNet habit: crop fraction 0.875 (resize to 256, crop 224).
    pub fn imagenet(size: u32) -> Self {
        EvalTransform {
            size,
            crop_fraction: 0.875,
        }
    }

    /// open_clip's evaluation: resize the shorter side to `size`, centre crop.
    pub fn open_clip(size: u32) -> Self {
        EvalTransform {
            size,
            crop_fraction: 1.0,
        }
    }

    /// Applies the transform.
    ///
    /// The crop is computed in source coordinates (the centre region that the resized image
    /// would keep) and resized in one pass, so there is no intermediate image and no rounding
    /// of the intermediate size.
    ///
    /// # Panics
    /// If `crop_fraction` is not in (0, 1].
    pub fn apply(&self, image: &RgbImage) -> RgbImage {
        assert!(
            self.crop_fraction > 0.0 && self.crop_fraction <= 1.0,
            "EvalTransform: crop_fraction must be in (0, 1], got {}",
            self.crop_fraction
        );
        let (width, height) = image.dimensions();
        let short = f64::from(width.min(height));
        // The resized shorter side is size / crop_fraction, of which `size` is kept: in
        // source pixels that is short * crop_fraction.
        let side = short * self.crop_fraction;
        let crop = CropBox {
            left: (f64::from(width) - side) / 2.0,
            top: (f64::from(height) - side) / 2.0,
            width: side,
            height: side,
        };
        resize_crop(image, crop, self.size, self.size)
    }
}

/// A crop rectangle in source pixels (fractional positions are allowed).
#[derive(Debug, Clone, Copy, PartialEq)]
struct CropBox {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

impl CropBox {
    fn full(width: u32, height: u32) -> Self {
        CropBox {
            left: 0.0,
            top: 0.0,
            width: f64::from(width),
            height: f64::from(height),
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params`, with Python's round-half-to-even and
/// `randint`'s inclusive bounds.
fn random_resized_crop_box(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl Rng,
) -> CropBox {
    let area = f64::from(width) * f64::from(height);
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if w > 0.0 && w <= f64::from(width) && h > 0.0 && h <= f64::from(height) {
            let (w, h) = (w as u32, h as u32);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return CropBox {
                left: f64::from(left),
                top: f64::from(top),
                width: f64::from(w),
                height: f64::from(h),
            };
        }
    }
    // Fallback: a centre crop whose aspect ratio is clamped to `ratio`.
    let (fw, fh) = (f64::from(width), f64::from(height));
    let in_ratio = fw / fh;
    let (min_ratio, max_ratio) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < min_ratio {
        (
            width,
            ((fw / min_ratio).round_ties_even() as u32).clamp(1, height),
        )
    } else if in_ratio > max_ratio {
        (
            ((fh * max_ratio).round_ties_even() as u32).clamp(1, width),
            height,
        )
    } else {
        (width, height)
    };
    CropBox {
        left: f64::from((width - w) / 2),
        top: f64::from((height - h) / 2),
        width: f64::from(w),
        height: f64::from(h),
    }
}

/// A uniform draw in `[lo, hi)`, or `lo` when the range is empty (torch's `uniform_` accepts
/// `lo == hi`).
fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        rng.random_range(lo..hi)
    } else {
        lo
    }
}

thread_local! {
    // A resizer keeps scratch buffers between calls; one per thread avoids reallocating them.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Cuts `crop` out of `image` and resizes it to `width × height` with a bilinear convolution.
fn resize_crop(image: &RgbImage, crop: CropBox, width: u32, height: u32) -> RgbImage {
    let (src_width, src_height) = image.dimensions();
    let mut out = RgbImage::new(width, height);
    if width == 0 || height == 0 || src_width == 0 || src_height == 0 {
        return out;
    }
    let src = FirImageRef::new(src_width, src_height, image.as_raw(), PixelType::U8x3)
        .expect("an RgbImage buffer holds width * height * 3 bytes");
    let mut dst = FirImage::from_slice_u8(width, height, &mut out, PixelType::U8x3)
        .expect("an RgbImage buffer holds width * height * 3 bytes");
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(crop.left, crop.top, crop.width, crop.height);
    RESIZER.with(|resizer| {
        resizer
            .borrow_mut()
            .resize(&src, &mut dst, &options)
            .expect("source and destination are both U8x3 and non-empty");
    });
    out
}

/// Resizes a whole image to `width × height` (bilinear convolution, aspect ratio ignored).
pub fn resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (src_width, src_height) = image.dimensions();
    resize_crop(image, CropBox::full(src_width, src_height), width, height)
}

/// How 8-bit pixel values become floats.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Normalize {
    /// `x / 127.5 - 1`, so 0 → -1 and 255 → 1 (CapPa, big_vision's `value_range(-1, 1)`).
    MinusOneToOne,
    /// `(x / 255 - mean[c]) / std[c]` per channel (torchvision's `Normalize` after
    /// `ToTensor`).
    MeanStd { mean: [f32; 3], std: [f32; 3] },
}

impl Normalize {
    /// OpenAI CLIP's mean and standard deviation.
    pub fn clip() -> Self {
        Normalize::MeanStd {
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        }
    }

    /// The value each 8-bit level maps to, per channel.
    fn tables(self) -> [[f32; 256]; 3] {
        let mut tables = [[0.0f32; 256]; 3];
        for (channel, table) in tables.iter_mut().enumerate() {
            for (level, value) in table.iter_mut().enumerate() {
                let x = level as f32;
                *value = match self {
                    Normalize::MinusOneToOne => x / 127.5 - 1.0,
                    Normalize::MeanStd { mean, std } => (x / 255.0 - mean[channel]) / std[channel],
                };
            }
        }
        tables
    }
}

/// Writes `image` normalised into `out` in `(3, H, W)` order (channel planes R, G, B).
///
/// # Panics
/// If `out.len() != 3 * H * W`.
pub fn write_chw(image: &RgbImage, normalize: Normalize, out: &mut [f32]) {
    let (width, height) = image.dimensions();
    let plane = width as usize * height as usize;
    assert_eq!(
        out.len(),
        3 * plane,
        "write_chw: output slice has {} floats, a 3x{height}x{width} image needs {}",
        out.len(),
        3 * plane
    );
    let tables = normalize.tables();
    let (red, rest) = out.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    for (i, pixel) in image.as_raw().chunks_exact(3).enumerate() {
        red[i] = tables[0][usize::from(pixel[0])];
        green[i] = tables[1][usize::from(pixel[1])];
        blue[i] = tables[2][usize::from(pixel[2])];
    }
}

/// Stacks equally sized images into a `(B, 3, H, W)` float tensor on the CPU.
///
/// # Panics
/// If the images differ in size.
pub fn to_tensor(images: &[RgbImage], normalize: Normalize) -> tch::Tensor {
    let (width, height) = images.first().map_or((0, 0), |image| image.dimensions());
    let per_image = 3 * width as usize * height as usize;
    let mut data = vec![0.0f32; per_image * images.len()];
    for (image, out) in images.iter().zip(data.chunks_exact_mut(per_image.max(1))) {
        assert_eq!(
            image.dimensions(),
            (width, height),
            "to_tensor: images differ in size"
        );
        write_chw(image, normalize, out);
    }
    tch::Tensor::from_slice(&data).view([
        images.len() as i64,
        3,
        i64::from(height),
        i64::from(width),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::codecs::webp::WebPEncoder;
    use image::{GrayAlphaImage, GrayImage, ImageBuffer, ImageFormat, Rgb, RgbaImage};
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    fn decode_ok(bytes: Vec<u8>) -> RgbImage {
        decode(&ImageData::Encoded(bytes), &DecodeLimits::default()).unwrap()
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }

    /// A zlib stream with one stored (uncompressed) block.
    fn zlib_stored(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x78, 0x01, 0x01];
        let len = data.len() as u16;
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend(data);
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in data {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        out.extend(((b << 16) | a).to_be_bytes());
        out
    }

    /// A PNG built by hand: `ihdr` is width, height, bit depth, colour type.
    fn handmade_png(
        width: u32,
        height: u32,
        color_type: u8,
        chunks: &[(&[u8; 4], Vec<u8>)],
    ) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend(width.to_be_bytes());
        ihdr.extend(height.to_be_bytes());
        ihdr.extend([8, color_type, 0, 0, 0]);
        png_chunk(&mut out, b"IHDR", &ihdr);
        for (kind, data) in chunks {
            png_chunk(&mut out, kind, data);
        }
        png_chunk(&mut out, b"IEND", &[]);
        out
    }

    #[test]
    fn grey_grey_alpha_and_rgba_become_rgb() {
        let grey = GrayImage::from_raw(2, 1, vec![10, 200]).unwrap();
        let rgb = decode_ok(encode(grey.into(), ImageFormat::Png));
        assert_eq!(rgb.as_raw(), &[10, 10, 10, 200, 200, 200]);

        let grey_alpha = GrayAlphaImage::from_raw(2, 1, vec![50, 0, 60, 255]).unwrap();
        let rgb = decode_ok(encode(grey_alpha.into(), ImageFormat::Png));
        assert_eq!(rgb.as_raw(), &[50, 50, 50, 60, 60, 60], "alpha is dropped");

        let rgba = RgbaImage::from_raw(2, 1, vec![10, 20, 30, 0, 40, 50, 60, 128]).unwrap();
        let rgb = decode_ok(encode(rgba.into(), ImageFormat::Png));
        assert_eq!(rgb.as_raw(), &[10, 20, 30, 40, 50, 60], "alpha is dropped");
    }

    #[test]
    fn sixteen_bit_pngs_scale_to_eight_bits() {
        let rgb16: ImageBuffer<Rgb<u16>, Vec<u16>> =
            ImageBuffer::from_raw(1, 1, vec![65535, 0, 257 * 100]).unwrap();
        let rgb = decode_ok(encode(rgb16.into(), ImageFormat::Png));
        assert_eq!(rgb.as_raw(), &[255, 0, 100]);

        let grey16: ImageBuffer<image::Luma<u16>, Vec<u16>> =
            ImageBuffer::from_raw(1, 1, vec![257 * 7]).unwrap();
        let rgb = decode_ok(encode(grey16.into(), ImageFormat::Png));
        assert_eq!(rgb.as_raw(), &[7, 7, 7]);
    }

    #[test]
    fn palette_png_expands_to_its_colours() {
        let palette = vec![255, 0, 0, 0, 0, 255, 9, 8, 7];
        // One row: filter byte 0, then indices 0, 1, 2.
        let idat = zlib_stored(&[0, 0, 1, 2]);
        let transparency = vec![255, 0];
        let png = handmade_png(
            3,
            1,
            3,
            &[(b"PLTE", palette), (b"tRNS", transparency), (b"IDAT", idat)],
        );
        let rgb = decode_ok(png);
        assert_eq!(rgb.as_raw(), &[255, 0, 0, 0, 0, 255, 9, 8, 7]);
    }

    #[test]
    fn cmyk_jpeg_becomes_rgb() {
        // An 8x8 magenta CMYK JPEG (C=0, M=255, Y=0, K=0) written by Pillow, with its Adobe
        // marker; the image crate cannot write CMYK JPEGs itself.
        let bytes = include_bytes!("../tests/data/cmyk_magenta_8x8.jpg").to_vec();
        let rgb = decode_ok(bytes);
        assert_eq!(rgb.dimensions(), (8, 8));
        for pixel in rgb.pixels() {
            let expected = [255u8, 0, 255];
            for (got, want) in pixel.0.iter().zip(expected) {
                assert!(got.abs_diff(want) <= 8, "pixel {pixel:?}, expected magenta");
            }
        }
    }

    #[test]
    fn webp_and_rgb_pass() {
        let image = RgbImage::from_raw(2, 1, vec![1, 2, 3, 250, 251, 252]).unwrap();
        let mut bytes = Vec::new();
        WebPEncoder::new_lossless(&mut bytes)
            .encode(image.as_raw(), 2, 1, image::ExtendedColorType::Rgb8)
            .unwrap();
        assert_eq!(decode_ok(bytes), image);
        let passed = decode(
            &ImageData::Rgb(image.clone()),
            &DecodeLimits { max_pixels: 1 },
        );
        assert_eq!(passed, Ok(image));
    }

    /// Inserts an EXIF APP1 segment carrying `orientation` right after the JPEG's SOI marker.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08".to_vec();
        tiff.extend(1u16.to_be_bytes()); // One IFD entry.
        tiff.extend(0x0112u16.to_be_bytes()); // Orientation tag.
        tiff.extend(3u16.to_be_bytes()); // Type SHORT.
        tiff.extend(1u32.to_be_bytes()); // Count.
        tiff.extend(orientation.to_be_bytes());
        tiff.extend([0, 0]); // Value padding.
        tiff.extend(0u32.to_be_bytes()); // No next IFD.
        let mut payload = b"Exif\x00\x00".to_vec();
        payload.extend(tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend([0xff, 0xe1]);
        out.extend(((payload.len() + 2) as u16).to_be_bytes());
        out.extend(payload);
        out.extend(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_six_rotates_clockwise() {
        // Left pixel black, right pixel white.
        let image = RgbImage::from_raw(2, 1, vec![0, 0, 0, 255, 255, 255]).unwrap();
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 100)
            .encode_image(&image)
            .unwrap();
        let plain = decode_ok(jpeg.clone());
        assert_eq!(plain.dimensions(), (2, 1));

        let rotated = decode_ok(with_exif_orientation(&jpeg, 6));
        assert_eq!(rotated.dimensions(), (1, 2));
        // A quarter turn clockwise puts the left pixel on top.
        assert!(
            rotated.get_pixel(0, 0).0.iter().all(|&v| v < 40),
            "{rotated:?}"
        );
        assert!(
            rotated.get_pixel(0, 1).0.iter().all(|&v| v > 215),
            "{rotated:?}"
        );
    }

    #[test]
    fn pixel_limit_refuses_bombs_from_the_header() {
        // A 100000 x 100000 RGB PNG header with a token IDAT: decoding it would need 30 GB.
        let png = handmade_png(
            100_000,
            100_000,
            2,
            &[(b"IDAT", zlib_stored(&[0, 1, 2, 3]))],
        );
        let result = decode(&ImageData::Encoded(png), &DecodeLimits::default());
        assert_eq!(result, Err(SkipReason::ImageTooLarge));

        let small = encode(RgbImage::new(4, 4).into(), ImageFormat::Png);
        let limits = DecodeLimits { max_pixels: 15 };
        assert_eq!(
            decode(&ImageData::Encoded(small.clone()), &limits),
            Err(SkipReason::ImageTooLarge)
        );
        let limits = DecodeLimits { max_pixels: 16 };
        assert!(decode(&ImageData::Encoded(small), &limits).is_ok());
    }

    #[test]
    fn empty_garbage_and_truncated_bytes_are_skipped_with_their_reason() {
        let limits = DecodeLimits::default();
        let check = |bytes: Vec<u8>, reason| {
            assert_eq!(decode(&ImageData::Encoded(bytes), &limits), Err(reason));
        };
        check(Vec::new(), SkipReason::EmptyImage);
        check(
            b"this is not an image at all".to_vec(),
            SkipReason::UndecodableImage,
        );
        let png = encode(RgbImage::new(16, 16).into(), ImageFormat::Png);
        check(png[..png.len() / 2].to_vec(), SkipReason::UndecodableImage);
        let mut jpeg = Vec::new();
        JpegEncoder::new(&mut jpeg)
            .encode_image(&RgbImage::new(16, 16))
            .unwrap();
        check(jpeg[..20].to_vec(), SkipReason::UndecodableImage);
    }

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    proptest! {
        #[test]
        fn random_resized_crop_stays_in_bounds(
            width in 1u32..400,
            height in 1u32..400,
            seed in any::<u64>(),
            lo in 0.01f64..1.0,
        ) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let crop = random_resized_crop_box(width, height, (lo, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            prop_assert!(crop.left >= 0.0 && crop.top >= 0.0);
            prop_assert!(crop.width >= 1.0 && crop.height >= 1.0);
            prop_assert!(crop.left + crop.width <= f64::from(width));
            prop_assert!(crop.top + crop.height <= f64::from(height));
        }
    }

    #[test]
    fn random_resized_crop_is_deterministic_per_seed_and_sized() {
        let image = gradient(97, 61);
        let transform = TrainTransform {
            size: 32,
            crop: Crop::random_resized_crop_default(),
            hflip: true,
        };
        let run = |seed| transform.apply(&image, &mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        assert_eq!(run(5).dimensions(), (32, 32));
    }

    #[test]
    fn random_resized_crop_falls_back_to_a_clamped_centre_crop() {
        // No crop of more than the whole area exists, so all ten attempts fail.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let crop = random_resized_crop_box(100, 50, (2.0, 3.0), (1.0, 1.0), &mut rng);
        assert_eq!(
            crop,
            CropBox {
                left: 25.0,
                top: 0.0,
                width: 50.0,
                height: 50.0
            }
        );
        let crop = random_resized_crop_box(40, 50, (2.0, 3.0), (0.5, 2.0), &mut rng);
        assert_eq!(crop, CropBox::full(40, 50));
    }

    #[test]
    fn resize_and_eval_give_exact_sizes_and_keep_flat_colours() {
        let flat = RgbImage::from_pixel(123, 45, Rgb([10, 100, 200]));
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let resized = TrainTransform::cappa(224).apply(&flat, &mut rng);
        assert_eq!(resized.dimensions(), (224, 224));
        assert!(resized.pixels().all(|p| p.0 == [10, 100, 200]));
        let eval = EvalTransform::imagenet(32).apply(&gradient(80, 60));
        assert_eq!(eval.dimensions(), (32, 32));
        assert_eq!(resize(&flat, 7, 9).dimensions(), (7, 9));
    }

    #[test]
    fn eval_crop_takes_the_centre() {
        // Left third red, middle third green, right third blue: a full-height centre crop
        // of a 3:1 image is all green.
        let image = RgbImage::from_fn(300, 100, |x, _| match x / 100 {
            0 => Rgb([255, 0, 0]),
            1 => Rgb([0, 255, 0]),
            _ => Rgb([0, 0, 255]),
        });
        let out = EvalTransform::open_clip(10).apply(&image);
        // The anti-aliasing filter may read one output pixel's worth beyond the crop box, so
        // the border columns are only mostly green.
        for (x, _, pixel) in out.enumerate_pixels() {
            if (1..9).contains(&x) {
                assert_eq!(pixel.0, [0, 255, 0], "{out:?}");
            } else {
                assert!(
                    pixel.0[1] > 128 && pixel.0[0] < 128 && pixel.0[2] < 128,
                    "{out:?}"
                );
            }
        }
    }

    #[test]
    fn hflip_mirrors() {
        let square = gradient(5, 5);
        let mirrored = image::imageops::flip_horizontal(&square);
        let transform = TrainTransform {
            size: 5,
            crop: Crop::Resize,
            hflip: true,
        };
        let mut seen = (false, false);
        for seed in 0..32 {
            let out = transform.apply(&square, &mut ChaCha8Rng::seed_from_u64(seed));
            if out == square {
                seen.0 = true;
            } else {
                assert_eq!(out, mirrored);
                seen.1 = true;
            }
        }
        assert_eq!(seen, (true, true), "both outcomes occur over 32 seeds");
    }

    #[test]
    fn normalisation_values_and_chw_layout() {
        let image = RgbImage::from_raw(2, 1, vec![0, 255, 51, 255, 0, 102]).unwrap();
        let mut out = [0.0f32; 6];
        write_chw(&image, Normalize::MinusOneToOne, &mut out);
        // Planes: R = [0, 255], G = [255, 0], B = [51, 102].
        let expected = [
            -1.0,
            1.0,
            1.0,
            -1.0,
            51.0 / 127.5 - 1.0,
            102.0 / 127.5 - 1.0,
        ];
        for (got, want) in out.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{out:?}");
        }
        let normalize = Normalize::MeanStd {
            mean: [0.5, 0.0, 0.2],
            std: [0.25, 1.0, 0.1],
        };
        write_chw(&image, normalize, &mut out);
        // R: (0 - 0.5) / 0.25, (1 - 0.5) / 0.25; G: 1, 0; B: (0.2 - 0.2) / 0.1, (0.4 - 0.2) / 0.1.
        let expected = [-2.0, 2.0, 1.0, 0.0, 0.0, 2.0];
        for (got, want) in out.iter().zip(expected) {
            assert!((got - want).abs() < 1e-5, "{out:?}");
        }
    }

    #[test]
    fn to_tensor_stacks_batches() {
        let images = vec![RgbImage::from_pixel(4, 3, Rgb([255, 0, 0])); 2];
        let tensor = to_tensor(&images, Normalize::MinusOneToOne);
        assert_eq!(tensor.size(), vec![2, 3, 3, 4]);
        assert_eq!(tensor.kind(), tch::Kind::Float);
        assert_eq!(
            tensor
                .get(1)
                .get(0)
                .mean(tch::Kind::Float)
                .double_value(&[]),
            1.0
        );
        assert_eq!(
            tensor
                .get(1)
                .get(1)
                .mean(tch::Kind::Float)
                .double_value(&[]),
            -1.0
        );
    }

    #[test]
    fn configs_round_trip_and_reject_unknown_fields() {
        let transform = TrainTransform::open_clip(224);
        let json = serde_json::to_string(&transform).unwrap();
        assert_eq!(
            serde_json::from_str::<TrainTransform>(&json).unwrap(),
            transform
        );
        let normalize: Normalize = serde_json::from_str("\"minus_one_to_one\"").unwrap();
        assert_eq!(normalize, Normalize::MinusOneToOne);
        let bad = r#"{"size": 224, "crop": "resize", "hflip": false, "flip": true}"#;
        assert!(serde_json::from_str::<TrainTransform>(bad).is_err());
        let bad = r#"{"size": 224, "crop_fraction": 0.875, "extra": 1}"#;
        assert!(serde_json::from_str::<EvalTransform>(bad).is_err());
    }
}
