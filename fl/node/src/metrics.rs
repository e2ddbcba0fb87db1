//! Prometheus metrics in the text exposition format (version 0.0.4), served at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Round latency buckets in seconds: from a sub-second loopback round to a 30-minute one.
const LATENCY_BUCKETS_S: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];
/// Buckets of the storage steps (a commit: a few fsyncs): from a cached write to a stalled disk.
const STORAGE_BUCKETS_S: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// The buckets of histogram `name`.
fn buckets(name: &str) -> &'static [f64] {
    if name == "fl_state_commit_seconds" {
        STORAGE_BUCKETS_S
    } else {
        LATENCY_BUCKETS_S
    }
}

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        for (i, b) in bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// (name, labels) -> value. Labels rendered as `k="v",...`.
    counters: BTreeMap<(&'static str, String), u64>,
    gauges: BTreeMap<&'static str, f64>,
    histograms: BTreeMap<&'static str, Histogram>,
}

/// The process's metrics registry.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Metric names and help texts (one place, so `/metrics` documents itself).
const HELP: &[(&str, &str, &str)] = &[
    (
        "fl_rounds_completed_total",
        "counter",
        "rounds completed (with or without a new global model)",
    ),
    (
        "fl_rounds_failed_total",
        "counter",
        "rounds whose fit stage produced no new model, by reason",
    ),
    (
        "fl_updates_accepted_total",
        "counter",
        "updates accepted and durably stored",
    ),
    (
        "fl_updates_replayed_total",
        "counter",
        "uploads acknowledged again as idempotent replays",
    ),
    (
        "fl_updates_rejected_total",
        "counter",
        "uploads rejected, by reason",
    ),
    (
        "fl_requests_rejected_total",
        "counter",
        "requests answered with a 4xx error, by endpoint and reason",
    ),
    (
        "fl_update_bytes_total",
        "counter",
        "bytes of accepted updates",
    ),
    (
        "fl_clients_registered_total",
        "counter",
        "register_client calls that succeeded",
    ),
    (
        "fl_state_commits_total",
        "counter",
        "commits of the round machine's state to the metadata database",
    ),
    (
        "fl_state_commit_events_total",
        "counter",
        "request events (uploads, registrations, evaluations) committed; over fl_state_commits_total it is the group-commit batch size",
    ),
    (
        "fl_current_round",
        "gauge",
        "the round in progress (0 before the first)",
    ),
    (
        "fl_registered_clients",
        "gauge",
        "clients registered with the coordinator",
    ),
    (
        "fl_global_accuracy",
        "gauge",
        "centralised accuracy of the current global model",
    ),
    (
        "fl_round_latency_seconds",
        "histogram",
        "round wall time, start to completion",
    ),
    (
        "fl_aggregation_seconds",
        "histogram",
        "time to aggregate a round and store the model",
    ),
    (
        "fl_state_commit_seconds",
        "histogram",
        "time to make a state commit durable (directory fsyncs and the metadata transaction)",
    ),
];

impl Metrics {
    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)], by: u64) {
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect::<Vec<_>>()
            .join(",");
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *g.counters.entry((name, labels)).or_default() += by;
    }

    pub fn set(&self, name: &'static str, v: f64) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .gauges
            .insert(name, v);
    }

    pub fn observe(&self, name: &'static str, v: f64) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .histograms
            .entry(name)
            .or_default()
            .observe(buckets(name), v);
    }

    /// Current value of a counter (sum over label sets matching `labels_contain`).
    #[cfg(test)]
    pub fn counter(&self, name: &str, labels_contain: &str) -> u64 {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.counters
            .iter()
            .filter(|((n, l), _)| *n == name && l.contains(labels_contain))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn render(&self) -> String {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            match *kind {
                "counter" => {
                    let mut any = false;
                    for ((n, l), v) in &g.counters {
                        if n == name {
                            any = true;
                            if l.is_empty() {
                                let _ = writeln!(out, "{name} {v}");
                            } else {
                                let _ = writeln!(out, "{name}{{{l}}} {v}");
                            }
                        }
                    }
                    if !any
                        && !name.ends_with("rejected_total")
                        && *name != "fl_rounds_failed_total"
                    {
                        let _ = writeln!(out, "{name} 0");
                    }
                }
                "gauge" => {
                    if let Some(v) = g.gauges.get(name) {
                        let _ = writeln!(out, "{name} {v}");
                    }
                }
                _ => {
                    let empty = Histogram::default();
                    let h = g.histograms.get(name).unwrap_or(&empty);
                    for (i, b) in buckets(name).iter().enumerate() {
                        let _ = writeln!(
                            out,
                            "{name}_bucket{{le=\"{b}\"}} {}",
                            h.counts.get(i).copied().unwrap_or(0)
                        );
                    }
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
                    let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
                }
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::default();
        m.inc("fl_updates_rejected_total", &[("reason", "bad_shape")], 2);
        m.set("fl_current_round", 3.0);
        m.observe("fl_round_latency_seconds", 0.2);
        m.observe("fl_state_commit_seconds", 0.003);
        let t = m.render();
        assert!(
            t.contains("fl_updates_rejected_total{reason=\"bad_shape\"} 2"),
            "{t}"
        );
        assert!(t.contains("fl_current_round 3"), "{t}");
        assert!(
            t.contains("fl_round_latency_seconds_bucket{le=\"0.25\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("fl_round_latency_seconds_bucket{le=\"0.1\"} 0"),
            "{t}"
        );
        assert!(t.contains("fl_updates_accepted_total 0"), "{t}");
        assert!(
            t.contains("fl_state_commit_seconds_bucket{le=\"0.0025\"} 0")
                && t.contains("fl_state_commit_seconds_bucket{le=\"0.005\"} 1"),
            "{t}"
        );
        assert_eq!(m.counter("fl_updates_rejected_total", "bad_shape"), 2);
    }
}
