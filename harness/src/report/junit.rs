//! `junit.xml`: one `<testsuite>` per scenario file, one `<testcase>` per case. Skipped cases
//! carry `<skipped message=...>`, failed ones `<failure message=...>` with the step log.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::ReportError;
use crate::outcome::{CaseReport, RunReport, Status};

pub fn to_junit(run: &RunReport) -> Result<String, ReportError> {
    let mut report = Report::new(format!("fl-harness e2e {}", run.run_id));
    report.set_time(Duration::from_millis(run.wall_ms));
    let mut files: Vec<&str> = run.cases.iter().map(|c| c.file.as_str()).collect();
    files.dedup();
    let mut seen = std::collections::BTreeSet::new();
    for file in files {
        if !seen.insert(file) {
            continue;
        }
        let cases: Vec<&CaseReport> = run.cases.iter().filter(|c| c.file == file).collect();
        let Some(first) = cases.first() else { continue };
        let mut suite = TestSuite::new(first.scenario.clone());
        suite.add_property(Property::new("file", file));
        suite.add_property(Property::new("backend", run.backend.clone()));
        let mut total = Duration::ZERO;
        for c in cases {
            total += Duration::from_millis(c.wall_ms);
            suite.add_test_case(test_case(c));
        }
        suite.set_time(total);
        report.add_test_suite(suite);
    }
    report.to_string().map_err(|e| ReportError::Serialize {
        what: "junit.xml",
        message: e.to_string(),
    })
}

fn test_case(c: &CaseReport) -> TestCase {
    let status = match c.status {
        Status::Passed => TestCaseStatus::success(),
        Status::Skipped => {
            let mut s = TestCaseStatus::skipped();
            s.set_message(c.reason.clone().unwrap_or_else(|| "skipped".into()));
            s
        }
        Status::Failed => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(c.reason.clone().unwrap_or_else(|| "failed".into()));
            s.set_type(if c.interrupted {
                "interrupted"
            } else {
                "scenario-failure"
            });
            s.set_description(format!("{}\n\nrepro: {}", step_log(c), c.repro));
            s
        }
    };
    let mut tc = TestCase::new(c.name.clone(), status);
    tc.set_classname(format!("e2e.{}.{}", c.backend, c.scenario));
    tc.set_time(Duration::from_millis(c.wall_ms));
    let n_assert: usize = c.steps.iter().map(|s| s.assertions.len()).sum();
    tc.set_assertions(n_assert);
    tc.add_property(Property::new("seed", c.seed.to_string()));
    tc.add_property(Property::new("topology", c.topology.clone()));
    if let Some(h) = &c.trace_hash {
        tc.add_property(Property::new("trace_hash", h.clone()));
    }
    tc.set_system_out(step_log(c));
    tc
}

/// The steps of a case, one line each, with nested assertion lines.
pub fn step_log(c: &CaseReport) -> String {
    let mut s = String::new();
    for st in &c.steps {
        s.push_str(&format!(
            "[{:>7}] {}[{}] {} @{}: {}\n",
            st.status.as_str(),
            st.section,
            st.index,
            st.description,
            super::human_ms(st.at_ms),
            st.detail
        ));
        for a in &st.assertions {
            s.push_str(&format!(
                "          - [{}] {} {}: {}\n",
                a.status.as_str(),
                a.kind,
                a.expected,
                a.detail
            ));
        }
    }
    s
}
