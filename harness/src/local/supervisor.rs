//! A process supervisor: every process it starts gets a log file, is known by name and PID, and
//! is ended by PID (SIGKILL, then reaped) when the supervisor is dropped: on success, on a
//! failed step, while a panic unwinds, and after Ctrl-C (the runner drops the session).
//! Each child also asks the kernel to SIGKILL it if the thread that started it dies
//! (`PR_SET_PDEATHSIG`), so even a harness killed by SIGKILL leaves nothing behind.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Most processes one supervisor runs at once (a coordinator and up to a few hundred workers).
pub const MAX_PROCESSES: usize = 512;

/// Why a process could not be started or signalled.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("failed to create log file {path}: {source}")]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start process `{name}` ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("process `{0}` is already running")]
    Running(String),
    #[error("no process named `{0}` was started")]
    Unknown(String),
    #[error("process `{0}` is not running")]
    NotRunning(String),
    #[error("too many processes: the supervisor runs at most {MAX_PROCESSES}")]
    Full,
    #[error("failed to send {signal} to process `{name}` (pid {pid}): {source}")]
    Signal {
        name: String,
        pid: u32,
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// How to start one process again (a restart uses the same program, arguments and log).
#[derive(Debug, Clone)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
}

struct Proc {
    spec: Spec,
    /// Runs as this (uid, gid) instead of ours (PostgreSQL refuses to run as root).
    user: Option<(u32, u32)>,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
    paused: bool,
}

/// Processes by name.
pub struct Supervisor {
    log_dir: PathBuf,
    procs: BTreeMap<String, Proc>,
}

impl Supervisor {
    /// Logs go to `log_dir/<name>.log` (appended across restarts).
    pub fn new(log_dir: &Path) -> Self {
        Self {
            log_dir: log_dir.to_path_buf(),
            procs: BTreeMap::new(),
        }
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Starts `name` (a new name, or one that is not running: a restart with its spec).
    pub fn start(&mut self, name: &str, spec: Spec) -> Result<u32, SupervisorError> {
        let user = self.procs.get(name).and_then(|p| p.user);
        self.start_as(name, spec, user)
    }

    /// Starts `name` as the user `(uid, gid)`; restarts keep that user.
    pub fn start_as(
        &mut self,
        name: &str,
        spec: Spec,
        user: Option<(u32, u32)>,
    ) -> Result<u32, SupervisorError> {
        if self.is_running(name) {
            return Err(SupervisorError::Running(name.into()));
        }
        if !self.procs.contains_key(name) && self.procs.len() >= MAX_PROCESSES {
            return Err(SupervisorError::Full);
        }
        let log = self.log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| SupervisorError::Log {
                path: log.display().to_string(),
                source,
            })?;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        if let Some((uid, gid)) = user {
            // std switches the ids before the pre_exec hook below, so PDEATHSIG survives it.
            cmd.uid(uid).gid(gid);
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| SupervisorError::Spawn {
            name: name.into(),
            program: spec.program.display().to_string(),
            source,
        })?;
        let pid = child.id();
        let p = self.procs.entry(name.to_string()).or_insert(Proc {
            spec: spec.clone(),
            user,
            child: None,
            log: log.clone(),
            starts: 0,
            paused: false,
        });
        p.spec = spec;
        p.user = user;
        p.child = Some(child);
        p.starts += 1;
        p.paused = false;
        Ok(pid)
    }

    /// Starts a stopped process again with the spec it last ran with.
    pub fn restart(&mut self, name: &str) -> Result<u32, SupervisorError> {
        let spec = self
            .procs
            .get(name)
            .ok_or_else(|| SupervisorError::Unknown(name.into()))?
            .spec
            .clone();
        self.start(name, spec)
    }

    /// The spec `name` last ran with.
    pub fn spec(&self, name: &str) -> Option<&Spec> {
        self.procs.get(name).map(|p| &p.spec)
    }

