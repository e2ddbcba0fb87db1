//! A fault-injecting TCP proxy the local backend owns: one per network link it can degrade.
//!
//! The kernel of the machines this runs on has no netem, so network faults between the local
//! backend's processes are made here, in user space, on 127.0.0.1: every worker reaches the
//! coordinator through its own proxy, so a link (`client-3` <-> `fl-coordinator`) can be
//! slowed, throttled, made lossy or cut without touching the others.
//!
//! What each rule does to the bytes (per direction, per chunk read from a socket):
//! - `latency_ms`: the chunk is delivered that much later (one-way delay; a round trip pays it
//!   twice, as with netem's `delay` on both ends). Order is kept.
//! - `bandwidth_bps`: chunks leave no faster than this many bytes per second over the link,
//!   shared by all its connections and both directions kept apart (a token bucket of one
//!   chunk, like `tc tbf` with a small burst).
//! - `loss_pct`: TCP never loses bytes; a lost segment costs a retransmission. Each chunk is
//!   "lost" with this probability and then delivered one retransmission timeout later
//!   (Linux `TCP_RTO_MIN`, 200 ms, include/net/tcp.h), so loss shows as the stalls it causes.
//! - `blackhole` (a partition): nothing is forwarded in either direction and new connections
//!   are accepted but not connected onwards, as with an iptables DROP: peers see timeouts, not
//!   resets. Held bytes flow again when the partition heals, unless the peer gave up first; a
//!   held new connection whose client closes it meanwhile is dropped, never connected onwards.
//!
//! Rules by source: a proxy started with a [`Classifier`] reads the first request head of each
//! connection (up to [`HEAD_LIMIT`] bytes, kept and forwarded unchanged as the first chunk),
//! asks the classifier who sent it, and applies the rules set for that source
//! ([`Proxy::set_source_rules`]) instead of the proxy-wide ones. One proxy in front of a
//! server many peers dial can so cut or slow one peer's connections and not the others'
//! (etcd's peer listener: every member dials it, and names itself in each request). A
//! connection the classifier does not recognise follows the proxy-wide rules. The bandwidth
//! budget stays one per proxy and direction, shared by every throttled source.
//!
//! Everything runs on plain threads (the harness has no async runtime), at most four per
//! connection, and stops when the proxy is dropped: the listener and every socket are shut
//! down and every thread is joined.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Linux's minimum retransmission timeout (`TCP_RTO_MIN`, include/net/tcp.h): what one lost
/// segment costs a loopback connection.
pub const RTO_MIN_MS: u64 = 200;
/// Largest chunk read at once.
const CHUNK: usize = 16 * 1024;
/// How often a held chunk re-checks a partition or the stop flag.
const HOLD_POLL_MS: u64 = 5;
/// Connect timeout to the target (loopback answers at once; a stopped target refuses).
const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Most connections one proxy serves at once (a worker keeps one or two).
const MAX_CONNECTIONS: usize = 64;
/// Most bytes a classifying proxy reads before it classifies (an HTTP/1.1 request head of
/// etcd's rafthttp is well under 1 KiB).
pub const HEAD_LIMIT: usize = 8 * 1024;

/// Names the source of a connection from the first bytes it sent (at most one request head);
/// `None`: not recognised, the proxy-wide rules apply.
pub type Classifier = Arc<dyn Fn(&[u8]) -> Option<String> + Send + Sync>;

/// The faults on a link right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    pub latency_ms: u64,
    pub bandwidth_bps: Option<u64>,
    pub loss_pct: f64,
    pub blackhole: bool,
}

impl Rules {
    /// For reports: `latency 50 ms, 1.0 Mbit/s, loss 5%, partitioned`, or `clean`.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        if self.latency_ms > 0 {
            v.push(format!("latency {} ms", self.latency_ms));
        }
        if let Some(b) = self.bandwidth_bps {
            v.push(format!("{:.3} Mbit/s", b as f64 * 8.0 / 1e6));
        }
        if self.loss_pct > 0.0 {
            v.push(format!("loss {}%", self.loss_pct));
        }
        if self.blackhole {
            v.push("partitioned".into());
        }
        if v.is_empty() {
            "clean".into()
        } else {
            v.join(", ")
        }
    }
}

