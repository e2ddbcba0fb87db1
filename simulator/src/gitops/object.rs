//! Parsed Kubernetes objects and resource quantities.

use serde_json::Value;

/// One object of a manifest, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// The file it was read from, relative to the repository root (`namespaces/minio/minio.yaml`).
    pub file: String,
    /// The whole object as parsed.
    pub value: Value,
}

impl Object {
    pub fn new(file: impl Into<String>, value: Value) -> Self {
        Self {
            file: file.into(),
            value,
        }
    }

    pub fn api_version(&self) -> &str {
        self.value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }

    /// The API group (`apps` for `apps/v1`, empty for `v1`).
    pub fn group(&self) -> &str {
        match self.api_version().split_once('/') {
            Some((group, _)) => group,
            None => "",
        }
    }

    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn namespace(&self) -> Option<&str> {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.value
            .get("metadata")?
            .get("annotations")?
            .get(key)?
            .as_str()
    }

    /// `Kind namespace/name` or `Kind name`, the way errors name an object.
    pub fn id(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {}/{}", self.kind(), ns, self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }

    /// Identity used to compare live and desired state: group, kind, namespace, name.
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            group: self.group().to_string(),
            kind: self.kind().to_string(),
            namespace: self.namespace().unwrap_or("").to_string(),
            name: self.name().to_string(),
        }
    }

    /// Sets `metadata.namespace` if the object has none (the destination's default namespace).
    pub fn default_namespace(&mut self, namespace: &str) {
        if self.namespace().is_some() {
            return;
        }
        if let Some(meta) = self
            .value
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
        {
            meta.insert("namespace".into(), Value::String(namespace.to_string()));
        }
    }
}

/// Identity of an object in a cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Kinds that are cluster-scoped among those the fixtures and models use.
pub fn is_cluster_scoped(kind: &str) -> bool {
    matches!(
        kind,
        "Namespace"
            | "ClusterRole"
            | "ClusterRoleBinding"
            | "StorageClass"
            | "PriorityClass"
            | "CustomResourceDefinition"
            | "PersistentVolume"
            | "Node"
            | "ClusterSecretStore"
            | "ClusterIssuer"
    )
}

