//! Training curves of a run as an SVG document: loss and F1 per epoch, side by side (plotters).

use std::ops::Range;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// What one completed epoch reports. Non-finite values are skipped when drawing.
#[derive(Debug, Clone)]
pub struct EpochPoint {
    pub epoch: u32,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub val_macro_f1: Option<f64>,
    pub val_micro_f1: Option<f64>,
}

const SIZE: (u32, u32) = (1000, 420);
const FONT: &str = "sans-serif";
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VALIDATION: RGBColor = RGBColor(255, 127, 14);
const MACRO: RGBColor = RGBColor(44, 160, 44);
const MICRO: RGBColor = RGBColor(148, 103, 189);
const BEST: RGBColor = RGBColor(120, 120, 120);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawError = DrawingAreaErrorKind<std::io::Error>;

/// One named line of a panel: `(epoch, value)` in epoch order, `None` where there is no value.
struct Line {
    name: &'static str,
    color: RGBColor,
    values: Vec<(u32, Option<f64>)>,
}

impl Line {
    fn new(
        name: &'static str,
        color: RGBColor,
        points: &[EpochPoint],
        value: impl Fn(&EpochPoint) -> Option<f64>,
    ) -> Self {
        let values = points
            .iter()
            .map(|p| (p.epoch, value(p).filter(|v| v.is_finite())))
            .collect();
        Line {
            name,
            color,
            values,
        }
    }

    fn finite(&self) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.values.iter().filter_map(|&(e, v)| v.map(|v| (e, v)))
    }

    /// Runs of consecutive epochs with a value: a missing or non-finite value breaks the line.
    fn segments(&self) -> Vec<Vec<(u32, f64)>> {
        let mut segments = vec![Vec::new()];
        for &(epoch, value) in &self.values {
            match value {
                Some(v) => segments.last_mut().expect("never empty").push((epoch, v)),
                None if segments.last().is_some_and(|s| !s.is_empty()) => segments.push(Vec::new()),
                None => {}
            }
        }
        segments.retain(|s| !s.is_empty());
        segments
    }
}

/// Renders the curves of a run: an SVG document with the title on top and two panels side by
/// side, loss per epoch (train and validation) and validation F1 per epoch (macro and micro),
/// each with labelled axes and a legend. `best_epoch`, if given and within the plotted epochs,
/// is marked with a dashed vertical line. With no points the document says "no completed
/// epochs yet". Non-finite values are left out (the line breaks there).
pub fn render_curves(
    title: &str,
    points: &[EpochPoint],
    best_epoch: Option<u32>,
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, title, points, best_epoch).map_err(|e| format!("rendering curves: {e}"))?;
        root.present()
            .map_err(|e| format!("rendering curves: {e}"))?;
    }
    Ok(svg)
}

fn draw(
    root: &Area<'_>,
    title: &str,
    points: &[EpochPoint],
    best_epoch: Option<u32>,
) -> Result<(), DrawError> {
    root.fill(&WHITE)?;
    let body = root.titled(title, (FONT, 22))?;
    if points.is_empty() {
        let (w, h) = body.dim_in_pixel();
        let style = (FONT, 18)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Center));
        body.draw(&Text::new(
            "no completed epochs yet",
            (w as i32 / 2, h as i32 / 2),
            style,
        ))?;
        return Ok(());
    }

    let mut points = points.to_vec();
    points.sort_by_key(|p| p.epoch);
    let first = points[0].epoch;
    let last = points[points.len() - 1].epoch;
    let epochs = if first == last {
        first.saturating_sub(1)..last.saturating_add(1)
    } else {
        first..last
    };
    let best_epoch = best_epoch.filter(|e| (first..=last).contains(e));

    let losses = [
        Line::new("train loss", TRAIN, &points, |p| Some(p.train_loss)),
        Line::new("validation loss", VALIDATION, &points, |p| p.val_loss),
    ];
    let f1s = [
        Line::new("macro F1", MACRO, &points, |p| p.val_macro_f1),
        Line::new("micro F1", MICRO, &points, |p| p.val_micro_f1),
    ];
    let loss_range = padded_range(losses.iter().flat_map(|l| l.finite().map(|(_, v)| v)));
    let f1_range = f1s
        .iter()
        .flat_map(|l| l.finite().map(|(_, v)| v))
        .fold(0.0f64..1.0, |r, v| r.start.min(v)..r.end.max(v));

    let (left, right) = body.split_horizontally(SIZE.0 / 2);
    panel(
        &left,
        "Loss",
        "loss",
        &losses,
        epochs.clone(),
        loss_range,
        best_epoch,
        SeriesLabelPosition::UpperRight,
    )?;
    panel(
        &right,
        "Validation F1",
        "F1",
        &f1s,
        epochs,
        f1_range,
        best_epoch,
        SeriesLabelPosition::LowerRight,
    )?;
    Ok(())
}

/// The range spanned by `values` with 5% of room on each side; it starts at 0 rather than
/// below when all values are non-negative. `0..1` when there is no value.
fn padded_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return 0.0..1.0;
    }
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else {
        (hi.abs() * 0.1).max(0.05)
    };
    let start = if lo >= 0.0 {
        (lo - pad).max(0.0)
    } else {
        lo - pad
    };
    start..hi + pad
}

