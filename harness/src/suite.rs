//! Finding scenario files and selecting cases, with nextest-like name filters: a filter matches
//! a case whose name contains it (`--exact`: equals it); `--skip` removes matches.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::load::{self, Case, Catalog, LoadError};

/// The folder of the default suite, relative to the workspace root.
pub const SCENARIO_DIR: &str = "scenarios";

/// Which cases to run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `--scenario PATH_OR_NAME` (repeatable): a file, a folder, or a scenario name.
    pub scenarios: Vec<String>,
    /// Positional name filters.
    pub filters: Vec<String>,
    /// `--skip` filters.
    pub skip: Vec<String>,
    /// `--exact`: filters must equal the case name.
    pub exact: bool,
    /// `--seed` (repeatable): replaces every scenario's seeds.
    pub seeds: Vec<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("{0}")]
    Load(#[from] LoadError),
    #[error("failed to list scenario folder {path}: {source}")]
    List {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no scenario file or name `{given}`{hint} (scenario names: {known})")]
    UnknownScenario {
        given: String,
        hint: String,
        known: String,
    },
}

/// Every `*.yaml` under `dir` (recursively, sorted).
pub fn scenario_files(dir: &Path) -> Result<Vec<PathBuf>, SuiteError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    // Bounded walk: scenario folders are shallow.
    let mut visited = 0usize;
    while let Some(d) = stack.pop() {
        visited += 1;
        if visited > 10_000 {
            break;
        }
        let rd = std::fs::read_dir(&d).map_err(|source| SuiteError::List {
            path: d.display().to_string(),
            source,
        })?;
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Loads the selected scenario files and expands them into the selected cases.
pub fn select(root: &Path, sel: &Selection) -> Result<Vec<Case>, SuiteError> {
    let catalog = Catalog::from_workspace(root);
    let default_dir = root.join(SCENARIO_DIR);
    let all_files = scenario_files(&default_dir)?;
    let mut files: Vec<PathBuf> = Vec::new();
    if sel.scenarios.is_empty() {
        files = all_files.clone();
    } else {
        for s in &sel.scenarios {
            let p = if Path::new(s).is_absolute() {
                PathBuf::from(s)
            } else {
                root.join(s)
            };
            if p.is_file() {
                files.push(p);
            } else if p.is_dir() {
                files.extend(scenario_files(&p)?);
            } else {
                // A scenario name: find the file that declares it.
                let mut found = false;
                let mut known = Vec::new();
                for f in &all_files {
                    let sc = load::load_file(f, &catalog)?;
                    if &sc.name == s {
                        files.push(f.clone());
                        found = true;
                    }
                    known.push(sc.name);
                }
                if !found {
                    let hint = load::did_you_mean(s, &known)
                        .map(|b| format!(", did you mean `{b}`?"))
                        .unwrap_or_default();
                    return Err(SuiteError::UnknownScenario {
                        given: s.clone(),
                        hint,
                        known: known.join(", "),
                    });
                }
            }
        }
    }
    files.dedup();
    let mut cases = Vec::new();
    for f in files {
        let sc = load::load_file(&f, &catalog)?;
        let rel = f.strip_prefix(root).map(Path::to_path_buf).unwrap_or(f);
        cases.extend(load::expand(&rel, Arc::new(sc), &sel.seeds));
    }
    for c in &mut cases {
        if c.file.is_relative() {
            c.file = root.join(&c.file);
        }
    }
    cases.retain(|c| matches(&c.name, sel));
    Ok(cases)
}

/// Whether a case name passes the filters.
pub fn matches(name: &str, sel: &Selection) -> bool {
    let hit = |f: &String| {
        if sel.exact {
            name == f
        } else {
            name.contains(f.as_str())
        }
    };
    (sel.filters.is_empty() || sel.filters.iter().any(hit)) && !sel.skip.iter().any(hit)
}
