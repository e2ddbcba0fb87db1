//! report.html rendered by a real headless browser (Debian's chromium): the page loads, and
//! its SVG plots (node and app timelines with fault markers, round latency, loss and accuracy)
//! are in the rendered DOM.

use std::process::Command;

use harness::report::html::to_html;

use crate::support::{missing_tool, sample_run, which};

fn chromium() -> Option<std::path::PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|n| which(n))
}

#[test]
fn report_html_renders_with_its_plots_in_headless_chromium() {
    let Some(browser) = chromium() else {
        missing_tool(
            "report_html_renders_with_its_plots_in_headless_chromium",
            "chromium",
            "Debian package chromium",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let page = dir.path().join("report.html");
    std::fs::write(&page, to_html(&sample_run())).expect("write html");
    let profile = dir.path().join("profile");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium did not render the page (status {}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The DOM is the browser's parse of the page, so these are elements, not source text.
    for needle in [
        "<svg class=\"plot timeline nodes\"",
        "<svg class=\"plot timeline apps\"",
        "<svg class=\"plot round-latency\"",
        "<svg class=\"plot loss-accuracy\"",
        "<line class=\"fault\"",
        "<polyline class=\"series\"",
        "<rect class=\"seg\"",
    ] {
        assert!(dom.contains(needle), "rendered DOM lacks {needle}");
    }
    assert!(dom.contains("1 passed"), "summary missing");
    assert!(dom.contains("1 skipped"), "skipped count missing");
}

#[test]
fn report_html_is_self_contained() {
    let html = to_html(&sample_run());
    for forbidden in ["<script", "src=\"http", "href=\"http", "@import", "url("] {
        assert!(
            !html.contains(forbidden),
            "report.html references outside content: {forbidden}"
        );
    }
}