#[allow(clippy::too_many_arguments)]
fn panel(
    area: &Area<'_>,
    caption: &str,
    y_desc: &str,
    lines: &[Line],
    epochs: Range<u32>,
    values: Range<f64>,
    best_epoch: Option<u32>,
    legend_at: SeriesLabelPosition,
) -> Result<(), DrawError> {
    let (y_lo, y_hi) = (values.start, values.end);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(epochs, values)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels(10)
        .y_label_formatter(&|v| format!("{v:.2}"))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 14))
        .light_line_style(TRANSPARENT)
        .draw()?;

    for line in lines {
        let style = ShapeStyle::from(line.color).stroke_width(2);
        chart
            .draw_series(
                line.segments()
                    .into_iter()
                    .map(move |segment| PathElement::new(segment, style)),
            )?
            .label(line.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(
            line.finite()
                .map(|point| Circle::new(point, 3, line.color.filled())),
        )?;
    }
    if let Some(epoch) = best_epoch {
        let style = ShapeStyle::from(BEST).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(epoch, y_lo), (epoch, y_hi)],
                6,
                4,
                style,
            ))?
            .label(format!("best epoch ({epoch})"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(legend_at)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(epoch: u32, train_loss: f64) -> EpochPoint {
        let e = epoch as f64;
        EpochPoint {
            epoch,
            train_loss,
            val_loss: Some(0.9 / (1.0 + 0.3 * e) + 0.05),
            val_macro_f1: Some(0.4 + 0.5 * (1.0 - (-0.2 * e).exp())),
            val_micro_f1: Some(0.45 + 0.45 * (1.0 - (-0.25 * e).exp())),
        }
    }

    /// A small well-formedness check: every tag is closed in order, the document is one
    /// `<svg>` element, and text has no raw `<` or unescaped `&`.
    fn assert_well_formed(svg: &str) {
        let body = svg.trim();
        assert!(
            body.starts_with("<svg"),
            "starts with {:?}",
            &body[..20.min(body.len())]
        );
        assert!(
            body.ends_with("</svg>"),
            "ends with {:?}",
            &body[body.len().saturating_sub(20)..]
        );
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = body;
        let mut roots = 0;
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            assert_eq!(
                text.replace("&lt;", "")
                    .replace("&gt;", "")
                    .replace("&amp;", "")
                    .replace("&quot;", "")
                    .replace("&apos;", "")
                    .find(['&', '>']),
                None,
                "unescaped text {text:?}"
            );
            let close = rest[open..].find('>').expect("unterminated tag") + open;
            let tag = &rest[open + 1..close];
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes in <{tag}>"
            );
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name.trim()), "mismatched </{name}>");
            } else if !tag.starts_with('?') && !tag.starts_with('!') && !tag.ends_with('/') {
                let name = tag.split_whitespace().next().expect("tag name");
                if stack.is_empty() {
                    roots += 1;
                }
                stack.push(name);
            } else if stack.is_empty() && !tag.starts_with('?') && !tag.starts_with('!') {
                roots += 1;
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed tags: {stack:?}");
        assert_eq!(roots, 1, "one root element");
    }

    const LEGEND: [&str; 4] = ["train loss", "validation loss", "macro F1", "micro F1"];

    #[test]
    fn no_points_says_so() {
        let svg = render_curves("run 7", &[], Some(3)).unwrap();
        assert_well_formed(&svg);
        assert!(svg.contains("run 7"));
        assert!(svg.contains("no completed epochs yet"));
        assert!(!svg.contains("best epoch"));
    }

    #[test]
    fn one_point() {
        let svg = render_curves("one epoch", &[point(1, 0.7)], Some(1)).unwrap();
        assert_well_formed(&svg);
        assert!(svg.contains("one epoch"));
        for name in LEGEND {
            assert!(svg.contains(name), "legend {name}");
        }
        assert!(svg.contains("best epoch (1)"));
        assert!(
            svg.contains("<circle"),
            "a single epoch is drawn as markers"
        );
    }

    #[test]
    fn twenty_points() {
        let points: Vec<EpochPoint> = (1..=20)
            .map(|e| point(e, 1.0 / (1.0 + 0.5 * e as f64)))
            .collect();
        let svg = render_curves("run 42: toxic-comments", &points, Some(14)).unwrap();
        assert_well_formed(&svg);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("run 42: toxic-comments"));
        for name in LEGEND {
            assert!(svg.contains(name), "legend {name}");
        }
        for axis in ["epoch", "loss", "F1", "Loss", "Validation F1"] {
            assert!(svg.contains(axis), "label {axis}");
        }
        assert!(svg.contains("best epoch (14)"));
        assert!(svg.contains("<polyline"));
        // Unsorted input draws the same picture.
        let mut shuffled = points.clone();
        shuffled.reverse();
        assert_eq!(
            render_curves("run 42: toxic-comments", &shuffled, Some(14)).unwrap(),
            svg
        );
    }

    #[test]
    fn non_finite_values_are_skipped() {
        let mut points: Vec<EpochPoint> = (1..=6).map(|e| point(e, 0.5)).collect();
        points[1].train_loss = f64::NAN;
        points[2].val_loss = Some(f64::INFINITY);
        points[3].val_macro_f1 = Some(f64::NEG_INFINITY);
        points[4].val_micro_f1 = Some(f64::NAN);
        points[5].val_loss = None;
        let svg = render_curves("diverged", &points, Some(99)).unwrap();
        assert_well_formed(&svg);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert!(
            !svg.contains("best epoch"),
            "best epoch out of range is not drawn"
        );

        // Nothing finite at all still renders.
        let points: Vec<EpochPoint> = (0..3)
            .map(|e| EpochPoint {
                epoch: e,
                train_loss: f64::NAN,
                val_loss: None,
                val_macro_f1: Some(f64::INFINITY),
                val_micro_f1: None,
            })
            .collect();
        let svg = render_curves("nothing finite", &points, Some(0)).unwrap();
        assert_well_formed(&svg);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn title_is_escaped() {
        let svg = render_curves("a < b & \"c\"", &[point(0, 0.3)], None).unwrap();
        assert_well_formed(&svg);
        assert!(svg.contains("a &lt; b &amp; &quot;c&quot;"));
    }
}
