//! Driving a real `fl coordinator` process from a bench: the release binary, a bare HTTP/1.1
//! client (no client library in the measured path), and the process's memory from /proc.

// Benches measure wall time.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child by PID when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The release `fl` binary next to the running bench (`<target>/release/deps/<bench>-<hash>`
/// -> `<target>/release/fl`), built first if missing.
pub fn fl_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench's own path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("the bench runs from <target>/release/deps")
        .join("fl");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "--release", "-p", "fl-node"])
            .status()
            .expect("running cargo build");
        assert!(ok.success(), "building fl in release failed");
    }
    bin
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// Starts `fl coordinator --no-auth` on a free port with `args` and waits for `/readyz`.
pub fn start_coordinator(data_dir: &Path, args: &[&str]) -> (Kill, u16) {
    let port = free_port();
    let child = Command::new(fl_binary())
        .args(["coordinator", "--no-auth", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning fl coordinator");
    let k = Kill(child);
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err()
        || http(port, "GET", "/readyz", b"").0 != 200
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "coordinator did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (k, port)
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    s.set_nodelay(true).expect("nodelay");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: b\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .expect("writing the request head");
    s.write_all(body).expect("writing the body");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("reading the status line");
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut len = None;
    loop {
        line.clear();
        r.read_line(&mut line).expect("reading a header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse::<usize>().ok();
        }
    }
    let mut out = Vec::new();
    match len {
        Some(n) => {
            out.resize(n, 0);
            r.read_exact(&mut out).expect("reading the body");
        }
        None => {
            r.read_to_end(&mut out).expect("reading the body");
        }
    }
    (status, out)
}

/// A field of `/proc/<pid>/status` in bytes (`VmHWM`, `RssAnon`, ...); 0 if unreadable.
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`), printed beside every number: on a
/// shared machine they say how much the timings were disturbed.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}
