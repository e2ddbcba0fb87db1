//! Loading scenario files: YAML -> [`Scenario`], with errors a person can act on
//! (`file:line:column`, what was expected, the closest valid word), then semantic checks, then
//! matrix expansion into [`Case`]s.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_saphyr::{SnippetMode, Spanned};

use crate::scenario::{
    Action, Assertion, CaseParams, FlWorkload, Scenario, Step, Strategy, Trigger,
};

/// A problem in a scenario file, located in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when unknown.
    pub line: u64,
    /// 1-based; 0 when unknown.
    pub column: u64,
    pub message: String,
    /// The offending source line with a caret under the column, when known.
    pub snippet: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )?;
        } else {
            write!(f, "{}: {}", self.file, self.message)?;
        }
        if let Some(s) = &self.snippet {
            write!(f, "\n{s}")?;
        }
        Ok(())
    }
}

/// Why a scenario file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("failed to read scenario file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", join_diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

fn join_diagnostics(d: &[Diagnostic]) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl LoadError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            LoadError::Invalid(d) => d,
            LoadError::Io { .. } => &[],
        }
    }
}

/// What the loader checks names against (topologies that exist in the checkout).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Known topology names; empty means "do not check".
    pub topologies: BTreeSet<String>,
    /// Known GitOps repos under `fixtures/gitops/`; empty means "do not check".
    pub gitops_repos: BTreeSet<String>,
}

impl Catalog {
    /// Lists `fixtures/topologies/*.yaml` and `fixtures/gitops/*/` under `root`.
    pub fn from_workspace(root: &Path) -> Self {
        let mut c = Catalog::default();
        if let Ok(rd) = std::fs::read_dir(root.join("fixtures/topologies")) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                    && let Some(stem) = p.file_stem()
                {
                    c.topologies.insert(stem.to_string_lossy().into_owned());
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(root.join("fixtures/gitops")) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    c.gitops_repos
                        .insert(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        c
    }
}

/// Reads and checks one scenario file.
pub fn load_file(path: &Path, catalog: &Catalog) -> Result<Scenario, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_str(&path.display().to_string(), &text, catalog)
}

/// Parses and checks scenario text; `file` is the name used in messages.
pub fn parse_str(file: &str, text: &str, catalog: &Catalog) -> Result<Scenario, LoadError> {
    let scenario: Scenario = serde_saphyr::from_str(text)
        .map_err(|e| LoadError::Invalid(vec![from_yaml_error(file, text, &e)]))?;
    let diags = check(file, text, &scenario, catalog);
    if diags.is_empty() {
        Ok(scenario)
    } else {
        Err(LoadError::Invalid(diags))
    }
}

fn from_yaml_error(file: &str, text: &str, e: &serde_saphyr::Error) -> Diagnostic {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let opts = serde_saphyr::render_options! { snippets: SnippetMode::Off };
    let raw = e.render_with_options(opts);
    let message = improve_message(strip_location_suffix(&raw));
    Diagnostic {
        file: file.to_string(),
        line,
        column,
        message,
        snippet: snippet(text, line, column),
    }
}

/// serde-saphyr appends ` at line N column M`; we print the location up front instead.
fn strip_location_suffix(raw: &str) -> &str {
    let first = raw.lines().next().unwrap_or(raw);
    match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    }
}

/// The source line and a caret under the column.
pub fn snippet(text: &str, line: u64, column: u64) -> Option<String> {
    if line == 0 {
        return None;
    }
    let src = text.lines().nth(usize::try_from(line - 1).ok()?)?;
    let width = line.to_string().len();
    let pad = " ".repeat(usize::try_from(column.saturating_sub(1)).unwrap_or(0));
    Some(format!(
        "{:w$} |\n{line} | {src}\n{:w$} | {pad}^",
        "",
        "",
        w = width
    ))
}

