//! PNG plots of the experiments' reports, drawn with plotters into an RGB buffer and written
//! with the `image` crate (atomically): loss curves, grouped bars with seed spread, log-log
//! scaling curves and a grid of images with their captions. Text uses the Ubuntu Light face
//! bundled by `epaint_default_fonts`, so no system font is needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use image::RgbImage;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// The family name the bundled font is registered under.
const FONT: &str = "sans-serif";

/// Point sizes of a figure's title, a panel's caption and tick labels and legends.
const TITLE_SIZE: u32 = 22;
const CAPTION_SIZE: u32 = 17;
const LABEL_SIZE: u32 = 13;

/// Line plots: at most this many panels side by side, each this large (pixels), under a
/// title band of this height (the figure is [`LINE_TITLE_BAND`] taller than its panels).
const MAX_PANEL_COLUMNS: usize = 3;
const PANEL_SIZE: (u32, u32) = (460, 360);
const LINE_TITLE_BAND: u32 = 60;

/// A line shows a marker on each point when it has at most this many.
const MAX_MARKED_POINTS: usize = 12;

/// Bar charts: each bar's width in pixels (the chart is at least [`MIN_BAR_CHART_WIDTH`] and
/// at most [`MAX_BAR_CHART_WIDTH`] wide), the fraction of a group's slot its bars fill and
/// the gap before them.
const BAR_PIXELS: u32 = 34;
const MIN_BAR_CHART_WIDTH: u32 = 700;
const MAX_BAR_CHART_WIDTH: u32 = 2400;
const BAR_CHART_HEIGHT: u32 = 520;
const GROUP_FILL: f64 = 0.8;
const GROUP_GAP: f64 = 0.1;

/// Characters per line of a bar group's label under the axis.
const GROUP_LABEL_CHARS: usize = 14;

/// One colour per series, in a fixed order (CLIP, Cap, CapPa, SigLIP, …).
pub fn series_colour(index: usize) -> RGBColor {
    const PALETTE: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(214, 39, 40),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    PALETTE[index % PALETTE.len()]
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
            .unwrap_or_else(|_| panic!("the bundled Ubuntu Light font parses"));
    });
}

fn plot_error(e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// Draws on a white `width`×`height` canvas and writes it to `path` as PNG.
fn draw_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    register_font();
    let mut buffer = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        draw(&root)?;
        root.present().map_err(plot_error)?;
    }
    let image = RgbImage::from_raw(width, height, buffer).expect("buffer of the canvas size");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    cappa_io::write_atomically_with(path, |temp| {
        image
            .save_with_format(temp, image::ImageFormat::Png)
            .with_context(|| format!("writing {}", temp.display()))
    })
}

/// A named line: (x, y) points, drawn in [`series_colour`]`(colour)` and [`LineStyle`]
/// `style`, so that lines sharing a colour (one objective at two model sizes) differ.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub colour: usize,
    pub style: LineStyle,
    pub points: Vec<(f64, f64)>,
}

/// How a line is stroked and marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStyle {
    /// Solid, round markers.
    Solid,
    /// Long dashes, triangle markers.
    Dashed,
    /// Short dashes, square markers.
    Dotted,
}

impl LineStyle {
    /// The `index`-th style, cycling: the second size of an objective is dashed, the third
    /// dotted.
    pub fn nth(index: usize) -> Self {
        [LineStyle::Solid, LineStyle::Dashed, LineStyle::Dotted][index % 3]
    }

    /// (dash, gap) in pixels; `None`: solid.
    fn dashes(self) -> Option<(u32, u32)> {
        match self {
            LineStyle::Solid => None,
            LineStyle::Dashed => Some((9, 5)),
            LineStyle::Dotted => Some((3, 4)),
        }
    }
}

