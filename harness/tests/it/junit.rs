//! junit.xml validates against the common JUnit XML schema (vendored as harness/tests/junit.xsd)
//! with a real validator: libxml2's `xmllint --schema`.

use std::process::Command;

use harness::report::junit::to_junit;

use crate::support::{missing_tool, root, sample_run, which};

fn xmllint_validate(xml: &str) -> Option<Result<(), String>> {
    let Some(xmllint) = which("xmllint") else {
        missing_tool(
            "junit_validates_against_the_schema",
            "xmllint",
            "Debian package libxml2-utils",
        );
        return None;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let f = dir.path().join("junit.xml");
    std::fs::write(&f, xml).expect("write junit");
    let xsd = root().join("harness/tests/junit.xsd");
    let out = Command::new(xmllint)
        .args(["--noout", "--schema"])
        .arg(&xsd)
        .arg(&f)
        .output()
        .expect("run xmllint");
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

#[test]
fn junit_validates_against_the_schema() {
    let xml = to_junit(&sample_run()).expect("junit");
    if let Some(r) = xmllint_validate(&xml) {
        r.unwrap_or_else(|e| panic!("junit.xml does not validate:\n{e}\n{xml}"));
    }
}

#[test]
fn the_schema_check_can_fail() {
    // A testcase with two outcomes and a negative time is not valid JUnit: the validator must say so.
    let bad = r#"<?xml version="1.0"?><testsuites><testsuite name="s" tests="1"><testcase name="c" time="-1"><failure/><skipped/></testcase></testsuite></testsuites>"#;
    if let Some(r) = xmllint_validate(bad) {
        assert!(r.is_err(), "xmllint accepted an invalid report");
    }
}

#[test]
fn junit_counts_failures_and_skips() {
    let xml = to_junit(&sample_run()).expect("junit");
    assert!(xml.contains("<failure"), "{xml}");
    assert!(xml.contains("<skipped"), "{xml}");
    assert!(xml.contains("every assertion was skipped"), "{xml}");
    assert!(
        xml.contains("&lt;&amp;&gt;"),
        "reason text is escaped: {xml}"
    );
}