/// Counters of one proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: u64,
    pub bytes_forwarded: u64,
    /// Chunks delayed by a simulated retransmission.
    pub chunks_lost: u64,
    /// Connections the classifier named a source of (0 without a classifier).
    pub classified: u64,
}

struct Shared {
    target: SocketAddr,
    rules: Mutex<Rules>,
    /// Rules of connections whose classifier named this source.
    by_source: Mutex<BTreeMap<String, Rules>>,
    classifier: Option<Classifier>,
    stop: AtomicBool,
    /// Clones of every open socket, shut down on stop so blocked reads return.
    sockets: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Per direction (0: to the target, 1: back): when the link is next free to send.
    next_free: [Mutex<Instant>; 2],
    connections: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    classified: AtomicU64,
    rng: Mutex<u64>,
}

impl Shared {
    fn rules(&self) -> Rules {
        self.rules.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The rules of a connection from `source` (the proxy-wide ones when none are set for it).
    fn rules_of(&self, source: Option<&str>) -> Rules {
        source
            .and_then(|s| self.by_source.lock().ok()?.get(s).cloned())
            .unwrap_or_else(|| self.rules())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// A uniform number in [0, 100) from the proxy's own seeded stream (splitmix64).
    fn percent(&self) -> f64 {
        let mut s = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 100.0
    }

    /// Sleeps until `t` or stop; false if stopped.
    fn sleep_until(&self, t: Instant) -> bool {
        loop {
            if self.stopped() {
                return false;
            }
            let now = Instant::now();
            if now >= t {
                return true;
            }
            std::thread::sleep((t - now).min(Duration::from_millis(HOLD_POLL_MS)));
        }
    }

    /// Waits while the link is cut; false if stopped.
    fn hold_while_cut(&self, source: Option<&str>) -> bool {
        while self.rules_of(source).blackhole {
            if self.stopped() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(HOLD_POLL_MS));
        }
        !self.stopped()
    }

    fn track(&self, s: &TcpStream) {
        if let (Ok(c), Ok(mut v)) = (s.try_clone(), self.sockets.lock()) {
            v.push(c);
        }
    }

    fn spawn(self: &Arc<Self>, name: &str, f: impl FnOnce(Arc<Self>) + Send + 'static) {
        let me = self.clone();
        if let Ok(h) = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || f(me))
            && let Ok(mut v) = self.threads.lock()
        {
            v.push(h);
        }
    }
}