/// Rewrites serde's `unknown variant/field` messages: names what kind of word it is and
/// suggests the closest valid one.
pub fn improve_message(msg: &str) -> String {
    let (what, rest) = if let Some(r) = msg.strip_prefix("unknown variant `") {
        ("variant", r)
    } else if let Some(r) = msg.strip_prefix("unknown field `") {
        ("field", r)
    } else {
        return msg.to_string();
    };
    let Some(end) = rest.find('`') else {
        return msg.to_string();
    };
    let word = &rest[..end];
    let expected = backticked(&rest[end + 1..]);
    let kind = classify(what, &expected);
    let mut out = format!("unknown {kind} `{word}`");
    if let Some(best) = did_you_mean(word, &expected) {
        out.push_str(&format!(", did you mean `{best}`?"));
    }
    if expected.is_empty() {
        out.push_str(" (no keys are allowed here)");
    } else {
        let list: Vec<String> = expected.iter().map(|w| format!("`{w}`")).collect();
        out.push_str(&format!(" (expected one of {})", list.join(", ")));
    }
    out
}

/// The words after `expected one of` in a serde message, with or without backticks around them
/// (serde-saphyr 2 joins the bare words with `, `; serde's own messages quote each one).
fn backticked(s: &str) -> Vec<String> {
    if let Some(i) = s.find("expected one of ") {
        let list = &s[i + "expected one of ".len()..];
        if !list.contains('`') {
            return list
                .split(", ")
                .map(|w| w.trim().trim_end_matches('.').to_string())
                .filter(|w| !w.is_empty())
                .collect();
        }
    }
    let mut out = Vec::new();
    let mut parts = s.split('`');
    parts.next();
    while let Some(w) = parts.next() {
        out.push(w.to_string());
        parts.next();
    }
    out
}

fn classify(what: &str, expected: &[String]) -> &'static str {
    let has = |w: &str| expected.iter().any(|e| e == w);
    if has("kill_node") {
        "fault"
    } else if has("etcd.quorum") {
        "assertion"
    } else if has("fedavg") {
        "strategy"
    } else if has("wait") && has("fault") {
        "step key"
    } else if has("topology") && has("steps") {
        "scenario key"
    } else if has("duration") && has("cluster") {
        "wait condition"
    } else if has("after") && has("time") {
        "trigger"
    } else if has("clients") && has("rounds") {
        "fl workload key"
    } else if has("seeds") {
        "matrix key"
    } else if has("NotReady") {
        "node condition"
    } else if has("Running") && has("Pending") {
        "pod phase"
    } else if has("Synced") {
        "sync status"
    } else if has("Healthy") {
        "health status"
    } else if has("fit") && has("aggregate") {
        "round phase"
    } else if has("etcd") && has("kubelet") {
        "process"
    } else if has("sign_flip") {
        "attack"
    } else if has("logs") {
        "collect kind"
    } else if has("fl") && has("k8s") {
        "workload key"
    } else if has("StatefulSet") {
        "workload kind"
    } else if what == "field" {
        "key"
    } else {
        "value"
    }
}

/// The closest word by edit distance, if close enough to be a plausible typo.
pub fn did_you_mean<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['-', '.'], "_");
    let w = norm(word);
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        let d = strsim::osa_distance(&w, &norm(c));
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c.as_str()));
        }
    }
    let (d, c) = best?;
    let limit = (word.chars().count() / 3).max(2);
    (d <= limit).then_some(c)
}

