//! Every kind of bad scenario input gets `file:line:column`, what was expected, and the closest
//! valid word where there is one. One test pins the exact text a person sees.

use std::collections::BTreeSet;

use harness::load::{Catalog, LoadError, parse_str};

const FILE: &str = "scenarios/bad.yaml";

fn catalog() -> Catalog {
    Catalog {
        topologies: BTreeSet::from(["tiny".to_string(), "mlworkbench-kvm".to_string()]),
        gitops_repos: BTreeSet::new(),
    }
}

/// Parses and returns the error text; panics if the input was accepted.
fn err(text: &str) -> String {
    match parse_str(FILE, text, &catalog()) {
        Ok(_) => panic!("accepted a bad scenario:\n{text}"),
        Err(LoadError::Invalid(d)) => {
            assert!(!d.is_empty());
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => e.to_string(),
    }
}

const GOOD: &str = "name: t
topology: tiny
steps:
  - wait: { cluster: ready, timeout: 20m }
  - assert:
      - etcd.quorum: true
";

#[test]
fn the_good_base_is_accepted() {
    let s = parse_str(FILE, GOOD, &catalog()).expect("valid");
    assert_eq!(s.steps.len(), 2);
    assert_eq!(s.seed, 42);
}

#[test]
fn malformed_scenario_shows_the_exact_error_text() {
    let text = "name: cp-loss
topology: tiny
steps:
  - wait: { cluster: ready, timeout: 20m }
  - fault: { kil_node: cp-2 }
  - assert:
      - etcd.quorum: true
";
    let e = err(text);
    let expected = "scenarios/bad.yaml:5:14: unknown fault `kil_node`, did you mean `kill_node`? (expected one of `kill_node`, `restore_node`, `kill_process`, `restore_process`, `partition`, `heal_partition`, `link`, `etcd_member_loss`, `disk_full`, `clock_skew`, `argocd_drift`, `git_commit`, `fl_client_dropout`, `fl_straggler`, `fl_byzantine`)
  |
5 |   - fault: { kil_node: cp-2 }
  |              ^";
    assert_eq!(e, expected);
}

#[test]
fn yaml_syntax_error_has_a_location() {
    let e = err("name: t\ntopology: tiny\nsteps:\n  - wait: { cluster: ready, timeout: 20m\n");
    assert!(e.starts_with("scenarios/bad.yaml:"), "{e}");
    let loc: Vec<&str> = e.split(':').take(3).collect();
    assert!(
        loc[1].parse::<u32>().is_ok() && loc[2].parse::<u32>().is_ok(),
        "{e}"
    );
}

#[test]
fn unknown_top_level_key_suggests_the_closest() {
    let e = err(&GOOD.replace("steps:", "stepz:"));
    assert!(
        e.contains("scenarios/bad.yaml:3:1: unknown scenario key `stepz`, did you mean `steps`?"),
        "{e}"
    );
}

#[test]
fn unknown_assertion_suggests_the_closest() {
    let e = err(&GOOD.replace("etcd.quorum", "etcd.quorom"));
    assert!(
        e.contains(":6:9: unknown assertion `etcd.quorom`, did you mean `etcd.quorum`?"),
        "{e}"
    );
}

#[test]
fn unknown_step_key_suggests_the_closest() {
    let e = err(&GOOD.replace("- wait:", "- wiat:"));
    assert!(
        e.contains(":4:5: unknown step key `wiat`, did you mean `wait`?"),
        "{e}"
    );
}

#[test]
fn unknown_strategy_suggests_the_closest() {
    let text =
        GOOD.to_string() + "workload:\n  fl: { clients: 10, rounds: 3, strategy: fedavgg }\n";
    let e = err(&text);
    assert!(
        e.contains("unknown strategy `fedavgg`, did you mean `fedavg`?"),
        "{e}"
    );
}

#[test]
fn unknown_node_condition_suggests_the_closest() {
    let e = err(&GOOD.replace(
        "- etcd.quorum: true",
        "- node.condition: { node: cp-1, condition: Reddy }",
    ));
    assert!(
        e.contains("unknown node condition `Reddy`, did you mean `Ready`?"),
        "{e}"
    );
}

#[test]
fn a_word_far_from_every_candidate_gets_no_suggestion() {
    let e = err(&GOOD.replace("- wait:", "- banana:"));
    assert!(
        e.contains("unknown step key `banana` (expected one of"),
        "{e}"
    );
    assert!(!e.contains("did you mean"), "{e}");
}

#[test]
fn wrong_type_says_what_was_expected() {
    let text = GOOD.to_string() + "workload:\n  fl: { clients: ten, rounds: 3 }\n";
    let e = err(&text);
    assert!(e.starts_with("scenarios/bad.yaml:8:"), "{e}");
    assert!(
        e.contains("u32") || e.contains("integer") || e.contains("ten"),
        "{e}"
    );
}

#[test]
fn bad_duration_says_the_expected_shape() {
    let e = err(&GOOD.replace("timeout: 20m", "timeout: 20x"));
    assert!(e.contains(":4:"), "{e}");
    assert!(
        e.contains("invalid duration `20x`: unknown unit `x`"),
        "{e}"
    );
    let e = err(&GOOD.replace("timeout: 20m", "timeout: 20"));
    assert!(e.contains("missing unit"), "{e}");
}

#[test]
fn missing_required_key_is_named() {
    let e = err(&GOOD.replace("topology: tiny\n", ""));
    assert!(e.contains("missing field `topology`"), "{e}");
}

#[test]
fn empty_file_is_an_error() {
    let e = err("");
    assert!(e.starts_with("scenarios/bad.yaml"), "{e}");
}

#[test]
fn step_with_two_actions_is_rejected_at_its_line() {
    let e = err(&GOOD.replace(
        "  - wait: { cluster: ready, timeout: 20m }\n",
        "  - wait: { cluster: ready, timeout: 20m }\n    fault: { kill_node: cp-2 }\n",
    ));
    assert!(
        e.contains("scenarios/bad.yaml:4:5: steps[0] has 2 actions (wait, fault): split it"),
        "{e}"
    );
}

#[test]
fn step_without_action_is_rejected() {
    let e = err(&GOOD.replace(
        "  - wait: { cluster: ready, timeout: 20m }\n",
        "  - name: nothing\n",
    ));
    assert!(e.contains("steps[0] has no action"), "{e}");
}

#[test]
fn wait_without_timeout_is_rejected() {
    let e = err(&GOOD.replace(", timeout: 20m", ""));
    assert!(
        e.contains("`wait: {cluster: ...}` needs a `timeout`"),
        "{e}"
    );
}

#[test]
fn wait_with_two_conditions_is_rejected() {
    let e = err(&GOOD.replace("cluster: ready,", "cluster: ready, node: cp-1,"));
    assert!(e.contains("`wait` needs exactly one of"), "{e}");
    assert!(e.contains("got cluster, node"), "{e}");
}

#[test]
fn unknown_topology_suggests_the_closest() {
    let e = err(&GOOD.replace("topology: tiny", "topology: mlworkbench-kv"));
    assert!(e.contains("scenarios/bad.yaml:2:11: unknown topology `mlworkbench-kv`, did you mean `mlworkbench-kvm`?"), "{e}");
}

#[test]
fn a_scenario_without_assertions_is_rejected() {
    let e = err("name: t\ntopology: tiny\nsteps:\n  - wait: { duration: 1m }\n");
    assert!(e.contains("no `assert` step"), "{e}");
}

#[test]
fn fl_steps_need_an_fl_workload() {
    let e = err(&GOOD.replace("- etcd.quorum: true", "- fl.accuracy: { at_least: 0.8 }"));
    assert!(e.contains("`fl.accuracy` needs a `workload.fl`"), "{e}");
}

#[test]
fn trigger_needs_exactly_one_condition() {
    let text = GOOD.replace(
        "  - assert:",
        "  - at: { time: 1m, after: 2m }\n    fault: { kill_node: cp-1 }\n  - assert:",
    );
    let e = err(&text);
    assert!(
        e.contains("`at` needs exactly one of `time`, `after`, `fl.round` (got time, after)"),
        "{e}"
    );
}

#[test]
fn client_set_needs_exactly_one_selector() {
    let text = "name: t
topology: tiny
workload:
  fl: { clients: 10, rounds: 3 }
steps:
  - fault: { fl_client_dropout: { fraction: 0.2, count: 2 } }
  - assert:
      - fl.round_completed: { round: 3 }
";
    let e = err(text);
    assert!(
        e.contains("a client set needs exactly one of `fraction`, `count`, `ids`"),
        "{e}"
    );
}

#[test]
fn invalid_model_name_is_explained() {
    let text = GOOD.to_string() + "workload:\n  fl: { clients: 10, rounds: 3, model: cnn-5 }\n";
    let e = err(&text);
    assert!(
        e.contains("invalid model `cnn-5`: expected `softmax-<inputs>-<classes>`"),
        "{e}"
    );
}

#[test]
fn accuracy_bounds_are_fractions() {
    let text = "name: t
topology: tiny
workload:
  fl: { clients: 10, rounds: 3 }
steps:
  - assert:
      - fl.accuracy: { at_least: 80 }
";
    let e = err(text);
    assert!(e.contains("bounds are fractions in [0, 1], got 80"), "{e}");
}

#[test]
fn several_problems_are_all_reported() {
    let text = "name: t
topology: tiny
steps:
  - wait: { cluster: ready }
  - name: empty
";
    let e = err(text);
    assert!(e.contains("needs a `timeout`"), "{e}");
    assert!(e.contains("steps[1] has no action"), "{e}");
    assert!(e.contains("no `assert` step"), "{e}");
}