/// A proxy listening on 127.0.0.1 and forwarding to `target`.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1. `seed` drives the loss draws.
    pub fn start(target: SocketAddr, seed: u64) -> std::io::Result<Self> {
        Self::start_with(target, seed, None)
    }

    /// Like [`Proxy::start`], and classifies every connection by its first request head
    /// (module docs): rules set per source apply to that source's connections.
    pub fn start_classified(
        target: SocketAddr,
        seed: u64,
        classifier: Classifier,
    ) -> std::io::Result<Self> {
        Self::start_with(target, seed, Some(classifier))
    }

    fn start_with(
        target: SocketAddr,
        seed: u64,
        classifier: Option<Classifier>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            rules: Mutex::new(Rules::default()),
            by_source: Mutex::new(BTreeMap::new()),
            classifier,
            stop: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            next_free: [Mutex::new(Instant::now()), Mutex::new(Instant::now())],
            connections: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            classified: AtomicU64::new(0),
            rng: Mutex::new(seed),
        });
        shared.spawn("proxy-accept", move |sh| accept_loop(&sh, &listener));
        Ok(Self { addr, shared })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    pub fn rules(&self) -> Rules {
        self.shared.rules()
    }

    /// Replaces the link's faults; chunks already in flight keep the delay they were given.
    pub fn set_rules(&self, r: Rules) {
        if let Ok(mut g) = self.shared.rules.lock() {
            *g = r;
        }
    }

    /// Changes the faults in place.
    pub fn update(&self, f: impl FnOnce(&mut Rules)) {
        if let Ok(mut g) = self.shared.rules.lock() {
            f(&mut g);
        }
    }

    /// The rules of connections from `source` (the proxy-wide ones when none are set for it).
    pub fn source_rules(&self, source: &str) -> Rules {
        self.shared.rules_of(Some(source))
    }

    /// Sets the faults of `source`'s connections (classifying proxies only).
    pub fn set_source_rules(&self, source: &str, r: Rules) {
        if let Ok(mut m) = self.shared.by_source.lock() {
            m.insert(source.to_string(), r);
        }
    }

    /// Changes the faults of `source`'s connections in place (from clean if none were set).
    pub fn update_source(&self, source: &str, f: impl FnOnce(&mut Rules)) {
        if let Ok(mut m) = self.shared.by_source.lock() {
            f(m.entry(source.to_string()).or_default());
        }
    }

    /// Forgets every per-source rule: all connections follow the proxy-wide rules again.
    pub fn clear_source_rules(&self) {
        if let Ok(mut m) = self.shared.by_source.lock() {
            m.clear();
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.shared.connections.load(Ordering::SeqCst),
            bytes_forwarded: self.shared.bytes.load(Ordering::SeqCst),
            chunks_lost: self.shared.lost.load(Ordering::SeqCst),
            classified: self.shared.classified.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Ok(v) = self.shared.sockets.lock() {
            for s in v.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        // Threads may still register more threads while they end: join until none is left.
        loop {
            let batch: Vec<JoinHandle<()>> = match self.shared.threads.lock() {
                Ok(mut v) => v.drain(..).collect(),
                Err(_) => break,
            };
            if batch.is_empty() {
                break;
            }
            for h in batch {
                let _ = h.join();
            }
        }
    }
}

fn accept_loop(sh: &Arc<Shared>, listener: &TcpListener) {
    for conn in listener.incoming() {
        if sh.stopped() {
            break;
        }
        let Ok(client) = conn else { continue };
        // Two sockets a connection; forget those of finished connections before refusing.
        let full = sh.sockets.lock().is_ok_and(|mut v| {
            if v.len() >= MAX_CONNECTIONS * 2 {
                v.retain(|s| s.peer_addr().is_ok());
            }
            v.len() >= MAX_CONNECTIONS * 2
        });
        if full {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        sh.connections.fetch_add(1, Ordering::SeqCst);
        sh.track(&client);
        sh.spawn("proxy-conn", move |sh| connect(&sh, client));
    }
}

/// Whether the peer of `s` closed its side (EOF or an error); bytes waiting or none yet: no.
fn closed(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    let gone = match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = s.set_nonblocking(false);
    gone
}

/// Reads from `s` until a request head ends (`\r\n\r\n`), [`HEAD_LIMIT`] bytes, EOF or
/// [`CONNECT_TIMEOUT_MS`] of silence; returns every byte read.
fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let _ = s.set_read_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)));
    let mut buf = [0u8; 1024];
    while head.len() < HEAD_LIMIT && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = s.set_read_timeout(None);
    head
}

/// Classifies (if the proxy does), connects onwards (after any partition heals) and starts
/// both directions.
fn connect(sh: &Arc<Shared>, mut client: TcpStream) {
    let (head, source) = match &sh.classifier {
        Some(classify) => {
            let head = read_head(&mut client);
            let source = classify(&head);
            if source.is_some() {
                sh.classified.fetch_add(1, Ordering::SeqCst);
            }
            (head, source.map(Arc::<str>::from))
        }
        None => (Vec::new(), None),
    };
    // Held until the partition heals; a client that gives up meanwhile (etcd redials its
    // streams every few seconds) frees its thread instead of piling up held connections.
    while sh.rules_of(source.as_deref()).blackhole {
        if sh.stopped() || closed(&client) {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        std::thread::sleep(Duration::from_millis(HOLD_POLL_MS));
    }
    if sh.stopped() {
        return;
    }
    let Ok(server) =
        TcpStream::connect_timeout(&sh.target, Duration::from_millis(CONNECT_TIMEOUT_MS))
    else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    sh.track(&server);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        return;
    };
    pipe(sh, client, server, 0, source.clone(), head);
    pipe(sh, s2, c2, 1, source, Vec::new());
}