/// Semantic checks that the types cannot express. Returns every problem found.
fn check(file: &str, text: &str, s: &Scenario, catalog: &Catalog) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let mut at = |line: u64, column: u64, message: String| {
        diags.push(Diagnostic {
            file: file.to_string(),
            line,
            column,
            message,
            snippet: snippet(text, line, column),
        });
    };
    let key_pos = |key: &str| -> (u64, u64) { find_key(text, key) };

    if s.name.trim().is_empty() {
        let (l, c) = key_pos("name");
        at(l, c, "`name` must not be empty".into());
    } else if !s
        .name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        let (l, c) = key_pos("name");
        at(
            l,
            c,
            format!(
                "invalid name `{}`: use letters, digits, `-` and `_` (it becomes a test name)",
                s.name
            ),
        );
    }
    let mut topologies: Vec<&str> = vec![s.topology.as_str()];
    if let Some(m) = &s.matrix {
        topologies.extend(m.topologies.iter().map(String::as_str));
    }
    if !catalog.topologies.is_empty() {
        let known: Vec<String> = catalog.topologies.iter().cloned().collect();
        for t in topologies {
            if !catalog.topologies.contains(t) {
                let (l, c) = find_value(text, t);
                let hint = did_you_mean(t, &known)
                    .map(|b| format!(", did you mean `{b}`?"))
                    .unwrap_or_default();
                at(
                    l,
                    c,
                    format!(
                        "unknown topology `{t}`{hint} (expected one of the files in fixtures/topologies/: {})",
                        known.join(", ")
                    ),
                );
            }
        }
    }
    if let Some(g) = &s.workload.gitops
        && !catalog.gitops_repos.is_empty()
        && !catalog.gitops_repos.contains(&g.repo)
    {
        let known: Vec<String> = catalog.gitops_repos.iter().cloned().collect();
        let (l, c) = find_value(text, &g.repo);
        let hint = did_you_mean(&g.repo, &known)
            .map(|b| format!(", did you mean `{b}`?"))
            .unwrap_or_default();
        at(
            l,
            c,
            format!(
                "unknown gitops repo `{}`{hint} (expected a folder of fixtures/gitops/: {})",
                g.repo,
                known.join(", ")
            ),
        );
    }
    if let Some(fl) = &s.workload.fl {
        let (l, c) = key_pos("fl");
        if fl.clients == 0 || fl.clients > 10_000 {
            at(
                l,
                c,
                format!(
                    "`workload.fl.clients` must be 1..=10000, got {}",
                    fl.clients
                ),
            );
        }
        if fl.rounds == 0 || fl.rounds > 10_000 {
            at(
                l,
                c,
                format!("`workload.fl.rounds` must be 1..=10000, got {}", fl.rounds),
            );
        }
        if let Some(m) = fl.min_fit_clients
            && m > fl.clients
        {
            at(
                l,
                c,
                format!(
                    "`workload.fl.min_fit_clients` ({m}) is more than `clients` ({})",
                    fl.clients
                ),
            );
        }
        if let Err(e) = crate::model::ModelSpec::parse(&fl.model) {
            let (l, c) = find_value(text, &fl.model);
            at(l, c, e);
        }
        if fl.flower.is_some() && fl.system != crate::scenario::FlSystem::Flower {
            let (l, c) = key_pos("flower");
            at(
                l,
                c,
                "`workload.fl.flower` sets a Flower job's options: it needs `workload.fl.system: flower`".into(),
            );
        }
        if fl.system == crate::scenario::FlSystem::Flower {
            let params: fl_core::strategy::Params = fl
                .flower
                .iter()
                .flat_map(|f| f.strategy_params.iter())
                .map(|(k, v)| (k.clone(), v.to_text()))
                .collect();
            if let Err(e) = fl_core::strategy::build_strategy(
                fl.strategy.as_str(),
                &params,
                fl_core::strategy::Limits::default(),
                0,
            ) {
                let (l, c) = key_pos("strategy_params");
                at(
                    l,
                    c,
                    format!(
                        "`workload.fl.flower.strategy_params` for `{}`: {e}",
                        fl.strategy.as_str()
                    ),
                );
            }
        }
    }
    if s.steps.is_empty() {
        let (l, c) = key_pos("steps");
        at(
            l,
            c,
            "`steps` is empty: a scenario needs at least one step".into(),
        );
    }
    let has_fl = s.workload.fl.is_some();
    for (section, steps) in [("steps", &s.steps), ("finally", &s.finally)] {
        for (i, st) in steps.iter().enumerate() {
            for (l, c, m) in check_step(section, i, st, has_fl) {
                at(l, c, m);
            }
        }
    }
    let n_asserts: usize = s
        .steps
        .iter()
        .filter_map(|s| s.value.assert.as_ref())
        .map(Vec::len)
        .sum();
    if n_asserts == 0 {
        let (l, c) = key_pos("steps");
        at(
            l,
            c,
            "no `assert` step: a scenario must check something that can fail".into(),
        );
    }
    if let Some(m) = &s.matrix {
        let (l, c) = key_pos("matrix");
        if (!m.strategies.is_empty() || !m.clients.is_empty()) && !has_fl {
            at(
                l,
                c,
                "`matrix.strategies` and `matrix.clients` need a `workload.fl`".into(),
            );
        }
        if m.seeds.len()
            * m.topologies.len().max(1)
            * m.strategies.len().max(1)
            * m.clients.len().max(1)
            > 256
        {
            at(l, c, "the matrix expands to more than 256 cases".into());
        }
    }
    diags
}