    /// Whether `name` is running (started and not exited).
    pub fn is_running(&mut self, name: &str) -> bool {
        let Some(p) = self.procs.get_mut(name) else {
            return false;
        };
        match p.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                p.child = None;
                false
            }
            None => false,
        }
    }

    /// The exit status of `name` if it has exited by itself.
    pub fn exit_code(&mut self, name: &str) -> Option<i32> {
        let p = self.procs.get_mut(name)?;
        match p.child.as_mut()?.try_wait() {
            Ok(Some(s)) => s.code(),
            _ => None,
        }
    }

    /// SIGKILL `name` and reap it. Killing a process that is not running is an error.
    pub fn kill(&mut self, name: &str) -> Result<u32, SupervisorError> {
        let p = self
            .procs
            .get_mut(name)
            .ok_or_else(|| SupervisorError::Unknown(name.into()))?;
        let mut child = p
            .child
            .take()
            .ok_or_else(|| SupervisorError::NotRunning(name.into()))?;
        let pid = child.id();
        // Child::kill is SIGKILL on Unix; it also ends a SIGSTOPped process.
        let _ = child.kill();
        let _ = child.wait();
        p.paused = false;
        Ok(pid)
    }

    /// SIGSTOP (`pause`) or SIGCONT (`!pause`) `name`.
    pub fn pause(&mut self, name: &str, pause: bool) -> Result<u32, SupervisorError> {
        let running = self.is_running(name);
        let p = self
            .procs
            .get_mut(name)
            .ok_or_else(|| SupervisorError::Unknown(name.into()))?;
        let pid = match (&p.child, running) {
            (Some(c), true) => c.id(),
            _ => return Err(SupervisorError::NotRunning(name.into())),
        };
        let (sig, signal) = if pause {
            (libc::SIGSTOP, "SIGSTOP")
        } else {
            (libc::SIGCONT, "SIGCONT")
        };
        send_signal(pid, sig).map_err(|source| SupervisorError::Signal {
            name: name.into(),
            pid,
            signal,
            source,
        })?;
        p.paused = pause;
        Ok(pid)
    }

    /// PID of `name` if it is running.
    pub fn pid(&mut self, name: &str) -> Option<u32> {
        if !self.is_running(name) {
            return None;
        }
        self.procs.get(name)?.child.as_ref().map(Child::id)
    }

    /// PIDs of every running process, by name.
    pub fn pids(&mut self) -> BTreeMap<String, u32> {
        let names: Vec<String> = self.procs.keys().cloned().collect();
        names
            .into_iter()
            .filter_map(|n| self.pid(&n).map(|p| (n, p)))
            .collect()
    }

    /// Names of every process ever started, with how often and where it logs.
    pub fn logs(&self) -> Vec<(String, PathBuf, u32)> {
        self.procs
            .iter()
            .map(|(n, p)| (n.clone(), p.log.clone(), p.starts))
            .collect()
    }

    /// The last `lines` lines of `name`'s log, for failure messages.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let Some(p) = self.procs.get(name) else {
            return String::new();
        };
        let t = std::fs::read_to_string(&p.log).unwrap_or_default();
        let all: Vec<&str> = t.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends `sig` to `name` and waits up to `wait_ms` for it to exit by itself (a graceful
    /// stop); SIGKILL after that. Returns the PID.
    pub fn stop_with(
        &mut self,
        name: &str,
        sig: libc::c_int,
        wait_ms: u64,
    ) -> Result<u32, SupervisorError> {
        let pid = self
            .pid(name)
            .ok_or_else(|| SupervisorError::NotRunning(name.into()))?;
        let _ = send_signal(pid, libc::SIGCONT);
        let _ = send_signal(pid, sig);
        for _ in 0..wait_ms / 10 + 1 {
            if !self.is_running(name) {
                return Ok(pid);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.kill(name)
    }

    /// SIGKILL and reap everything still running.
    pub fn kill_all(&mut self) {
        for p in self.procs.values_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Sends `sig` to `pid`.
pub fn send_signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) with a pid we started; no memory is shared.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a process with this PID exists (a zombie counts: it has not been reaped).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Ports handed out to processes this harness starts are taken from below the kernel's
/// ephemeral range (`net.ipv4.ip_local_port_range`, Linux default 32768-60999): a port the
/// kernel picks for an outgoing connection or a `:0` bind (our proxies, every client socket)
/// can then never land on a port handed out but not yet bound by its server. Seen before this:
/// an etcd member failing with `bind: address already in use`.
const PORT_RANGE_START: u16 = 20_000;

/// A free TCP port on 127.0.0.1 for a process to listen on: below the ephemeral range, not
/// handed out before by this harness process, and bindable right now (bound, then released
/// for the process to take).
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::Mutex;
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let end = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|low| *low > PORT_RANGE_START + 1_000)
        .unwrap_or(32_768);
    let span = end - PORT_RANGE_START;
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    // Start where this process's id points, so two harness processes rarely walk together.
    let mut p = next.unwrap_or(PORT_RANGE_START + (std::process::id() % u32::from(span)) as u16);
    for _ in 0..span {
        p = if p + 1 >= end {
            PORT_RANGE_START
        } else {
            p + 1
        };
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", p)) {
            drop(l);
            *next = Some(p);
            return Ok(p);
        }
    }
    // Everything below the ephemeral range is taken: fall back to the kernel's choice.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
