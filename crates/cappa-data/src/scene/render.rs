//! Anti-aliased rendering of a scene graph with tiny-skia: a noisy gradient background written
//! directly into the pixel buffer, distractor marks, then the objects in drawing order.

use tiny_skia::{FillRule, LineCap, Paint, Path, PathBuilder, Pixmap, Stroke, Transform};

use super::{Scene, Shape};

/// Renders `scene` into a `size`×`size` RGB image.
pub(crate) fn render(scene: &Scene, size: u32) -> image::RgbImage {
    let mut pixmap = Pixmap::new(size, size).expect("image size is positive");
    fill_background(&mut pixmap, scene, size);
    let s = size as f32;

    let mut paint = Paint {
        anti_alias: true,
        ..Paint::default()
    };
    for mark in &scene.marks {
        paint.set_color_rgba8(mark.rgb[0], mark.rgb[1], mark.rgb[2], 255);
        let (x, y) = (mark.x * s, mark.y * s);
        let width = (mark.width * s).max(1.0);
        if mark.length == 0.0 {
            if let Some(path) = PathBuilder::from_circle(x, y, width * 0.5) {
                pixmap.fill_path(
                    &path,
                    &paint,
                    FillRule::Winding,
                    Transform::identity(),
                    None,
                );
            }
        } else {
            let (dx, dy) = (
                mark.angle.cos() * mark.length * s * 0.5,
                mark.angle.sin() * mark.length * s * 0.5,
            );
            let mut pb = PathBuilder::new();
            pb.move_to(x - dx, y - dy);
            pb.line_to(x + dx, y + dy);
            if let Some(path) = pb.finish() {
                let stroke = Stroke {
                    width,
                    line_cap: LineCap::Round,
                    ..Stroke::default()
                };
                pixmap.stroke_path(&path, &paint, &stroke, Transform::identity(), None);
            }
        }
    }

    for object in &scene.objects {
        let (cx, cy, r) = (object.x * s, object.y * s, object.radius * s);
        paint.set_color_rgba8(object.rgb[0], object.rgb[1], object.rgb[2], 255);
        let (path, rule) = shape_path(object.shape, cx, cy, r);
        if let Some(path) = path {
            let transform = Transform::from_rotate_at(object.rotation, cx, cy);
            pixmap.fill_path(&path, &paint, rule, transform, None);
        }
    }

    // The pixmap is opaque everywhere, so premultiplied RGBA equals plain RGBA: drop alpha.
    let data = pixmap.data();
    let mut rgb = Vec::with_capacity((size * size * 3) as usize);
    for px in data.chunks_exact(4) {
        rgb.extend_from_slice(&px[..3]);
    }
    image::RgbImage::from_raw(size, size, rgb).expect("buffer matches the image size")
}

/// Writes base colour + linear gradient + uniform noise into every pixel (opaque).
fn fill_background(pixmap: &mut Pixmap, scene: &Scene, size: u32) {
    let bg = &scene.background;
    let (gx, gy) = (bg.gradient_angle.cos(), bg.gradient_angle.sin());
    let grad = bg.gradient_strength * 255.0;
    let noise = bg.noise * 255.0;
    let inv = 1.0 / size as f32;
    // xorshift64*: cheap per-pixel noise, seeded from the scene so rendering is deterministic.
    let mut state = bg.noise_seed | 1;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let base = [bg.rgb[0] as f32, bg.rgb[1] as f32, bg.rgb[2] as f32];
    let data = pixmap.data_mut();
    for y in 0..size {
        let fy = (y as f32 + 0.5) * inv - 0.5;
        for x in 0..size {
            let fx = (x as f32 + 0.5) * inv - 0.5;
            let shade = grad * (fx * gx + fy * gy);
            let bits = next();
            // Luminance noise plus a little independent chroma noise.
            let n = noise * ((bits & 0xffff) as f32 / 32767.5 - 1.0);
            let o = ((y * size + x) * 4) as usize;
            for ch in 0..3 {
                let chroma = ((bits >> (16 + 8 * ch)) & 0xff) as f32 / 127.5 - 1.0;
                let v = base[ch] + shade + n + 0.3 * noise * chroma;
                data[o + ch] = v.clamp(0.0, 255.0) as u8;
            }
            data[o + 3] = 255;
        }
    }
}

/// A closed polygon through `n` points on a circle of radius `r`, starting at `start` radians.
fn polygon(pb: &mut PathBuilder, cx: f32, cy: f32, r: f32, n: usize, start: f32) {
    for k in 0..n {
        let a = start + k as f32 * std::f32::consts::TAU / n as f32;
        let (x, y) = (cx + r * a.cos(), cy + r * a.sin());
        if k == 0 {
            pb.move_to(x, y);
        } else {
            pb.line_to(x, y);
        }
    }
    pb.close();
}

/// The outline of a shape centred at (cx, cy) with radius r (pixels), and its fill rule.
fn shape_path(shape: Shape, cx: f32, cy: f32, r: f32) -> (Option<Path>, FillRule) {
    use std::f32::consts::{FRAC_PI_2, PI};
    let mut pb = PathBuilder::new();
    let mut rule = FillRule::Winding;
    match shape {
        Shape::Circle => pb.push_circle(cx, cy, r),
        Shape::Square => {
            let h = r * 0.85;
            polygon(&mut pb, cx, cy, h * std::f32::consts::SQRT_2, 4, PI / 4.0);
        }
        Shape::Triangle => {
            // Centroid at the centre; shifted down a little so it looks balanced.
            polygon(&mut pb, cx, cy + r * 0.1, r * 1.05, 3, -FRAC_PI_2);
        }
        Shape::Star => {
            let inner = r * 0.45;
            for k in 0..10 {
                let a = -FRAC_PI_2 + k as f32 * PI / 5.0;
                let rad = if k % 2 == 0 { r } else { inner };
                let (x, y) = (cx + rad * a.cos(), cy + rad * a.sin());
                if k == 0 {
                    pb.move_to(x, y);
                } else {
                    pb.line_to(x, y);
                }
            }
            pb.close();
        }
        Shape::Ring => {
            pb.push_circle(cx, cy, r);
            pb.push_circle(cx, cy, r * 0.55);
            rule = FillRule::EvenOdd;
        }
        Shape::Cross => {
            let (a, b) = (r * 0.3, r);
            let pts = [
                (-a, -b),
                (a, -b),
                (a, -a),
                (b, -a),
                (b, a),
                (a, a),
                (a, b),
                (-a, b),
                (-a, a),
                (-b, a),
                (-b, -a),
                (-a, -a),
            ];
            for (k, (x, y)) in pts.iter().enumerate() {
                if k == 0 {
                    pb.move_to(cx + x, cy + y);
                } else {
                    pb.line_to(cx + x, cy + y);
                }
            }
            pb.close();
        }
        Shape::Diamond => {
            let w = r * 0.75;
            pb.move_to(cx, cy - r);
            pb.line_to(cx + w, cy);
            pb.line_to(cx, cy + r);
            pb.line_to(cx - w, cy);
            pb.close();
        }
        Shape::Hexagon => polygon(&mut pb, cx, cy, r, 6, 0.0),
    }
    (pb.finish(), rule)
}