fn check_step(
    section: &str,
    i: usize,
    st: &Spanned<Step>,
    has_fl: bool,
) -> Vec<(u64, u64, String)> {
    let mut out = Vec::new();
    let (l, c) = (st.referenced.line(), st.referenced.column());
    let step = &st.value;
    let what = format!("{section}[{i}]");
    let keys = step.action_keys();
    match keys.len() {
        0 => out.push((
            l,
            c,
            format!("{what} has no action (expected exactly one of `wait`, `fault`, `assert`, `fl.start`, `collect`)"),
        )),
        1 => {}
        _ => out.push((
            l,
            c,
            format!(
                "{what} has {} actions ({}): split it into one step per action",
                keys.len(),
                keys.join(", ")
            ),
        )),
    }
    if let Some(t) = &step.at {
        let tk = t.condition_keys();
        if tk.len() != 1 {
            out.push((
                l,
                c,
                format!(
                    "{what}: `at` needs exactly one of `time`, `after`, `fl.round` (got {})",
                    if tk.is_empty() {
                        "none".to_string()
                    } else {
                        tk.join(", ")
                    }
                ),
            ));
        }
        if t.phase.is_some() && t.fl_round.is_none() {
            out.push((l, c, format!("{what}: `at.phase` needs `at.fl.round`")));
        }
        if t.fl_round.is_some() && !has_fl {
            out.push((l, c, format!("{what}: `at.fl.round` needs a `workload.fl`")));
        }
        if matches!(step.action(), Some(Action::Wait(_))) {
            out.push((
                l,
                c,
                format!("{what}: `at` cannot be combined with `wait` (a wait already waits)"),
            ));
        }
    }
    if let Some(w) = &step.wait {
        let wk = w.condition_keys();
        if wk.len() != 1 {
            out.push((
                l,
                c,
                format!(
                    "{what}: `wait` needs exactly one of `duration`, `cluster`, `node`, `pod`, `workload`, `app`, `kustomization`, `fl.round` (got {})",
                    if wk.is_empty() { "none".to_string() } else { wk.join(", ") }
                ),
            ));
        } else if wk[0] != "duration" && w.timeout.is_none() {
            out.push((
                l,
                c,
                format!("{what}: `wait: {{{}: ...}}` needs a `timeout`", wk[0]),
            ));
        }
        if w.condition.is_some() && w.node.is_none() {
            out.push((
                l,
                c,
                format!("{what}: `wait.condition` goes with `wait.node`"),
            ));
        }
        if w.phase.is_some() && w.pod.is_none() {
            out.push((l, c, format!("{what}: `wait.phase` goes with `wait.pod`")));
        }
        if (w.sync.is_some() || w.health.is_some()) && w.app.is_none() {
            out.push((
                l,
                c,
                format!("{what}: `wait.sync`/`wait.health` go with `wait.app`"),
            ));
        }
        if w.fl_round.is_some() && !has_fl {
            out.push((
                l,
                c,
                format!("{what}: `wait.fl.round` needs a `workload.fl`"),
            ));
        }
    }
    if step.fl_start.is_some() && !has_fl {
        out.push((l, c, format!("{what}: `fl.start` needs a `workload.fl`")));
    }
    if let Some(a) = &step.assert {
        if a.is_empty() {
            out.push((l, c, format!("{what}: `assert` is an empty list")));
        }
        for x in a {
            if x.kind().starts_with("fl.") && !has_fl {
                out.push((
                    l,
                    c,
                    format!("{what}: `{}` needs a `workload.fl`", x.kind()),
                ));
            }
            match x {
                Assertion::FlAccuracy {
                    at_least, at_most, ..
                } => {
                    if at_least.is_none() && at_most.is_none() {
                        out.push((
                            l,
                            c,
                            format!("{what}: `fl.accuracy` needs `at_least` or `at_most`"),
                        ));
                    }
                    for v in [at_least, at_most].into_iter().flatten() {
                        if !(0.0..=1.0).contains(v) {
                            out.push((
                                l,
                                c,
                                format!(
                                    "{what}: `fl.accuracy` bounds are fractions in [0, 1], got {v}"
                                ),
                            ));
                        }
                    }
                }
                Assertion::FlRoundLatency { p50, p95, p99 }
                    if p50.is_none() && p95.is_none() && p99.is_none() =>
                {
                    out.push((
                        l,
                        c,
                        format!("{what}: `fl.round_latency` needs `p50`, `p95` or `p99`"),
                    ));
                }
                Assertion::WorkloadReady {
                    at_least, at_most, ..
                } if at_least.is_none() && at_most.is_none() => {
                    out.push((
                        l,
                        c,
                        format!("{what}: `workload.ready` needs `at_least` or `at_most`"),
                    ));
                }
                Assertion::FlClientsAggregated {
                    at_least, at_most, ..
                } if at_least.is_none() && at_most.is_none() => {
                    out.push((
                        l,
                        c,
                        format!("{what}: `fl.clients_aggregated` needs `at_least` or `at_most`"),
                    ));
                }
                Assertion::AppStatus { sync, health, .. } if sync.is_none() && health.is_none() => {
                    out.push((
                        l,
                        c,
                        format!("{what}: `app.status` needs `sync` or `health`"),
                    ));
                }
                _ => {}
            }
        }
    }
    if let Some(crate::scenario::Fault::FlClientDropout(cs))
    | Some(crate::scenario::Fault::FlStraggler { clients: cs, .. })
    | Some(crate::scenario::Fault::FlByzantine { clients: cs, .. }) = &step.fault
    {
        if !has_fl {
            out.push((l, c, format!("{what}: FL faults need a `workload.fl`")));
        }
        let n = usize::from(cs.fraction.is_some())
            + usize::from(cs.count.is_some())
            + usize::from(!cs.ids.is_empty());
        if n != 1 {
            out.push((
                l,
                c,
                format!("{what}: a client set needs exactly one of `fraction`, `count`, `ids`"),
            ));
        }
        if let Some(f) = cs.fraction
            && !(f > 0.0 && f <= 1.0)
        {
            out.push((
                l,
                c,
                format!("{what}: `fraction` must be in (0, 1], got {f}"),
            ));
        }
    }
    out
}