/// A tick label as people write numbers: at most three significant digits, no trailing
/// zeros, thousands as `k` (`20k`, `1.5k`), a million and more as powers of ten (`1e9`,
/// `2.5e9`), and tiny values likewise (`3e-4`).
pub fn tick_label(value: f64) -> String {
    fn significant(value: f64) -> String {
        let magnitude = value.abs().log10().floor() as i32;
        let decimals = (2 - magnitude).max(0) as usize;
        let value = if magnitude > 2 {
            let unit = 10f64.powi(magnitude - 2);
            (value / unit).round() * unit
        } else {
            value
        };
        let text = format!("{value:.decimals$}");
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        }
    }
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    // Rounded first, so that 999.9 reads 1k and 9.996e9 reads 1e10.
    let value: f64 = significant(value).parse().expect("a formatted number");
    let a = value.abs();
    if (1e3..1e6).contains(&a) {
        return format!("{}k", significant(value / 1e3));
    }
    if !(1e-3..1e6).contains(&a) {
        let exponent = a.log10().floor() as i32;
        return format!("{}e{exponent}", significant(value / 10f64.powi(exponent)));
    }
    significant(value)
}

/// One panel of line plots.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub lines: Vec<Line>,
}

/// Axes of [`line_panels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axes {
    Linear,
    /// Both axes logarithmic (every value must be positive; others are dropped).
    LogLog,
    /// Logarithmic x, linear y.
    LogX,
}

fn bounds(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return if log { (0.1, 1.0) } else { (0.0, 1.0) };
    }
    if log {
        (lo / 1.25, hi * 1.25)
    } else {
        let pad = ((hi - lo) * 0.05).max(1e-3);
        (lo - pad, hi + pad)
    }
}

/// Side-by-side panels of lines sharing `x_label` and `y_label`.
pub fn line_panels(
    path: &Path,
    title: &str,
    panels: &[Panel],
    x_label: &str,
    y_label: &str,
    axes: Axes,
) -> Result<()> {
    let columns = panels.len().clamp(1, MAX_PANEL_COLUMNS);
    let rows = panels.len().div_ceil(columns).max(1);
    let size = (
        PANEL_SIZE.0 * columns as u32,
        LINE_TITLE_BAND + PANEL_SIZE.1 * rows as u32,
    );
    let labels = (x_label, y_label);
    draw_png(path, size, |root| {
        let (top, body) = root.split_vertically(50);
        top.draw(&Text::new(
            title.to_string(),
            (size.0 as i32 / 2, 15),
            TextStyle::from((FONT, TITLE_SIZE).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(plot_error)?;
        for (area, panel) in body.split_evenly((rows, columns)).iter().zip(panels) {
            draw_panel(area, panel, labels, axes)?;
        }
        Ok(())
    })
}

/// One panel of [`line_panels`] in `area`, its axes fitted to its points.
fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    panel: &Panel,
    labels: (&str, &str),
    axes: Axes,
) -> Result<()> {
    let log_x = matches!(axes, Axes::LogLog | Axes::LogX);
    let log_y = axes == Axes::LogLog;
    let points = || panel.lines.iter().flat_map(|l| l.points.iter());
    let (x0, x1) = bounds(points().map(|p| p.0), log_x);
    let (y0, y1) = bounds(points().map(|p| p.1), log_y);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.title, (FONT, CAPTION_SIZE))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(58);
    match axes {
        Axes::Linear => {
            let chart = builder.build_cartesian_2d(x0..x1, y0..y1);
            draw_lines(chart.map_err(plot_error)?, panel, labels, axes)
        }
        Axes::LogLog => {
            let chart = builder.build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale());
            draw_lines(chart.map_err(plot_error)?, panel, labels, axes)
        }
        Axes::LogX => {
            let chart = builder.build_cartesian_2d((x0..x1).log_scale(), y0..y1);
            draw_lines(chart.map_err(plot_error)?, panel, labels, axes)
        }
    }
}

