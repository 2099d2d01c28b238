//! Where the benchmarks put their results: one markdown section per benchmark (and its plots) under
//! `target/bench-report/`, which `scripts/bench-report.sh` joins into `REPORT.md`.

use std::fmt::Write as _;
use std::path::PathBuf;

/// `<workspace>/target/bench-report`, created on demand (`CARGO_TARGET_DIR` respected).
pub fn report_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("bench-report");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Write one file of the report; a failure is printed, never fatal (the tables went to stdout).
pub fn write_report(name: &str, text: &str) {
    let path = report_dir().join(name);
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("cannot write {}: {e}", path.display());
    } else {
        eprintln!("wrote {}", path.display());
    }
}

/// End a benchmark's section: its wall time, then to stdout and to `name` in the report.
pub fn finish(name: &str, mut md: String, wall_s: f64) {
    let _ = writeln!(md, "\nTotal wall time: {wall_s:.1} s.");
    print!("{md}");
    write_report(name, &md);
}

/// An empirical CDF plot of several sample sets, as a self-contained SVG.
#[derive(Debug)]
pub struct Cdf {
    title: String,
    x_label: String,
    series: Vec<(String, Vec<f64>)>,
}

const COLOURS: [&str; 6] = [
    "#1f77b4", "#2ca02c", "#9467bd", "#d62728", "#ff7f0e", "#8c564b",
];

impl Cdf {
    pub fn new(title: impl Into<String>, x_label: impl Into<String>) -> Self {
        Cdf {
            title: title.into(),
            x_label: x_label.into(),
            series: Vec::new(),
        }
    }

    pub fn series(&mut self, name: impl Into<String>, mut samples: Vec<f64>) {
        samples.retain(|v| v.is_finite());
        samples.sort_by(f64::total_cmp);
        self.series.push((name.into(), samples));
    }

    pub fn svg(&self) -> String {
        let (w, h, left, right, top, bottom) = (760.0, 420.0, 60.0, 200.0, 40.0, 50.0);
        let pw = w - left - right;
        let ph = h - top - bottom;
        let max_x = self
            .series
            .iter()
            .filter_map(|(_, v)| v.last().copied())
            .fold(1.0_f64, f64::max)
            .ceil();
        let x = |v: f64| left + v / max_x * pw;
        let y = |p: f64| top + (1.0 - p) * ph;
        let mut s = String::new();
        let _ = write!(
            s,
            "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n\
             <rect width='100%' height='100%' fill='white'/>\n\
             <text x='{}' y='22' font-size='14' text-anchor='middle'>{}</text>\n",
            left + pw / 2.0,
            self.title
        );
        // Axes, grid and ticks.
        let steps = max_x as usize;
        let every = (steps / 10).max(1);
        for i in (0..=steps).step_by(every) {
            let xv = x(i as f64);
            let _ = writeln!(
                s,
                "<line x1='{xv}' y1='{top}' x2='{xv}' y2='{}' stroke='#eee'/><text x='{xv}' y='{}' text-anchor='middle'>{i}</text>",
                top + ph,
                top + ph + 16.0
            );
        }
        for i in 0..=10 {
            let p = i as f64 / 10.0;
            let yv = y(p);
            let _ = writeln!(
                s,
                "<line x1='{left}' y1='{yv}' x2='{}' y2='{yv}' stroke='#eee'/><text x='{}' y='{}' text-anchor='end'>{p:.1}</text>",
                left + pw,
                left - 6.0,
                yv + 4.0
            );
        }
        let _ = write!(
            s,
            "<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' stroke='#333'/>\n\
             <text x='{}' y='{}' text-anchor='middle'>{}</text>\n\
             <text x='16' y='{}' transform='rotate(-90 16 {})' text-anchor='middle'>fraction of runs</text>\n",
            left + pw / 2.0,
            h - 12.0,
            self.x_label,
            top + ph / 2.0,
            top + ph / 2.0
        );
        for (i, (name, v)) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let dash = if name.starts_with("foca") {
                " stroke-dasharray='6 3'"
            } else {
                ""
            };
            if !v.is_empty() {
                let n = v.len() as f64;
                let mut pts = format!("{:.1},{:.1}", x(0.0), y(0.0));
                for (k, val) in v.iter().enumerate() {
                    let _ = write!(
                        pts,
                        " {:.1},{:.1} {:.1},{:.1}",
                        x(*val),
                        y(k as f64 / n),
                        x(*val),
                        y((k + 1) as f64 / n)
                    );
                }
                let _ = writeln!(
                    s,
                    "<polyline fill='none' stroke='{colour}' stroke-width='1.8'{dash} points='{pts}'/>"
                );
            }
            let ly = top + 14.0 + i as f64 * 18.0;
            let _ = writeln!(
                s,
                "<line x1='{}' y1='{ly}' x2='{}' y2='{ly}' stroke='{colour}' stroke-width='2'{dash}/><text x='{}' y='{}'>{name} (n={})</text>",
                left + pw + 10.0,
                left + pw + 34.0,
                left + pw + 40.0,
                ly + 4.0,
                v.len()
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cdf_reaches_one_at_the_largest_sample() {
        let mut c = Cdf::new("t", "s");
        c.series("a", vec![3.0, 1.0, 2.0, f64::NAN]);
        let svg = c.svg();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("(n=3)"), "NaN dropped, three samples kept");
        // The curve ends at x(3.0) = right edge, y(1.0) = top.
        assert!(svg.contains("560.0,40.0"), "{svg}");
    }
}
