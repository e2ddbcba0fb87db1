//! Strict structural validation of objects against the Kubernetes OpenAPI schemas generated
//! from `k8s-openapi`'s types (its `schemars` feature) and against CRD `openAPIV3Schema`s.
//!
//! Strict means: a field that the schema does not list is an error, unless the schema says
//! `x-kubernetes-preserve-unknown-fields` or gives `additionalProperties` (a map). Deserializing
//! into `k8s-openapi` types alone would ignore unknown fields, so we walk the schemas instead.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::object::{Object, parse_quantity};

/// The Kubernetes minor version whose schemas are compiled in (`k8s-openapi` feature `v1_34`).
pub const SCHEMA_KUBERNETES_MINOR: u32 = 34;
/// The window of versions this `k8s-openapi` release (0.29) covers (features v1_33..v1_37).
pub const K8S_OPENAPI_WINDOW: (u32, u32) = (33, 37);

/// Bound on schema recursion (JSONSchemaProps refers to itself; objects are never this deep).
const MAX_DEPTH: usize = 64;

/// One schema violation: the dotted field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

/// Schemas by `apiVersion` + `kind`.
#[derive(Debug, Default, Clone)]
pub struct Schemas {
    by_kind: BTreeMap<(String, String), Value>,
    defs: Map<String, Value>,
}

macro_rules! builtin {
    ($gen:ident, $map:ident, $($ty:ty),* $(,)?) => {
        $(
            {
                let schema = $gen.subschema_for::<$ty>();
                $map.insert(
                    (
                        <$ty as k8s_openapi::Resource>::API_VERSION.to_string(),
                        <$ty as k8s_openapi::Resource>::KIND.to_string(),
                    ),
                    schema.to_value(),
                );
            }
        )*
    };
}

impl Schemas {
    /// The built-in kinds the platforms use, from `k8s-openapi`.
    pub fn builtin() -> Self {
        use k8s_openapi::api::{apps, batch, core, networking, policy, rbac, scheduling, storage};
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
        let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
        let mut by_kind = BTreeMap::new();
        builtin!(
            generator,
            by_kind,
            core::v1::Namespace,
            core::v1::Service,
            core::v1::ServiceAccount,
            core::v1::ConfigMap,
            core::v1::Secret,
            core::v1::PersistentVolumeClaim,
            core::v1::ResourceQuota,
            core::v1::LimitRange,
            core::v1::Pod,
            apps::v1::Deployment,
            apps::v1::StatefulSet,
            apps::v1::DaemonSet,
            batch::v1::Job,
            batch::v1::CronJob,
            rbac::v1::Role,
            rbac::v1::RoleBinding,
            rbac::v1::ClusterRole,
            rbac::v1::ClusterRoleBinding,
            storage::v1::StorageClass,
            scheduling::v1::PriorityClass,
            networking::v1::Ingress,
            networking::v1::NetworkPolicy,
            policy::v1::PodDisruptionBudget,
            apiext::CustomResourceDefinition,
        );
        let defs = generator.take_definitions(true);
        // ObjectMeta validates every object's metadata, including custom resources'.
        Self { by_kind, defs }
    }