/// The mesh, the panel's lines (points a log axis cannot show left out) and the legend.
fn draw_lines<'a, X, Y>(
    mut chart: ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    panel: &Panel,
    (x_label, y_label): (&str, &str),
    axes: Axes,
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let log_x = matches!(axes, Axes::LogLog | Axes::LogX);
    let log_y = axes == Axes::LogLog;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((FONT, LABEL_SIZE))
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .draw()
        .map_err(plot_error)?;
    for line in &panel.lines {
        let colour = series_colour(line.colour);
        let points: Vec<(f64, f64)> = line
            .points
            .iter()
            .copied()
            .filter(|(x, y)| (!log_x || *x > 0.0) && (!log_y || *y > 0.0))
            .collect();
        let stroke = colour.stroke_width(2);
        let style = line.style;
        let drawn = match style.dashes() {
            None => chart.draw_series(LineSeries::new(points.clone(), stroke)),
            Some((dash, gap)) => {
                chart.draw_series(DashedLineSeries::new(points.clone(), dash, gap, stroke))
            }
        };
        let entry = drawn.map_err(plot_error)?.label(line.name.clone());
        // The legend's sample: 20 pixels of the line's stroke and dashes.
        match style.dashes() {
            None => entry.legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], stroke)),
            Some((dash, gap)) => entry.legend(move |(x, y)| {
                DashedPathElement::new(vec![(x, y), (x + 20, y)], dash as i32, gap as i32, stroke)
            }),
        };
        if points.len() <= MAX_MARKED_POINTS {
            draw_markers(&mut chart, &points, style, colour)?;
        }
    }
    chart
        .configure_series_labels()
        .label_font((FONT, LABEL_SIZE))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_error)
}

/// A marker on each of `points` in `style`: circles, triangles or squares.
fn draw_markers<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    points: &[(f64, f64)],
    style: LineStyle,
    colour: RGBColor,
) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let fill = colour.filled();
    let at = points.iter().copied();
    match style {
        LineStyle::Solid => chart
            .draw_series(at.map(|p| Circle::new(p, 3, fill)))
            .map(drop),
        LineStyle::Dashed => chart
            .draw_series(at.map(|p| TriangleMarker::new(p, 4, fill)))
            .map(drop),
        LineStyle::Dotted => chart
            .draw_series(at.map(|p| EmptyElement::at(p) + Rectangle::new([(-3, -3), (3, 3)], fill)))
            .map(drop),
    }
    .map_err(plot_error)
}

/// One group of a bar chart: its label and one `(mean, spread)` per series (`None`: no value).
#[derive(Debug, Clone)]
pub struct BarGroup {
    pub label: String,
    pub values: Vec<Option<(f64, f64)>>,
}

/// Grouped bars (one bar per series in each group) with error bars of ± spread; series `s`
/// is drawn in [`series_colour`]`(colours[s])`.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    series: &[String],
    colours: &[usize],
    groups: &[BarGroup],
    y_label: &str,
) -> Result<()> {
    let bars = series.len().max(1) as u32 * groups.len().max(1) as u32;
    let width = (140 + BAR_PIXELS * bars).max(MIN_BAR_CHART_WIDTH);
    let size = (width.min(MAX_BAR_CHART_WIDTH), BAR_CHART_HEIGHT);
    let top = groups
        .iter()
        .flat_map(|g| g.values.iter().flatten())
        .map(|(m, s)| m + s)
        .fold(1.0f64, f64::max);
    draw_png(path, size, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, TITLE_SIZE))
            .margin(16)
            .x_label_area_size(70)
            .y_label_area_size(58)
            .build_cartesian_2d(0f64..groups.len().max(1) as f64, 0f64..top * 1.05)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_label_formatter(&|_| String::new())
            .y_desc(y_label)
            .label_style((FONT, LABEL_SIZE))
            .draw()
            .map_err(plot_error)?;
        let bar = GROUP_FILL / series.len().max(1) as f64;
        for (s, name) in series.iter().enumerate() {
            let colour = series_colour(colours.get(s).copied().unwrap_or(s));
            draw_series_bars(&mut chart, groups, s, bar, name, colour)?;
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(plot_error)?;
        draw_group_labels(root, &chart, groups)
    })
}

