//! Upstream default timings, one named constant each, with its source.
//!
//! All durations are virtual microseconds ([`crate::Time`]); the `_US` suffix says so.

/// One millisecond in microseconds.
pub const MS: u64 = 1_000;
/// One second in microseconds.
pub const SEC: u64 = 1_000_000;
/// One minute in microseconds.
pub const MIN: u64 = 60 * SEC;
/// One hour in microseconds.
pub const HOUR: u64 = 60 * MIN;

/// etcd `--heartbeat-interval` default 100 ms (etcd docs, "Tuning": "By default, etcd uses a
/// 100ms heartbeat interval"). One Raft tick of the simulated etcd is one heartbeat interval.
pub const ETCD_HEARTBEAT_US: u64 = 100 * MS;
/// etcd `--election-timeout` default 1000 ms (etcd docs, "Tuning": "By default, etcd uses a
/// 1000ms election timeout"), i.e. 10 heartbeat ticks; Raft randomizes it in [10, 20) ticks.
pub const ETCD_ELECTION_TIMEOUT_US: u64 = 1_000 * MS;
/// The election timeout in Raft ticks.
pub const ETCD_ELECTION_TICKS: usize = (ETCD_ELECTION_TIMEOUT_US / ETCD_HEARTBEAT_US) as usize;

/// kubelet node lease duration default 40 s (kubelet `nodeLeaseDurationSeconds`, KubeletConfiguration
/// docs); the kubelet renews at 25 % of it (kubelet `nodeLeaseRenewIntervalFraction` 0.25) = 10 s.
pub const KUBELET_LEASE_RENEW_US: u64 = 10 * SEC;
/// kube-controller-manager `--node-monitor-period` default 5 s (kube-controller-manager reference:
/// "The period for syncing NodeStatus in NodeController").
pub const NODE_MONITOR_PERIOD_US: u64 = 5 * SEC;
/// kube-controller-manager `--node-monitor-grace-period` default 50 s since Kubernetes v1.32
/// (was 40 s; kubernetes/kubernetes#121793 and #127352 discuss the 50 s default).
pub const NODE_MONITOR_GRACE_US: u64 = 50 * SEC;
/// kube-apiserver `--default-not-ready-toleration-seconds` and
/// `--default-unreachable-toleration-seconds` default 300 (DefaultTolerationSeconds admission
/// plugin): pods on a NotReady/unreachable node are evicted after 5 minutes.
pub const DEFAULT_TOLERATION_US: u64 = 300 * SEC;
/// kube-scheduler pod initial backoff default 1 s (`podInitialBackoffSeconds`,
/// KubeSchedulerConfiguration); the simulated scheduler retries unschedulable pods this often at
/// the fastest and at most every [`SCHEDULER_MAX_BACKOFF_US`].
pub const SCHEDULER_INITIAL_BACKOFF_US: u64 = SEC;
/// kube-scheduler pod max backoff default 10 s (`podMaxBackoffSeconds`, KubeSchedulerConfiguration).
pub const SCHEDULER_MAX_BACKOFF_US: u64 = 10 * SEC;
/// Pod termination grace period default 30 s (`terminationGracePeriodSeconds`, Pod spec docs).
pub const POD_TERMINATION_GRACE_US: u64 = 30 * SEC;

/// Container start (image present, sandbox + start) for a simulated pod. Not an upstream default:
/// an estimate of a warm-cache start on the documents' VMs; drawn from [1x, 2x) of it.
pub const POD_START_US: u64 = 3 * SEC;
/// Time from container start to a passing readiness probe: readiness `periodSeconds` default 10 s
/// (Pod probe docs), so at most one period after start.
pub const READINESS_PERIOD_US: u64 = 10 * SEC;

/// Talos node boot to kubelet registration. Platform doc 000 gives "~5-7 minutes from VMs to
/// ready cluster" for three nodes including bootstrap; DESIGN.md measured a bare Talos cluster on
/// QEMU at ~95 s. We take 90 s per node (drawn from [1x, 1.3x)).
pub const TALOS_BOOT_US: u64 = 90 * SEC;

/// K3s: OS boot plus `k3s server` start until the node registers. K3s docs quote a server ready
/// "in about 30 seconds" on small hardware; modelled as 45 s including the OS.
pub const K3S_BOOT_US: u64 = 45 * SEC;

/// A restarted K3s server process (kube-apiserver, controllers, the kine/sqlite datastore and the
/// embedded kubelet are one process) serves again after the K3s docs' "about 30 seconds" of
/// server start; the OS is already up, so this is [`K3S_BOOT_US`] less the OS boot.
pub const K3S_SERVER_START_US: u64 = 30 * SEC;

/// Longhorn default replica count 3 (Longhorn settings "Default Replica Count", default 3).
pub const LONGHORN_DEFAULT_REPLICAS: u32 = 3;
/// Longhorn volume attach + engine start on a new node after a failover, estimated at 20 s
/// (Longhorn docs describe attach as taking "tens of seconds"); drawn from [1x, 1.5x).
pub const LONGHORN_ATTACH_US: u64 = 20 * SEC;
/// kubeadm-style node (general-purpose OS + containerd + kubelet) boot to kubelet registration,
/// estimated at 60 s (no upstream default exists; used when a document names no distribution).
pub const KUBEADM_BOOT_US: u64 = 60 * SEC;
