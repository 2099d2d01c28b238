//! Human-readable output: the summary table, the JSON-lines trace and the SVG timeline.

use crate::run::{Report, pct};
use std::fmt::Write;

pub fn summary_table(r: &Report) -> String {
    let s = &r.summary;
    let mut o = String::new();
    let _ = writeln!(o, "scenario           {}", r.name);
    let _ = writeln!(o, "seed               {}", r.seed);
    let _ = writeln!(
        o,
        "simulated          {:.1} s, {} events, {} datagrams",
        s.sim_seconds, s.events, s.messages
    );
    let f = |v: &[f64]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            format!(
                "p50 {:.2} s  max {:.2} s  (n={})",
                pct(v, 0.5),
                pct(v, 1.0),
                v.len()
            )
        }
    };
    let _ = writeln!(o, "detection          {}", f(&s.detection));
    let _ = writeln!(o, "restart            {}", f(&s.restart));
    let _ = writeln!(o, "power-ons          {}", s.restarts);
    let _ = writeln!(o, "false restarts     {}", s.false_restarts);
    let _ = writeln!(
        o,
        "HA downtime        {:.1} VM-seconds from {} HA stops",
        s.ha_downtime_s, s.ha_stops
    );
    let _ = writeln!(
        o,
        "paused             {:.1} VM-seconds from {} storage-loss pauses, {} still paused",
        s.paused_s, s.pauses, s.paused_at_end
    );
    let _ = writeln!(
        o,
        "stale copies       {} autostarted beside another copy, {} stopped by HA",
        s.stale_copies, s.stale_copies_stopped
    );
    for e in &r.expectations {
        let _ = writeln!(
            o,
            "expect @{:>7.2}s   {:<4} {:?}: {}",
            e.at as f64 / 1e6,
            if e.ok { "ok" } else { "FAIL" },
            e.expect,
            e.detail
        );
    }
    for v in &r.violations {
        let _ = writeln!(
            o,
            "VIOLATION @{:.3}s  {}: {}",
            v.at as f64 / 1e6,
            v.invariant,
            v.detail
        );
    }
    let _ = writeln!(
        o,
        "result             {}",
        if r.passed() { "PASS" } else { "FAIL" }
    );
    o
}

pub fn jsonl(r: &Report) -> String {
    let mut o = String::new();
    for l in &r.world.trace {
        o.push_str(&serde_json::to_string(l).unwrap_or_default());
        o.push('\n');
    }
    o
}

/// Hosts as rows; master tenure as blue bands, crashes as red marks, power-ons as green dots.
pub fn svg(r: &Report) -> String {
    let w = &r.world;
    let hosts = w.hosts.len().max(1);
    let end = (w.now as f64 / 1e6).max(1.0);
    let (left, width, row) = (60.0, 900.0, 18.0);
    let x = |t: f64| left + t / end * width;
    let height = 40.0 + row * hosts as f64;
    let mut o = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{height}' font-family='monospace' font-size='11'>\n",
        left + width + 20.0
    );
    let _ = writeln!(
        o,
        "<text x='{left}' y='14'>{} (seed {}): blue master, red crash, green power-on</text>",
        r.name, r.seed
    );
    for (i, h) in w.hosts.iter().enumerate() {
        let y = 24.0 + row * i as f64;
        let _ = writeln!(o, "<text x='4' y='{}'>{}</text>", y + 12.0, h.id);
        let _ = writeln!(
            o,
            "<line x1='{left}' y1='{}' x2='{}' y2='{}' stroke='#ddd'/>",
            y + 9.0,
            left + width,
            y + 9.0
        );
    }
    // Master tenures from the role changes in the trace.
    let mut since: std::collections::BTreeMap<u32, f64> = Default::default();
    for l in &w.trace {
        let Some(h) = l.host else { continue };
        let became = l.what.starts_with("RoleChanged") && l.what.contains("to: Master");
        let left_role = l.what.starts_with("RoleChanged") && l.what.contains("from: Master");
        let crashed = l.what == "host crashed";
        if became {
            since.insert(h, l.t);
        }
        if (left_role || crashed)
            && let Some(t0) = since.remove(&h)
        {
            band(&mut o, x(t0), x(l.t), 24.0 + row * (h as f64 - 1.0));
        }
        if crashed {
            let _ = writeln!(
                o,
                "<rect x='{}' y='{}' width='3' height='16' fill='#d22'/>",
                x(l.t),
                24.0 + row * (h as f64 - 1.0)
            );
        }
    }
    for (h, t0) in since {
        band(&mut o, x(t0), x(end), 24.0 + row * (h as f64 - 1.0));
    }
    for (t, h, _) in &w.power_ons {
        let _ = writeln!(
            o,
            "<circle cx='{}' cy='{}' r='3' fill='#2a2'/>",
            x(*t as f64 / 1e6),
            24.0 + row * (h.0 as f64 - 1.0) + 9.0
        );
    }
    o.push_str("</svg>\n");
    o
}

fn band(o: &mut String, x0: f64, x1: f64, y: f64) {
    let _ = writeln!(
        o,
        "<rect x='{x0}' y='{}' width='{}' height='10' fill='#58f' opacity='0.6'/>",
        y + 4.0,
        (x1 - x0).max(1.0)
    );
}