/// One direction: a reader stamps chunks with their delivery time, a writer delivers them.
/// `first` (the bytes a classifier read) goes first, under the same rules.
fn pipe(
    sh: &Arc<Shared>,
    mut from: TcpStream,
    mut to: TcpStream,
    dir: usize,
    source: Option<Arc<str>>,
    first: Vec<u8>,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let src = source.clone();
    sh.spawn("proxy-read", move |sh| {
        let mut buf = vec![0u8; CHUNK];
        let mut first = Some(first).filter(|f| !f.is_empty());
        loop {
            let chunk = match first.take() {
                Some(f) => f,
                None => match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf[..n].to_vec(),
                },
            };
            let r = sh.rules_of(src.as_deref());
            let mut delay = r.latency_ms;
            if r.loss_pct > 0.0 && sh.percent() < r.loss_pct {
                sh.lost.fetch_add(1, Ordering::SeqCst);
                delay += RTO_MIN_MS;
            }
            let at = Instant::now() + Duration::from_millis(delay);
            if tx.send((at, chunk)).is_err() {
                break;
            }
        }
        // Dropping tx ends the writer after it delivered what it holds.
    });
    sh.spawn("proxy-write", move |sh| {
        for (at, chunk) in rx {
            if !sh.sleep_until(at) || !sh.hold_while_cut(source.as_deref()) {
                return;
            }
            if let Some(bps) = sh
                .rules_of(source.as_deref())
                .bandwidth_bps
                .filter(|b| *b > 0)
            {
                let cost = Duration::from_secs_f64(chunk.len() as f64 / bps as f64);
                let until = {
                    let mut free = sh.next_free[dir].lock().unwrap_or_else(|e| e.into_inner());
                    let start = (*free).max(Instant::now());
                    *free = start + cost;
                    *free
                };
                if !sh.sleep_until(until) {
                    return;
                }
            }
            if to.write_all(&chunk).is_err() {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            sh.bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on 127.0.0.1 that serves a bounded number of connections.
    fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming().take(8) {
                let Ok(mut c) = c else { continue };
                std::thread::spawn(move || {
                    let mut b = [0u8; 4096];
                    while let Ok(n) = c.read(&mut b) {
                        if n == 0 || c.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        a
    }

    fn roundtrip(p: &Proxy, msg: &[u8], timeout_ms: u64) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(p.addr())?;
        s.set_read_timeout(Some(Duration::from_millis(timeout_ms)))?;
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn forwards_bytes_unchanged_and_counts_them() {
        let p = Proxy::start(echo(), 1).unwrap();
        let msg: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(roundtrip(&p, &msg, 5_000).unwrap(), msg);
        // The writer counts a chunk after its write returns, which can be after the client read
        // it: give the count up to a second to land (bounded, not a speed check).
        for _ in 0..200 {
            if p.stats().bytes_forwarded >= 200_000 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let st = p.stats();
        assert_eq!(st.connections, 1);
        assert_eq!(st.bytes_forwarded, 200_000, "both directions");
    }

    #[test]
    fn latency_delays_each_direction() {
        let p = Proxy::start(echo(), 1).unwrap();
        p.set_rules(Rules {
            latency_ms: 60,
            ..Rules::default()
        });
        let t0 = Instant::now();
        roundtrip(&p, b"ping", 5_000).unwrap();
        // A lower bound (the delay is added, never skipped), not a speed target.
        assert!(
            t0.elapsed() >= Duration::from_millis(120),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn a_partition_holds_bytes_until_it_heals() {
        let p = Proxy::start(echo(), 1).unwrap();
        p.update(|r| r.blackhole = true);
        let mut s = TcpStream::connect(p.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.write_all(b"held").unwrap();
        let mut b = [0u8; 4];
        let e = s.read_exact(&mut b).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "a partition times out, it does not reset: {e}"
        );
        assert_eq!(p.stats().bytes_forwarded, 0);
        p.update(|r| r.blackhole = false);
        s.set_read_timeout(Some(Duration::from_millis(5_000)))
            .unwrap();
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"held");
    }

    #[test]
    fn bandwidth_paces_a_transfer() {
        let p = Proxy::start(echo(), 1).unwrap();
        p.set_rules(Rules {
            bandwidth_bps: Some(200_000),
            ..Rules::default()
        });
        let msg = vec![7u8; 40_000];
        let t0 = Instant::now();
        assert_eq!(roundtrip(&p, &msg, 10_000).unwrap(), msg);
        // 40 kB each way at 200 kB/s: at least 0.2 s per direction minus the first chunk.
        assert!(
            t0.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn loss_costs_retransmission_stalls_but_no_bytes() {
        let p = Proxy::start(echo(), 7).unwrap();
        p.set_rules(Rules {
            loss_pct: 100.0,
            ..Rules::default()
        });
        let t0 = Instant::now();
        assert_eq!(roundtrip(&p, b"abc", 5_000).unwrap(), b"abc");
        assert!(t0.elapsed() >= Duration::from_millis(2 * RTO_MIN_MS));
        assert!(p.stats().chunks_lost >= 2);
        assert_eq!(
            Rules {
                latency_ms: 5,
                bandwidth_bps: Some(125_000),
                loss_pct: 1.0,
                blackhole: true
            }
            .describe(),
            "latency 5 ms, 1.000 Mbit/s, loss 1%, partitioned"
        );
    }

    /// A toy classifier: the value of a `From:` header line.
    fn from_header() -> Classifier {
        Arc::new(|head: &[u8]| {
            String::from_utf8_lossy(head)
                .lines()
                .find_map(|l| l.strip_prefix("From: ").map(|v| v.trim().to_string()))
        })
    }

    #[test]
    fn a_classifier_cuts_one_source_and_not_the_others() {
        let p = Proxy::start_classified(echo(), 1, from_header()).unwrap();
        p.update_source("a", |r| r.blackhole = true);
        assert!(p.source_rules("a").blackhole);
        assert!(
            !p.source_rules("b").blackhole,
            "b follows the proxy-wide rules"
        );
        let head_a = b"GET / HTTP/1.1\r\nFrom: a\r\n\r\nbody-a";
        let head_b = b"GET / HTTP/1.1\r\nFrom: b\r\n\r\nbody-b";
        // b and an unclassified connection pass; the head read for classifying is forwarded.
        assert_eq!(roundtrip(&p, head_b, 5_000).unwrap(), head_b);
        assert_eq!(
            roundtrip(&p, b"no head at all\r\n\r\n", 5_000).unwrap(),
            b"no head at all\r\n\r\n"
        );
        // a is held, as by a partition.
        let mut s = TcpStream::connect(p.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s.write_all(head_a).unwrap();
        let mut got = vec![0u8; head_a.len()];
        let e = s.read_exact(&mut got).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        );
        assert_eq!(p.stats().classified, 2, "a and b, not the unclassified one");
        // Healing a's rules lets its held bytes through.
        p.clear_source_rules();
        s.set_read_timeout(Some(Duration::from_millis(5_000)))
            .unwrap();
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got[..], &head_a[..]);
        // Per-source latency applies to that source only.
        p.set_source_rules(
            "b",
            Rules {
                latency_ms: 80,
                ..Rules::default()
            },
        );
        let t0 = Instant::now();
        roundtrip(&p, head_b, 5_000).unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(160),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn a_held_connection_whose_client_gives_up_is_not_connected_onwards() {
        // A server that counts the connections reaching it, echoing each.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = l.local_addr().unwrap();
        let reached = Arc::new(AtomicU64::new(0));
        let r2 = reached.clone();
        std::thread::spawn(move || {
            for c in l.incoming().take(4) {
                let Ok(mut c) = c else { continue };
                r2.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut b = [0u8; 64];
                    while let Ok(n) = c.read(&mut b) {
                        if n == 0 || c.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let p = Proxy::start(target, 1).unwrap();
        p.update(|r| r.blackhole = true);
        let s = TcpStream::connect(p.addr()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(s);
        std::thread::sleep(Duration::from_millis(100));
        p.update(|r| r.blackhole = false);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(roundtrip(&p, b"x", 5_000).unwrap(), b"x");
        // Only the live connection reached the server; the abandoned one was dropped.
        assert_eq!(reached.load(Ordering::SeqCst), 1);
        assert_eq!(p.stats().connections, 2);
    }

    #[test]
    fn drop_ends_every_thread_even_with_held_connections() {
        let p = Proxy::start(echo(), 1).unwrap();
        p.update(|r| r.blackhole = true);
        let _s = TcpStream::connect(p.addr()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // Returns (a hang here would hang the test): every thread sees the stop flag.
        drop(p);
    }
}