    /// Adds the served versions of a CRD (`apiextensions.k8s.io/v1 CustomResourceDefinition`).
    /// Returns the kinds added, or a violation when the CRD itself is malformed.
    pub fn add_crd(&mut self, crd: &Value) -> Result<Vec<String>, Violation> {
        let group = crd
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .ok_or_else(|| Violation {
                field: "spec.group".into(),
                message: "missing CRD group".into(),
            })?;
        let kind = crd
            .pointer("/spec/names/kind")
            .and_then(Value::as_str)
            .ok_or_else(|| Violation {
                field: "spec.names.kind".into(),
                message: "missing CRD kind".into(),
            })?;
        let versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .ok_or_else(|| Violation {
                field: "spec.versions".into(),
                message: "missing CRD versions".into(),
            })?;
        let mut added = Vec::new();
        for (i, v) in versions.iter().enumerate() {
            let name = v
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| Violation {
                    field: format!("spec.versions[{i}].name"),
                    message: "missing version name".into(),
                })?;
            let schema = v
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .ok_or_else(|| Violation {
                    field: format!("spec.versions[{i}].schema.openAPIV3Schema"),
                    message: "missing openAPIV3Schema (strict validation needs one)".into(),
                })?;
            let api_version = format!("{group}/{name}");
            added.push(format!("{api_version} {kind}"));
            self.by_kind.insert((api_version, kind.to_string()), schema);
        }
        Ok(added)
    }

    pub fn knows(&self, api_version: &str, kind: &str) -> bool {
        self.by_kind
            .contains_key(&(api_version.to_string(), kind.to_string()))
    }

    pub fn kinds(&self) -> usize {
        self.by_kind.len()
    }

    /// Validates one object; an unknown `apiVersion`/`kind` is itself a violation.
    pub fn validate(&self, object: &Object) -> Vec<Violation> {
        let mut out = Vec::new();
        let key = (object.api_version().to_string(), object.kind().to_string());
        let Some(schema) = self.by_kind.get(&key) else {
            let field = if object.api_version().is_empty() {
                "apiVersion"
            } else {
                "kind"
            };
            out.push(Violation {
                field: field.into(),
                message: format!(
                    "no schema for apiVersion {:?} kind {:?} (neither a built-in kind nor a CRD in the CRD directory or the tree)",
                    object.api_version(),
                    object.kind()
                ),
            });
            return out;
        };
        if object.name().is_empty() {
            out.push(Violation {
                field: "metadata.name".into(),
                message: "missing object name".into(),
            });
        }
        self.walk(&object.value, schema, "", 0, &mut out);
        // CRD schemas say `metadata: {type: object}`: check metadata as ObjectMeta for all.
        if let (Some(meta), Some(meta_schema)) = (
            object.value.get("metadata"),
            self.defs
                .get("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
        ) && !self.by_kind_is_builtin(&key)
        {
            self.walk(meta, meta_schema, "metadata", 0, &mut out);
        }
        out
    }

    fn by_kind_is_builtin(&self, key: &(String, String)) -> bool {
        // Built-in schemas reference ObjectMeta through `$ref`; CRD schemas never do.
        self.by_kind
            .get(key)
            .and_then(|s| s.pointer("/properties/metadata/$ref"))
            .is_some()
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> (&'a Value, Option<&'a str>) {
        let mut current = schema;
        let mut name = None;
        for _ in 0..8 {
            match current.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let def = r.rsplit('/').next().unwrap_or(r);
                    match self.defs.get(def) {
                        Some(next) => {
                            name = Some(def);
                            current = next;
                        }
                        None => break,
                    }
                }
                None => match current.get("allOf").and_then(Value::as_array) {
                    Some(all) if all.len() == 1 => current = &all[0],
                    _ => break,
                },
            }
        }
        (current, name)
    }

    fn walk(
        &self,
        value: &Value,
        schema: &Value,
        path: &str,
        depth: usize,
        out: &mut Vec<Violation>,
    ) {
        if depth > MAX_DEPTH {
            out.push(Violation {
                field: path.into(),
                message: "object nested too deep".into(),
            });
            return;
        }
        let (schema, def_name) = self.resolve(schema);
        let field = |p: &str| {
            if p.is_empty() {
                "(object)".to_string()
            } else {
                p.to_string()
            }
        };
        if schema
            .get("x-kubernetes-int-or-string")
            .and_then(Value::as_bool)
            == Some(true)
        {
            let is_quantity = def_name.is_some_and(|n| n.ends_with(".Quantity"));
            match value {
                Value::Number(_) => {}
                Value::String(s) if is_quantity && parse_quantity(s, 1000).is_none() => {
                    out.push(Violation {
                        field: field(path),
                        message: format!(
                            "{s:?} is not a valid quantity (e.g. 250m, 1, 512Mi, 2Gi)"
                        ),
                    })
                }
                Value::String(_) => {}
                other => out.push(Violation {
                    field: field(path),
                    message: format!(
                        "expected an integer or a string, found {}",
                        type_name(other)
                    ),
                }),
            }
            return;
        }
        let preserve = schema
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        if let Some(Value::Array(allowed)) = schema.get("enum")
            && !allowed.contains(value)
        {
            out.push(Violation {
                field: field(path),
                message: format!("{value} is not one of {}", Value::Array(allowed.clone())),
            });
        }
        let ty = schema.get("type").and_then(Value::as_str);
        match (ty, value) {
            (Some("object"), Value::Object(map)) | (None, Value::Object(map)) => {
                let props = schema.get("properties").and_then(Value::as_object);
                let additional = schema.get("additionalProperties");
                if let Some(Value::Array(required)) = schema.get("required") {
                    for r in required.iter().filter_map(Value::as_str) {
                        if !map.contains_key(r) {
                            out.push(Violation {
                                field: join(path, r),
                                message: format!("missing required field {r:?}"),
                            });
                        }
                    }
                }
                for (k, v) in map {
                    let child = join(path, k);
                    if let Some(p) = props.and_then(|p| p.get(k)) {
                        if !v.is_null() {
                            self.walk(v, p, &child, depth + 1, out);
                        }
                    } else if let Some(a) = additional.filter(|a| a.is_object()) {
                        self.walk(v, a, &child, depth + 1, out);
                    } else if additional.and_then(Value::as_bool) == Some(true) || preserve {
                    } else if props.is_some() || additional.and_then(Value::as_bool) == Some(false)
                    {
                        let mut known: Vec<&str> = props
                            .into_iter()
                            .flat_map(|p| p.keys().map(String::as_str))
                            .collect();
                        known.sort_unstable();
                        let hint = closest(k, &known)
                            .map(|c| format!(" (did you mean {c:?}?)"))
                            .unwrap_or_default();
                        out.push(Violation {
                            field: child,
                            message: format!("unknown field {k:?}{hint}"),
                        });
                    }
                }
            }
            (Some("array"), Value::Array(items)) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, v) in items.iter().enumerate() {
                        self.walk(v, item_schema, &format!("{path}[{i}]"), depth + 1, out);
                    }
                }
            }
            (Some("string"), Value::String(_)) => {}
            (Some("integer"), Value::Number(n)) if n.is_i64() || n.is_u64() => {}
            (Some("number"), Value::Number(_)) => {}
            (Some("boolean"), Value::Bool(_)) => {}
            (None, _) => {}
            (_, _) if preserve => {}
            (Some(expected), other) => out.push(Violation {
                field: field(path),
                message: format!("expected {expected}, found {}", type_name(other)),
            }),
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The known field closest to a misspelled one (edit distance at most 2).
fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(&word.to_lowercase(), &k.to_lowercase()), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_field_in_deployment_is_named() {
        let schemas = Schemas::builtin();
        let obj = Object::new(
            "d.yaml",
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                   "spec": {"replicas": 1, "selector": {}, "template": {"spec": {"containers": [
                       {"name": "c", "image": "i", "resources": {"requets": {"cpu": "1"}}}]}}}}),
        );
        let v = schemas.validate(&obj);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            v[0].field,
            "spec.template.spec.containers[0].resources.requets"
        );
        assert!(
            v[0].message.contains("did you mean \"requests\""),
            "{}",
            v[0].message
        );
    }
}