/// Position of `key:` at the start of a line (first match), for checks without a span.
fn find_key(text: &str, key: &str) -> (u64, u64) {
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with(&format!("{key}:")) {
            let col = line.len() - trimmed.len() + 1;
            return (i as u64 + 1, col as u64);
        }
    }
    (0, 0)
}

/// Position of a scalar value (first occurrence after a `:` or `- `).
fn find_value(text: &str, value: &str) -> (u64, u64) {
    for (i, line) in text.lines().enumerate() {
        let code = line.split(" #").next().unwrap_or(line);
        let mut from = 0;
        while let Some(p) = code[from..].find(value) {
            let start = from + p;
            let end = start + value.len();
            let before = code[..start].trim_end();
            let ok_before = before.ends_with(':')
                || before.ends_with('-')
                || before.ends_with('[')
                || before.ends_with(',');
            let ok_after = code[end..]
                .chars()
                .next()
                .is_none_or(|c| c == ',' || c == ']' || c == ' ' || c == '}');
            if ok_before && ok_after {
                return (i as u64 + 1, start as u64 + 1);
            }
            from = end;
        }
    }
    (0, 0)
}

/// One runnable case of a scenario (one matrix combination).
#[derive(Debug, Clone)]
pub struct Case {
    pub scenario: Arc<Scenario>,
    pub file: PathBuf,
    /// `scenario` or `scenario[seed=1,strategy=krum]`.
    pub name: String,
    pub params: CaseParams,
    pub seed: u64,
    pub topology: String,
    /// The FL workload with the matrix's strategy/clients applied.
    pub fl: Option<FlWorkload>,
}

