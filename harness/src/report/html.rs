//! `report.html`: one self-contained page (inline CSS and SVG, no script, no external fetch)
//! with, per case, node and app state timelines with fault markers, round latency, and loss and
//! accuracy per round.

use std::fmt::Write as _;

use super::human_ms;
use crate::outcome::{CaseReport, Marker, RoundReport, RunReport, Status, Track};

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;font-size:.9em}\
.passed{color:#1a7f37}.failed{color:#cf222e}.skipped{color:#9a6700}\
.badge{font-weight:bold;padding:0 .4em;border-radius:3px}\
section.case{border-top:2px solid #ddd;margin-top:2em;padding-top:1em}\
svg.plot{display:block;margin:.5em 0;background:#fafafa;border:1px solid #eee}\
svg text{font-size:11px;font-family:system-ui,sans-serif}\
code{background:#f3f3f3;padding:0 .2em}ul.steps li{margin:.2em 0}";

pub fn to_html(run: &RunReport) -> String {
    let s = &run.summary;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>e2e {id}</title><style>{CSS}</style></head><body>\n\
<h1>e2e run {id}</h1>\n<p id=\"summary\">backend <code>{b}</code> · {t} case(s): <span class=\"passed\">{p} passed</span>, \
<span class=\"failed\">{f} failed</span>, <span class=\"skipped\">{k} skipped</span> · wall {w} · started {st}</p>\n",
        id = esc(&run.run_id),
        b = esc(&run.backend),
        t = s.total,
        p = s.passed,
        f = s.failed,
        k = s.skipped,
        w = human_ms(run.wall_ms),
        st = esc(&run.started_at)
    );
    h.push_str("<table><tr><th>case</th><th>topology</th><th>seed</th><th>status</th><th>virtual</th><th>wall</th><th>reason</th></tr>\n");
    for c in &run.cases {
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#{a}\">{n}</a></td><td>{t}</td><td>{s}</td><td class=\"{st}\">{st}</td><td>{v}</td><td>{w}</td><td>{r}</td></tr>",
            a = anchor(&c.name),
            n = esc(&c.name),
            t = esc(&c.topology),
            s = c.seed,
            st = c.status.as_str(),
            v = human_ms(c.virtual_ms),
            w = human_ms(c.wall_ms),
            r = esc(c.reason.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table>\n");
    if let Some(b) = &run.baseline {
        let _ = writeln!(
            h,
            "<h2>Baseline <code>{}</code></h2><p>threshold {}% · {} regression(s)</p><table><tr><th>case</th><th>metric</th><th>baseline</th><th>now</th><th>worse by</th></tr>",
            esc(&b.source),
            b.threshold_pct,
            b.regressions
        );
        for r in &b.rows {
            let _ = writeln!(
                h,
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:+.1}%</td></tr>",
                if r.regression { "failed" } else { "" },
                esc(&r.case),
                esc(&r.metric),
                r.baseline,
                r.current,
                r.worse_by_pct
            );
        }
        h.push_str("</table>\n");
    }
    if let Some(cmp) = &run.comparison {
        let _ = writeln!(
            h,
            "<h2>Sim vs real (<code>sim</code> against <code>{}</code>)</h2><p>timings agree within {}% (a measurement) · counts and digests must be equal where the accepted set is · {} difference(s) · {} mismatch(es)</p>",
            esc(&cmp.real_backend),
            cmp.tolerance_pct,
            cmp.differences,
            cmp.mismatches
        );
        for c in &cmp.cases {
            let _ = writeln!(
                h,
                "<h3>{} <small>(sim {}, real {})</small></h3><table><tr><th>quantity</th><th>sim</th><th>real</th><th>agreement</th><th>note</th></tr>",
                esc(&c.case),
                c.sim_status.as_str(),
                c.real_status.as_str()
            );
            for r in &c.rows {
                let class = match r.agreement {
                    crate::compare::Agreement::Mismatch => "failed",
                    crate::compare::Agreement::Differ | crate::compare::Agreement::OneSided => {
                        "skipped"
                    }
                    crate::compare::Agreement::Agree => "passed",
                };
                let _ = writeln!(
                    h,
                    "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&r.quantity),
                    esc(&r.sim),
                    esc(&r.real),
                    crate::compare::agreement_word(r.agreement),
                    esc(&r.note)
                );
            }
            h.push_str("</table>\n");
        }
    }
    for c in &run.cases {
        case_section(&mut h, c);
    }
    h.push_str("</body></html>\n");
    h
}

fn anchor(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn case_section(h: &mut String, c: &CaseReport) {
    let _ = writeln!(
        h,
        "<section class=\"case\" id=\"{a}\"><h2><span class=\"badge {st}\">{st}</span> {n}</h2>",
        a = anchor(&c.name),
        st = c.status.as_str(),
        n = esc(&c.name)
    );
    if !c.description.is_empty() {
        let _ = writeln!(h, "<p>{}</p>", esc(&c.description));
    }
    let _ = writeln!(
        h,
        "<p>file <code>{}</code> · topology <code>{}</code> · seed {} · virtual {} · wall {}{}</p>",
        esc(&c.file),
        esc(&c.topology),
        c.seed,
        human_ms(c.virtual_ms),
        human_ms(c.wall_ms),
        c.trace_hash
            .as_ref()
            .map(|t| format!(" · trace <code>{}</code>", esc(&t[..t.len().min(16)])))
            .unwrap_or_default()
    );
    if let Some(r) = &c.reason {
        let _ = writeln!(
            h,
            "<p class=\"{}\"><b>{}</b>: {}</p>",
            c.status.as_str(),
            c.status.as_str(),
            esc(r)
        );
    }
    if c.status == Status::Failed {
        let _ = writeln!(h, "<p>repro: <code>{}</code></p>", esc(&c.repro));
    }
    h.push_str("<ul class=\"steps\">");
    for st in &c.steps {
        let _ = write!(
            h,
            "<li><span class=\"{s}\">{s}</span> <code>{sec}[{i}]</code> {d} @{t}: {det}",
            s = st.status.as_str(),
            sec = esc(&st.section),
            i = st.index,
            d = esc(&st.description),
            t = human_ms(st.at_ms),
            det = esc(&st.detail)
        );
        if let Some(n) = &st.note {
            let _ = write!(h, "<br><i>why: {}</i>", esc(n));
        }
        if !st.assertions.is_empty() {
            h.push_str("<ul>");
            for a in &st.assertions {
                let _ = write!(
                    h,
                    "<li><span class=\"{s}\">{s}</span> <code>{k}</code> expected <code>{e}</code>: {d}</li>",
                    s = a.status.as_str(),
                    k = esc(&a.kind),
                    e = esc(&a.expected),
                    d = esc(&a.detail)
                );
            }
            h.push_str("</ul>");
        }
        h.push_str("</li>\n");
    }
    h.push_str("</ul>\n");
    let end = c.virtual_ms.max(1);
    if !c.timeline.nodes.is_empty() {
        h.push_str("<h3>Node states</h3>\n");
        h.push_str(&timeline_svg(
            "nodes",
            &c.timeline.nodes,
            &c.timeline.faults,
            end,
        ));
    }
    if !c.timeline.apps.is_empty() {
        h.push_str("<h3>App and workload states</h3>\n");
        h.push_str(&timeline_svg(
            "apps",
            &c.timeline.apps,
            &c.timeline.faults,
            end,
        ));
    }
    if c.rounds.is_empty() {
        h.push_str("<p class=\"skipped\">No FL rounds in this case: no round plots.</p>\n");
    } else {
        h.push_str("<h3>Round latency</h3>\n");
        let pts: Vec<(f64, f64)> = c
            .rounds
            .iter()
            .map(|r| (f64::from(r.round), r.latency_ms as f64 / 1_000.0))
            .collect();
        h.push_str(&line_svg(
            "round-latency",
            "latency (s)",
            &[("latency", "#0969da", pts)],
        ));
        h.push_str("<h3>Loss and accuracy per round</h3>\n");
        h.push_str(&loss_accuracy_svg(&c.rounds));
    }
    h.push_str("</section>\n");
}

fn color(state: &str) -> &'static str {
    let s = state.to_ascii_lowercase();
    if s.starts_with("ready") || s.contains("healthy") || s.contains("synced") {
        "#2da44e"
    } else if s.starts_with("notready") || s.contains("degraded") || s.contains("progressing") {
        "#d4a72c"
    } else if s.starts_with("off") || s.contains("deleted") || s.contains("missing") {
        "#8c959f"
    } else if s.contains("boot") {
        "#54aeff"
    } else {
        "#a475f9"
    }
}

const LABEL_W: f64 = 200.0;
const PLOT_W: f64 = 900.0;
const ROW_H: f64 = 16.0;

/// A state timeline: one row per track, coloured segments, red fault markers.
pub fn timeline_svg(kind: &str, tracks: &[Track], faults: &[Marker], end_ms: u64) -> String {
    let rows = tracks.len().min(60);
    let height = 30.0 + rows as f64 * ROW_H + 20.0;
    let width = LABEL_W + PLOT_W + 10.0;
    let x = |t: u64| LABEL_W + (t as f64 / end_ms as f64).min(1.0) * PLOT_W;
    let mut s = format!(
        "<svg class=\"plot timeline {kind}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\"><title>{kind} state timeline</title>\n"
    );
    for (i, tr) in tracks.iter().take(rows).enumerate() {
        let y = 20.0 + i as f64 * ROW_H;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            LABEL_W - 6.0,
            y + 11.0,
            esc(&truncate(&tr.name, 32))
        );
        for (j, (t, st)) in tr.states.iter().enumerate() {
            let t_end = tr.states.get(j + 1).map(|(t2, _)| *t2).unwrap_or(end_ms);
            let (x0, x1) = (x(*t), x(t_end));
            let _ = writeln!(
                s,
                "<rect class=\"seg\" x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\"><title>{}: {} from {}</title></rect>",
                (x1 - x0).max(0.5),
                ROW_H - 3.0,
                color(st),
                esc(&tr.name),
                esc(st),
                human_ms(*t)
            );
        }
    }
    if tracks.len() > rows {
        let _ = writeln!(
            s,
            "<text x=\"{LABEL_W}\" y=\"{}\">… {} more</text>",
            height - 4.0,
            tracks.len() - rows
        );
    }
    for m in faults {
        let xm = x(m.at_ms);
        let _ = writeln!(
            s,
            "<line class=\"fault\" x1=\"{xm:.1}\" x2=\"{xm:.1}\" y1=\"12\" y2=\"{:.1}\" stroke=\"#cf222e\" stroke-width=\"1.5\"><title>{} at {}</title></line><text x=\"{xm:.1}\" y=\"10\" fill=\"#cf222e\">{}</text>",
            height - 18.0,
            esc(&m.label),
            human_ms(m.at_ms),
            esc(&truncate(&m.label, 28))
        );
    }
    // time axis
    let y_axis = height - 6.0;
    for k in 0..=4u64 {
        let t = end_ms * k / 4;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{y_axis}\" text-anchor=\"middle\">{}</text>",
            x(t),
            human_ms(t)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n - 1).collect();
        format!("{t}…")
    }
}

/// One plotted series: label, colour, (x, y) points.
pub type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart of one or more series over the round number.
pub fn line_svg(kind: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let (w, h) = (700.0, 260.0);
    let (l, r, t, b) = (60.0, 20.0, 20.0, 40.0);
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().copied())
        .collect();
    let xmin = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let xmax = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let ymax = all.iter().map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9) * 1.1;
    let xs = if xmax > xmin { xmax - xmin } else { 1.0 };
    let px = |x: f64| l + (x - xmin) / xs * (w - l - r);
    let py = |y: f64| h - b - (y / ymax) * (h - t - b);
    let mut s = format!(
        "<svg class=\"plot {kind}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\"><title>{kind}</title>\n\
<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#555\"/><line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"#555\"/>\n\
<text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">round</text>\n",
        h - b,
        w - r,
        h - b,
        h - b,
        h / 2.0,
        h / 2.0,
        esc(y_label),
        (w + l) / 2.0,
        h - 6.0
    );
    for k in 0..=4 {
        let y = ymax * f64::from(k) / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            l - 4.0,
            py(y) + 4.0,
            fmt_num(y)
        );
    }
    for (i, (name, col, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline class=\"series\" fill=\"none\" stroke=\"{col}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
            path.join(" "),
            esc(name)
        );
        for (x, y) in pts {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{col}\"><title>{} round {}: {}</title></circle>",
                px(*x),
                py(*y),
                esc(name),
                x,
                fmt_num(*y)
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"{col}\">{}</text>",
            w - r - 120.0,
            t + 14.0 * (i as f64 + 1.0),
            esc(name)
        );
    }
    for x in pts_x(&all) {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            px(x),
            h - b + 14.0,
            x
        );
    }
    s.push_str("</svg>\n");
    s
}

fn pts_x(all: &[(f64, f64)]) -> Vec<f64> {
    let mut xs: Vec<f64> = all.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    if xs.len() > 12 {
        let step = xs.len().div_ceil(12);
        xs = xs.into_iter().step_by(step).collect();
    }
    xs
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn loss_accuracy_svg(rounds: &[RoundReport]) -> String {
    let loss: Vec<(f64, f64)> = rounds
        .iter()
        .filter_map(|r| r.loss.map(|l| (f64::from(r.round), l)))
        .collect();
    let acc: Vec<(f64, f64)> = rounds
        .iter()
        .filter_map(|r| r.accuracy.map(|a| (f64::from(r.round), a)))
        .collect();
    line_svg(
        "loss-accuracy",
        "loss / accuracy",
        &[("loss", "#cf222e", loss), ("accuracy", "#1a7f37", acc)],
    )
}
