//! The chart: ops/s of every row as a horizontal bar on a log scale, coloured by group.

use crate::facts::{cpu_model, fmt_int, fmt_si, nproc, utc_now, xml_escape};
use crate::report::Row;
use crate::rows::Group;

/// The SVG chart of `rows`; `ops` is the operation count named in the subtitle.
pub fn chart(rows: &[Row], ops: usize) -> String {
    let bars: Vec<(String, Option<f64>, Group)> = rows
        .iter()
        .map(|r| {
            let threads = if r.spec.shape.threads == 1 {
                "1 thread".to_string()
            } else {
                format!("{} threads", r.spec.shape.threads)
            };
            let batch = if r.spec.shape.batch > 1 {
                format!(", {}/call", r.spec.shape.batch)
            } else {
                String::new()
            };
            (
                format!("{} ({threads}{batch})", r.spec.label),
                r.ops_per_sec(),
                r.spec.group,
            )
        })
        .collect();
    let max = bars.iter().filter_map(|b| b.1).fold(1.0f64, f64::max);
    let min = bars.iter().filter_map(|b| b.1).fold(max, f64::min);
    let lo = 10f64.powf(min.max(1.0).log10().floor());
    let hi = 10f64.powf(max.log10().ceil()).max(lo * 10.0);
    let (label_w, plot_w, value_w, row_h, top) = (400.0, 480.0, 110.0, 24.0, 58.0);
    let width = label_w + plot_w + value_w + 20.0;
    let legend_y = top + bars.len() as f64 * row_h + 34.0;
    let height = legend_y + 4.0 * 18.0 + 16.0;
    let x_of =
        |v: f64| label_w + plot_w * ((v.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10()));
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{:.0}\" y=\"22\" font-size=\"15\" font-weight=\"bold\" text-anchor=\"middle\">idem vs peers: dedup operations per second (log scale)</text>\n\
         <text x=\"{:.0}\" y=\"40\" font-size=\"11\" text-anchor=\"middle\" fill=\"#555\">{} ops, 16-byte keys and values, 1% re-sends, TTL 1 h; {} x {}; {}</text>\n",
        width / 2.0,
        width / 2.0,
        fmt_int(ops as f64),
        nproc(),
        xml_escape(&cpu_model()),
        utc_now().split(' ').next().unwrap_or("")
    );
    // Decade grid lines.
    let mut decade = lo;
    while decade <= hi * 1.0001 {
        let x = x_of(decade);
        svg.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#555\">{}</text>\n",
            top - 6.0,
            top + bars.len() as f64 * row_h,
            top + bars.len() as f64 * row_h + 14.0,
            fmt_si(decade)
        ));
        decade *= 10.0;
    }
    for (i, (label, rate, group)) in bars.iter().enumerate() {
        let y = top + i as f64 * row_h;
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            label_w - 8.0,
            y + row_h * 0.65,
            xml_escape(label)
        ));
        match rate {
            Some(rate) => {
                let x = x_of(*rate);
                svg.push_str(&format!(
                    "<rect x=\"{label_w}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {} ops/s</title></rect>\n<text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
                    y + 3.0,
                    (x - label_w).max(1.0),
                    row_h - 6.0,
                    group.color(),
                    xml_escape(label),
                    fmt_int(*rate),
                    x + 5.0,
                    y + row_h * 0.65,
                    fmt_int(*rate)
                ));
            }
            None => svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#999\">skipped</text>\n",
                label_w + 5.0,
                y + row_h * 0.65
            )),
        }
    }
    for (i, g) in Group::ALL.iter().enumerate() {
        let y = legend_y + i as f64 * 18.0;
        svg.push_str(&format!(
            "<rect x=\"20\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"38\" y=\"{:.1}\" font-size=\"11\">{}: {}</text>\n",
            y - 10.0,
            g.color(),
            y,
            g.code(),
            xml_escape(g.describe())
        ));
    }
    svg.push_str("</svg>\n");
    svg
}