/// Parses a Kubernetes quantity (`250m`, `1`, `2Gi`, `1.5`, `512Mi`, `1e3`) scaled by `scale`
/// (1000 for CPU millicores, 1 for bytes). Returns `None` when malformed or negative.
pub fn parse_quantity(text: &str, scale: u64) -> Option<u64> {
    let text = text.trim();
    let (number, multiplier): (&str, f64) = if let Some(n) = text.strip_suffix("Ki") {
        (n, 1024.0)
    } else if let Some(n) = text.strip_suffix("Mi") {
        (n, 1024.0 * 1024.0)
    } else if let Some(n) = text.strip_suffix("Gi") {
        (n, 1024.0 * 1024.0 * 1024.0)
    } else if let Some(n) = text.strip_suffix("Ti") {
        (n, 1024.0_f64.powi(4))
    } else if let Some(n) = text.strip_suffix("Pi") {
        (n, 1024.0_f64.powi(5))
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('k') {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('M') {
        (n, 1e6)
    } else if let Some(n) = text.strip_suffix('G') {
        (n, 1e9)
    } else if let Some(n) = text.strip_suffix('T') {
        (n, 1e12)
    } else {
        (text, 1.0)
    };
    if number.is_empty()
        || !number
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
    {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    // Kubernetes rounds a quantity up to its smallest unit.
    Some((value * multiplier * scale as f64).ceil() as u64)
}

/// A quantity given as a YAML string or number.
pub fn quantity_value(value: &Value, scale: u64) -> Option<u64> {
    match value {
        Value::String(s) => parse_quantity(s, scale),
        Value::Number(n) => n
            .as_f64()
            .filter(|v| *v >= 0.0)
            .map(|v| (v * scale as f64).ceil() as u64),
        _ => None,
    }
}

/// CPU (millicores) and memory (bytes) requested by one pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Requests {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Requests {
    pub fn plus(self, other: Requests) -> Requests {
        Requests {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }

    pub fn times(self, n: u64) -> Requests {
        Requests {
            cpu_millis: self.cpu_millis.saturating_mul(n),
            memory_bytes: self.memory_bytes.saturating_mul(n),
        }
    }
}

/// Sums the requests of a pod spec's containers (init containers run before and are not
/// added, as the scheduler takes the max of init and the sum of app containers; we take the
/// sum of app containers, which is the larger for every fixture). Returns the requests and,
/// per container without a cpu or memory request, its JSON path.
pub fn pod_requests(pod_spec: &Value, pod_spec_path: &str) -> (Requests, Vec<String>) {
    let mut total = Requests::default();
    let mut missing = Vec::new();
    let containers = pod_spec.get("containers").and_then(Value::as_array);
    for (i, c) in containers.into_iter().flatten().enumerate() {
        let req = c.pointer("/resources/requests");
        let cpu = req
            .and_then(|r| r.get("cpu"))
            .and_then(|v| quantity_value(v, 1000));
        let mem = req
            .and_then(|r| r.get("memory"))
            .and_then(|v| quantity_value(v, 1));
        if cpu.is_none() || mem.is_none() {
            missing.push(format!(
                "{pod_spec_path}.containers[{i}].resources.requests"
            ));
        }
        total = total.plus(Requests {
            cpu_millis: cpu.unwrap_or(0),
            memory_bytes: mem.unwrap_or(0),
        });
    }
    (total, missing)
}

/// The pod template of a workload: (JSON pointer to the pod spec, dotted path for messages).
pub fn pod_spec_location(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(("/spec/template/spec", "spec.template.spec"))
        }
        "CronJob" => Some((
            "/spec/jobTemplate/spec/template/spec",
            "spec.jobTemplate.spec.template.spec",
        )),
        "Pod" => Some(("/spec", "spec")),
        _ => None,
    }
}

/// Replicas of a workload (`spec.replicas`, default 1); DaemonSets are counted per node by
/// the caller.
pub fn replicas(value: &Value) -> u64 {
    value
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1)
}

/// Parses a resource estimate annotation `cpu=300m,memory=512Mi,pods=4` into total requests and
/// a pod count.
pub fn parse_estimate(text: &str) -> Option<(Requests, u64)> {
    let mut cpu = None;
    let mut memory = None;
    let mut pods = None;
    for part in text.split(',') {
        let (k, v) = part.split_once('=')?;
        match k.trim() {
            "cpu" => cpu = parse_quantity(v, 1000),
            "memory" => memory = parse_quantity(v, 1),
            "pods" => pods = v.trim().parse().ok(),
            _ => return None,
        }
    }
    Some((
        Requests {
            cpu_millis: cpu?,
            memory_bytes: memory?,
        },
        pods?,
    ))
}

/// Annotation carrying the resource estimate of a Helm release whose chart is not kept.
pub const ESTIMATE_ANNOTATION: &str = "gitops.fl-sim.dev/resource-estimate";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("250m", 1000), Some(250));
        assert_eq!(parse_quantity("1", 1000), Some(1000));
        assert_eq!(parse_quantity("1.5", 1000), Some(1500));
        assert_eq!(parse_quantity("2Gi", 1), Some(2 << 30));
        assert_eq!(parse_quantity("512Mi", 1), Some(512 << 20));
        assert_eq!(parse_quantity("1G", 1), Some(1_000_000_000));
        assert_eq!(parse_quantity("abc", 1), None);
        assert_eq!(parse_quantity("-1", 1), None);
        assert_eq!(
            parse_estimate("cpu=300m,memory=1Gi,pods=4").map(|e| e.1),
            Some(4)
        );
        assert_eq!(parse_estimate("cpu=300m,mem=1Gi,pods=4"), None);
    }
}
