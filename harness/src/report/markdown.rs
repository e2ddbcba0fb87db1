//! `report.md`: the summary table, then each case that did not pass, then every case's steps.

use super::human_ms;
use crate::outcome::{RunReport, Status};

fn icon(s: Status) -> &'static str {
    match s {
        Status::Passed => "PASS",
        Status::Failed => "FAIL",
        Status::Skipped => "SKIP",
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn to_markdown(run: &RunReport) -> String {
    let s = &run.summary;
    let mut out = format!(
        "# e2e run {}\n\nbackend `{}` · {} case(s): **{} passed, {} failed, {} skipped** · wall {} · started {}\n\n",
        run.run_id,
        run.backend,
        s.total,
        s.passed,
        s.failed,
        s.skipped,
        human_ms(run.wall_ms),
        run.started_at
    );
    if s.interrupted > 0 {
        out.push_str(&format!(
            "**Interrupted**: {} case(s) stopped by Ctrl-C.\n\n",
            s.interrupted
        ));
    }
    out.push_str("| case | topology | seed | status | virtual time | wall | reason |\n|---|---|---|---|---|---|---|\n");
    for c in &run.cases {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} | {} |\n",
            cell(&c.name),
            c.topology,
            c.seed,
            icon(c.status),
            human_ms(c.virtual_ms),
            human_ms(c.wall_ms),
            cell(c.reason.as_deref().unwrap_or(""))
        ));
    }
    if let Some(b) = &run.baseline {
        out.push_str(&format!(
            "\n## Baseline `{}`\n\nA metric regresses when it is worse by more than **{}%**. {} regression(s).\n\n| case | metric | baseline | now | worse by | |\n|---|---|---|---|---|---|\n",
            b.source, b.threshold_pct, b.regressions
        ));
        for r in &b.rows {
            out.push_str(&format!(
                "| `{}` | {} | {:.3} | {:.3} | {:+.1}% | {} |\n",
                cell(&r.case),
                r.metric,
                r.baseline,
                r.current,
                r.worse_by_pct,
                if r.regression { "REGRESSION" } else { "" }
            ));
        }
    }
    if let Some(cmp) = &run.comparison {
        out.push_str(&format!(
            "\n## Sim vs real (`sim` against `{}`)\n\nTimings agree within **{}%** (a measurement, not a verdict); counts and digests must be equal where the accepted set is. {} difference(s), **{} mismatch(es)**.\n",
            cmp.real_backend, cmp.tolerance_pct, cmp.differences, cmp.mismatches
        ));
        for c in &cmp.cases {
            out.push_str(&format!(
                "\n### `{}` (sim {}, real {})\n\n| quantity | sim | real | agreement | note |\n|---|---|---|---|---|\n",
                cell(&c.case),
                c.sim_status.as_str(),
                c.real_status.as_str()
            ));
            for r in &c.rows {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    cell(&r.quantity),
                    cell(&r.sim),
                    cell(&r.real),
                    crate::compare::agreement_word(r.agreement),
                    cell(&r.note)
                ));
            }
        }
    }
    out.push_str("\n## Cases\n");
    for c in &run.cases {
        out.push_str(&format!("\n### {} `{}`\n\n", icon(c.status), c.name));
        if !c.description.is_empty() {
            out.push_str(&format!("{}\n\n", c.description));
        }
        out.push_str(&format!(
            "file `{}` · topology `{}` · seed {} · virtual {} · wall {}",
            c.file,
            c.topology,
            c.seed,
            human_ms(c.virtual_ms),
            human_ms(c.wall_ms)
        ));
        if let Some(h) = &c.trace_hash {
            out.push_str(&format!(" · trace `{}`", &h[..h.len().min(16)]));
        }
        out.push_str("\n\n");
        if let Some(r) = &c.reason {
            out.push_str(&format!("> {}: {}\n\n", c.status.as_str(), cell(r)));
        }
        for st in &c.steps {
            out.push_str(&format!(
                "- {} `{}[{}]` {} @{} — {}\n",
                icon(st.status),
                st.section,
                st.index,
                cell(&st.description),
                human_ms(st.at_ms),
                cell(&st.detail)
            ));
            if let Some(n) = &st.note {
                out.push_str(&format!("  - _why_: {}\n", cell(n)));
            }
            for a in &st.assertions {
                out.push_str(&format!(
                    "  - {} `{}` expected `{}` — {}\n",
                    icon(a.status),
                    a.kind,
                    cell(&a.expected),
                    cell(&a.detail)
                ));
            }
        }
        if !c.rounds.is_empty() {
            out.push_str(
                "\n| round | latency | clients | loss | accuracy |\n|---|---|---|---|---|\n",
            );
            for r in &c.rounds {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    r.round,
                    human_ms(r.latency_ms),
                    r.clients_aggregated,
                    r.loss.map(|v| format!("{v:.4}")).unwrap_or_default(),
                    r.accuracy.map(|v| format!("{v:.4}")).unwrap_or_default()
                ));
            }
        }
        if c.status == Status::Failed {
            out.push_str(&format!("\nrepro: `{}`\n", c.repro));
        }
    }
    out
}