/// Series `s`'s bar in every group that has a value for it, `bar` wide, with its error bar.
fn draw_series_bars(
    chart: &mut ChartContext<'_, BitMapBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    groups: &[BarGroup],
    s: usize,
    bar: f64,
    name: &str,
    colour: RGBColor,
) -> Result<()> {
    let bars: Vec<(f64, f64, f64)> = groups
        .iter()
        .enumerate()
        .filter_map(|(g, group)| {
            let (mean, spread) = group.values.get(s).copied().flatten()?;
            Some((g as f64 + GROUP_GAP + bar * s as f64, mean, spread))
        })
        .collect();
    chart
        .draw_series(bars.iter().map(|&(x, mean, _)| {
            Rectangle::new([(x, 0.0), (x + bar * 0.92, mean)], colour.filled())
        }))
        .map_err(plot_error)?
        .label(name)
        .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
    chart
        .draw_series(bars.iter().filter(|b| b.2 > 0.0).map(|&(x, mean, spread)| {
            let centre = x + bar * 0.46;
            PathElement::new(
                vec![(centre, (mean - spread).max(0.0)), (centre, mean + spread)],
                BLACK.stroke_width(2),
            )
        }))
        .map_err(plot_error)?;
    Ok(())
}

/// Group labels under the axis, wrapped on spaces.
fn draw_group_labels(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    chart: &ChartContext<'_, BitMapBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    groups: &[BarGroup],
) -> Result<()> {
    let style =
        TextStyle::from((FONT, LABEL_SIZE).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (g, group) in groups.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
        for (k, line) in wrap(&group.label, GROUP_LABEL_CHARS).iter().enumerate() {
            root.draw(&Text::new(
                line.clone(),
                (x, y + 8 + 15 * k as i32),
                style.clone(),
            ))
            .map_err(plot_error)?;
        }
    }
    Ok(())
}

/// An image with lines of text under it (e.g. the reference and each model's caption).
#[derive(Debug, Clone)]
pub struct CaptionedImage {
    pub image: RgbImage,
    pub lines: Vec<(String, String)>,
}

