//! `tcpcrypt bench --plot FILE.svg`: the benchmark's ratios as a bar chart
//! (tcpcrypt against plain TCP, one bar per test, a line at 1.0 for
//! "as fast as plain"), drawn with plotters' SVG backend.

use std::path::Path;

use plotters::prelude::*;

/// One bar: a test's name and tcpcrypt's ratio to plain TCP.
pub struct Bar<'a> {
    pub label: &'a str,
    pub ratio: f64,
}

const TCPCRYPT: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
const PARITY: RGBColor = RGBColor(0xc0, 0x39, 0x2b);

/// Writes the chart to `path`.
pub fn write_svg(path: &Path, title: &str, bars: &[Bar<'_>]) -> Result<(), String> {
    let height = 120 + 60 * bars.len() as u32;
    let root = SVGBackend::new(path, (820, height)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let top = bars.iter().map(|b| b.ratio).fold(1.0f64, f64::max) * 1.15;
    let rows = bars.len() as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(230)
        .build_cartesian_2d(0f64..top, (0..rows - 1).into_segmented())
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("tcpcrypt / plain TCP (higher is faster)")
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars
                .get((rows - 1 - *i) as usize)
                .map(|b| b.label.to_owned())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .y_labels(bars.len())
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| fail(&e))?;
    // The first bar at the top.
    chart
        .draw_series(bars.iter().enumerate().map(|(i, bar)| {
            let row = rows - 1 - i as i32;
            let mut rect = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row)),
                    (bar.ratio, SegmentValue::Exact(row + 1)),
                ],
                TCPCRYPT.filled(),
            );
            rect.set_margin(8, 8, 0, 0);
            rect
        }))
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, bar)| {
            let row = rows - 1 - i as i32;
            Text::new(
                format!("{:.2}x", bar.ratio),
                (bar.ratio + top * 0.01, SegmentValue::CenterOf(row)),
                ("sans-serif", 14),
            )
        }))
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![
                (1.0, SegmentValue::Exact(0)),
                (1.0, SegmentValue::Exact(rows)),
            ],
            PARITY.stroke_width(2),
        )))
        .map_err(|e| fail(&e))?
        .label("as fast as plain TCP")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], PARITY.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
