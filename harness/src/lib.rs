//! Scenario model, runner, backends and reports.