/// A grid of images (shown at 128×128) with their captions under them.
pub fn caption_grid(path: &Path, title: &str, items: &[CaptionedImage]) -> Result<()> {
    const COLUMNS: usize = 4;
    const CELL_W: u32 = 300;
    const CHARS: usize = 40;
    let wrapped: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            item.lines
                .iter()
                .flat_map(|(who, text)| wrap(&format!("{who}: {text}"), CHARS))
                .collect()
        })
        .collect();
    let text_lines = wrapped.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let cell_h = 128 + 16 + 15 * text_lines + 16;
    let rows = items.len().div_ceil(COLUMNS).max(1) as u32;
    let size = (CELL_W * COLUMNS as u32, 50 + cell_h * rows);
    draw_png(path, size, |root| {
        root.draw(&Text::new(
            title.to_string(),
            (size.0 as i32 / 2, 14),
            TextStyle::from((FONT, 20).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(plot_error)?;
        for (k, (item, lines)) in items.iter().zip(&wrapped).enumerate() {
            let x = (k % COLUMNS) as u32 * CELL_W;
            let y = 50 + (k / COLUMNS) as u32 * cell_h;
            let thumb = image::imageops::resize(
                &item.image,
                128,
                128,
                image::imageops::FilterType::Nearest,
            );
            let element: BitMapElement<'_, (i32, i32)> = BitMapElement::with_owned_buffer(
                ((x + (CELL_W - 128) / 2) as i32, y as i32),
                (128, 128),
                thumb.into_raw(),
            )
            .expect("a 128×128 RGB buffer");
            root.draw(&element).map_err(plot_error)?;
            for (l, line) in lines.iter().enumerate() {
                root.draw(&Text::new(
                    line.clone(),
                    ((x + 10) as i32, (y + 128 + 10 + 15 * l as u32) as i32),
                    (FONT, 13).into_font(),
                ))
                .map_err(plot_error)?;
            }
        }
        Ok(())
    })
}

/// Splits `text` into lines of at most `width` characters at spaces (longer words stay whole).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(path: &Path) -> RgbImage {
        image::open(path).expect("a PNG").to_rgb8()
    }

    #[test]
    fn tick_labels_read_as_people_write_numbers() {
        let cases = [
            (20_000.0, "20k"),
            (1_500.0, "1.5k"),
            (12_345.0, "12.3k"),
            (999.9, "1k"),
            (1e9, "1e9"),
            (2.5e9, "2.5e9"),
            (9.996e9, "1e10"),
            (3e-4, "3e-4"),
            (0.5, "0.5"),
            (0.125, "0.125"),
            (12.0, "12"),
            (-0.25, "-0.25"),
            (0.0, "0"),
        ];
        for (value, want) in cases {
            assert_eq!(tick_label(value), want, "{value}");
        }
    }

    #[test]
    fn lines_of_one_colour_differ_by_their_stroke() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pixels_of = |style: LineStyle| {
            let path = dir.path().join(format!("{style:?}.png"));
            let panel = Panel {
                title: "error".into(),
                lines: vec![Line {
                    name: "CLIP small".into(),
                    colour: 0,
                    style,
                    points: (0..40)
                        .map(|i| (1e6 * (i + 1) as f64, 1.0 / (i + 1) as f64))
                        .collect(),
                }],
            };
            line_panels(&path, "t", &[panel], "FLOPs", "error", Axes::LogLog).expect("draws");
            let c = series_colour(0);
            decode(&path)
                .pixels()
                .filter(|p| p.0 == [c.0, c.1, c.2])
                .count()
        };
        let (solid, dashed, dotted) = (
            pixels_of(LineStyle::Solid),
            pixels_of(LineStyle::Dashed),
            pixels_of(LineStyle::Dotted),
        );
        // Gaps of 5 in 14 and 4 in 7 pixels leave about 64 % and 43 % of the stroke.
        assert!(
            dashed < solid * 85 / 100 && dotted < dashed * 85 / 100,
            "{solid} {dashed} {dotted}"
        );
    }

    #[test]
    fn wrap_breaks_at_spaces_within_the_width() {
        assert_eq!(
            wrap("a small red circle left of a big cube", 12),
            ["a small red", "circle left", "of a big", "cube"]
        );
        assert_eq!(wrap("", 5), Vec::<String>::new());
        assert_eq!(wrap("unbreakableword x", 4), ["unbreakableword", "x"]);
    }

    #[test]
    fn plots_are_pngs_with_the_series_colours() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bars = dir.path().join("bars.png");
        let series = vec!["CLIP".to_string(), "Cap".to_string()];
        let groups = vec![
            BarGroup {
                label: "few-shot colour".into(),
                values: vec![Some((0.8, 0.05)), Some((0.6, 0.0))],
            },
            BarGroup {
                label: "retrieval".into(),
                values: vec![Some((0.5, 0.1)), None],
            },
        ];
        grouped_bars(&bars, "results", &series, &[0, 1], &groups, "accuracy").expect("draws");
        let image = decode(&bars);
        let has = |c: RGBColor| image.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        assert!(has(series_colour(0)) && has(series_colour(1)));

        let lines = dir.path().join("lines.png");
        let panel = |name: &str| Panel {
            title: name.into(),
            lines: vec![Line {
                name: "seed 0".into(),
                colour: 2,
                style: LineStyle::Dashed,
                points: vec![(1e3, 4.0), (1e4, 2.0), (1e5, 1.0)],
            }],
        };
        line_panels(
            &lines,
            "loss",
            &[panel("CLIP"), panel("Cap")],
            "examples",
            "loss",
            Axes::LogLog,
        )
        .expect("draws");
        let image = decode(&lines);
        assert_eq!(image.dimensions(), (920, 420));
        assert!(image.pixels().any(|p| p.0 == [44, 160, 44]));

        let grid = dir.path().join("grid.png");
        let item = CaptionedImage {
            image: RgbImage::from_pixel(32, 32, image::Rgb([200, 10, 10])),
            lines: vec![("truth".into(), "a red square".into())],
        };
        caption_grid(&grid, "captions", &[item.clone(), item]).expect("draws");
        let image = decode(&grid);
        assert!(image.pixels().filter(|p| p.0 == [200, 10, 10]).count() >= 2 * 128 * 128);
        assert!(!dir.path().join("grid.png.tmp").exists());
    }
}
