//! `fl export-round` writes stored rounds in `fl aggregate`'s input format; the audit path
//! recomputes each round to the coordinator's digest (real processes, several strategies).

use std::time::Duration;

use serde_json::Value;

use crate::node::{Cluster, fl};

#[test]
fn export_round_feeds_fl_aggregate_to_the_coordinators_digest_over_rounds_and_strategies() {
    for (strategy, params) in [
        ("fedavg", vec![]),
        ("fedadam", vec!["--strategy-param", "eta=0.05"]),
    ] {
        let mut extra = vec!["--strategy", strategy];
        extra.extend(params.iter().copied());
        let mut c = Cluster::all_of_abc(3, &extra);
        c.abc_workers(&[]);
        let v = c.wait_for("3 rounds", Duration::from_secs(120), |v| {
            v["finished"] == true
        });
        let data = c.dir.path().join("data");
        let state = c.dir.path().join("state.safetensors");
        for round in 1..=3u64 {
            let out = c.dir.path().join(format!("export-{round}"));
            let o = fl()
                .args(["export-round", "--data-dir"])
                .arg(&data)
                .args(["--round", &round.to_string(), "--to"])
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "export-round {round}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let info: Value =
                serde_json::from_slice(&std::fs::read(out.join("round.json")).unwrap()).unwrap();
            let want = v["history"][round as usize - 1]["global_digest"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(info["global_digest"], want.as_str());
            let mut cmd = fl();
            cmd.args(["aggregate", "--strategy", strategy, "--updates"])
                .arg(&out)
                .arg("--global")
                .arg(out.join("global/base.safetensors"))
                .arg("--state")
                .arg(&state)
                .args([
                    "--round",
                    &round.to_string(),
                    "--seed",
                    &info["dp_seed"].to_string(),
                    "--out",
                ])
                .arg(c.dir.path().join(format!("recomputed-{round}.safetensors")));
            for p in params.iter().filter(|p| p.contains('=')) {
                cmd.args(["--param", p]);
            }
            let o = cmd.output().unwrap();
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "fl aggregate round {round}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                stdout.contains(&want),
                "{strategy} round {round}: fl aggregate printed {stdout}, coordinator {want}"
            );
        }
        c.sigkill_coordinator();
    }
}