impl Case {
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.scenario.steps.iter().map(|s| &s.value)
    }

    pub fn finally(&self) -> impl Iterator<Item = &Step> {
        self.scenario.finally.iter().map(|s| &s.value)
    }
}

/// Expands a scenario's matrix into cases. `seed_override` replaces the seeds axis.
pub fn expand(file: &Path, s: Arc<Scenario>, seed_override: &[u64]) -> Vec<Case> {
    let m = s.matrix.clone().unwrap_or_default();
    let seeds: Vec<u64> = if !seed_override.is_empty() {
        seed_override.to_vec()
    } else if m.seeds.is_empty() {
        vec![s.seed]
    } else {
        m.seeds.clone()
    };
    let topologies: Vec<String> = if m.topologies.is_empty() {
        vec![s.topology.clone()]
    } else {
        m.topologies.clone()
    };
    let strategies: Vec<Option<Strategy>> = if m.strategies.is_empty() {
        vec![None]
    } else {
        m.strategies.iter().copied().map(Some).collect()
    };
    let clients: Vec<Option<u32>> = if m.clients.is_empty() {
        vec![None]
    } else {
        m.clients.iter().copied().map(Some).collect()
    };
    let seed_axis = seeds.len() > 1 || !m.seeds.is_empty() || !seed_override.is_empty();
    let mut out = Vec::new();
    for topology in &topologies {
        for strategy in &strategies {
            for n in &clients {
                for &seed in &seeds {
                    let mut params = CaseParams::new();
                    if seed_axis {
                        params.insert("seed", seed.to_string());
                    }
                    if !m.topologies.is_empty() {
                        params.insert("topology", topology.clone());
                    }
                    if let Some(st) = strategy {
                        params.insert("strategy", st.as_str().to_string());
                    }
                    if let Some(n) = n {
                        params.insert("clients", n.to_string());
                    }
                    let name = if params.is_empty() {
                        s.name.clone()
                    } else {
                        let p: Vec<String> =
                            params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        format!("{}[{}]", s.name, p.join(","))
                    };
                    let fl = s.workload.fl.clone().map(|mut fl| {
                        if let Some(st) = strategy {
                            fl.strategy = *st;
                        }
                        if let Some(n) = n {
                            fl.clients = *n;
                            fl.min_fit_clients = fl.min_fit_clients.map(|m| m.min(*n));
                        }
                        fl
                    });
                    out.push(Case {
                        scenario: s.clone(),
                        file: file.to_path_buf(),
                        name,
                        params,
                        seed,
                        topology: topology.clone(),
                        fl,
                    });
                }
            }
        }
    }
    out
}

/// Trigger of a step, if any (helper for the runner).
pub fn trigger_of(step: &Step) -> Option<&Trigger> {
    step.at.as_ref()
}
