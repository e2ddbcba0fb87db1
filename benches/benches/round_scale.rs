//! The coordinator at scale, against a real release `fl coordinator` on loopback:
//!
//! 1. **A 100 MB model** (`mlp-64-333333-10`, 25M f32): one worker downloads the global model and
//!    uploads it back as its update; the ack returns after the aggregation has written the new
//!    model durably. Beside it, in the same run, the same bytes moved by hand: 100 MB down a
//!    loopback socket, 100 MB up into a file and fsynced, and the new model's 100 MB written and
//!    fsynced. Target: the coordinator's round < 2x that.
//! 2. **Memory: 50 workers x 20 rounds of a 1M-parameter model** (`mlp-64-13333-10`, 4 MB): the
//!    coordinator's anonymous memory (`RssAnon`: heap, stacks; sampled every millisecond from
//!    `/proc/<pid>/status`) above its level after start, as a multiple of one model. Target:
//!    <= 3 models plus a per-connection buffer (the coordinator caps each HTTP/1 connection's
//!    read buffer at 64 KiB) for each of the 50 connections. Mapped file pages (`RssFile`: the
//!    shared map of the global model, the updates mapped while aggregating) are the page
//!    cache's, not the coordinator's heap; their peak is printed beside it, as is `VmHWM`
//!    (the kernel's peak of both together).
//!
//! Run: `cargo bench -p benches --bench round_scale` (builds `fl` in release first if missing).
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use benches::node::{http, load_average, proc_status_bytes, start_coordinator};
use benches::{Row, Target, write_rows};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};

/// 64 x 333333 + 333333 + 333333 x 10 + 10 = 24,999,985 f32 = 100 MB.
const BIG_MODEL: &str = "mlp-64-333333-10";
/// 64 x 13333 + 13333 + 13333 x 10 + 10 = 999,985 f32 = 4 MB.
const MID_MODEL: &str = "mlp-64-13333-10";
const MEM_WORKERS: usize = 50;
const MEM_ROUNDS: u64 = 20;
/// The coordinator's cap on what one HTTP/1 connection buffers (fl-node `http::MAX_CONN_BUF_BYTES`).
const CONN_BUF_BYTES: u64 = 64 << 10;

fn scratch(name: &str) -> std::path::PathBuf {
    let d = benches::target_dir()
        .join("tmp")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("creating the bench's scratch dir");
    d
}

fn upload(port: u16, client: &str, round: u64, body: &[u8]) {
    let q = format!("/api/v1/fl/upload_update?client_id={client}&round={round}&num_examples=10");
    let (st, resp) = http(port, "POST", &q, body);
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&resp));
}

/// A loopback server for the raw reference: `d` sends the payload, `u` receives one into a
/// fsynced file and then writes a second file of the same size (the new model), fsynced.
fn raw_server(
    payload: Arc<Vec<u8>>,
    dir: std::path::PathBuf,
) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the raw server");
    let port = listener.local_addr().expect("raw server address").port();
    let h = std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut s = conn.expect("raw accept");
            let mut op = [0u8; 1];
            if s.read_exact(&mut op).is_err() || op[0] == b'q' {
                break;
            }
            if op[0] == b'd' {
                s.write_all(&payload).expect("raw send");
            } else {
                let mut buf = vec![0u8; payload.len()];
                s.read_exact(&mut buf).expect("raw receive");
                for name in ["update", "model"] {
                    let mut f = std::fs::File::create(dir.join(name)).expect("raw file");
                    f.write_all(&buf).expect("raw write");
                    f.sync_all().expect("raw fsync");
                }
                s.write_all(b"k").expect("raw ack");
            }
        }
    });
    (port, h)
}

fn bench_big_model(c: &mut Criterion) -> Vec<Row> {
    let dir = scratch("round-100mb");
    let (coord, port) = start_coordinator(
        &dir.join("data"),
        &[
            "--model",
            BIG_MODEL,
            "--rounds",
            "1000000",
            "--min-fit-clients",
            "1",
            "--min-available-clients",
            "1",
        ],
    );
    assert_eq!(
        http(
            port,
            "POST",
            "/api/v1/fl/register_client",
            br#"{"client_id":"w0"}"#
        )
        .0,
        200
    );
    let model_bytes = http(port, "GET", "/api/v1/fl/model/latest", b"").1.len();
    let mut round = 1u64;
    let mut g = c.benchmark_group("round_1_worker_100MB");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(1));
    let mut coord_ns = Vec::new();
    g.bench_function("coordinator_round", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let (st, model) = http(port, "GET", "/api/v1/fl/model/latest", b"");
                assert_eq!(st, 200);
                upload(port, "w0", round, &model);
                round += 1;
            }
            let d = start.elapsed();
            coord_ns.push(d.as_nanos() as f64 / iters as f64);
            d
        })
    });
    drop(coord);
    let payload = Arc::new(vec![7u8; model_bytes]);
    let raw_dir = dir.join("raw");
    std::fs::create_dir_all(&raw_dir).expect("raw dir");
    let (raw_port, server) = raw_server(payload.clone(), raw_dir);
    let mut raw_ns = Vec::new();
    g.bench_function("raw_move_and_fsync", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut d = TcpStream::connect(("127.0.0.1", raw_port)).expect("raw connect");
                d.write_all(b"d").expect("raw op");
                let mut buf = vec![0u8; payload.len()];
                d.read_exact(&mut buf).expect("raw download");
                let mut u = TcpStream::connect(("127.0.0.1", raw_port)).expect("raw connect");
                u.write_all(b"u").expect("raw op");
                u.write_all(&buf).expect("raw upload");
                let mut ack = [0u8; 1];
                u.read_exact(&mut ack).expect("raw ack");
            }
            let d = start.elapsed();
            raw_ns.push(d.as_nanos() as f64 / iters as f64);
            d
        })
    });
    g.finish();
    let mut q = TcpStream::connect(("127.0.0.1", raw_port)).expect("raw connect");
    q.write_all(b"q").expect("raw quit");
    server.join().expect("raw server");
    let _ = std::fs::remove_dir_all(&dir);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] / 1e6
    };
    let (c_ms, r_ms) = (median(&mut coord_ns), median(&mut raw_ns));
    println!(
        "100 MB round: 1 worker x {model_bytes} B model: coordinator round {c_ms:.0} ms, raw move + fsync of the same bytes \
         {r_ms:.0} ms: {:.2}x (target < 2x); load average {}",
        c_ms / r_ms,
        load_average()
    );
    vec![Row {
        case: format!(
            "coordinator round, 1 worker x {} MB model",
            model_bytes >> 20
        ),
        criterion: Some("round_1_worker_100MB/coordinator_round".into()),
        bytes: Some(3 * model_bytes as u64),
        reference: Some("round_1_worker_100MB/raw_move_and_fsync".into()),
        // < 2x the raw time is a throughput ratio of > 0.5.
        targets: vec![Target::MinRatio(0.5)],
        ..Row::default()
    }]
}

fn measure_memory() -> Vec<Row> {
    let dir = scratch("round-mem");
    let n = MEM_WORKERS.to_string();
    let (coord, port) = start_coordinator(
        &dir.join("data"),
        &[
            "--model",
            MID_MODEL,
            "--rounds",
            &MEM_ROUNDS.to_string(),
            "--min-fit-clients",
            &n,
            "--min-available-clients",
            &n,
        ],
    );
    let pid = coord.0.id();
    for i in 0..MEM_WORKERS {
        let body = format!("{{\"client_id\":\"w{i}\"}}");
        assert_eq!(
            http(port, "POST", "/api/v1/fl/register_client", body.as_bytes()).0,
            200
        );
    }
    let model_bytes = http(port, "GET", "/api/v1/fl/model/latest", b"").1.len() as u64;
    let base = proc_status_bytes(pid, "RssAnon");
    let base_file = proc_status_bytes(pid, "RssFile");
    let peak = Arc::new(AtomicU64::new(base));
    let peak_file = Arc::new(AtomicU64::new(base_file));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, peak_file, stop) = (peak.clone(), peak_file.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(proc_status_bytes(pid, "RssAnon"), Ordering::Relaxed);
                peak_file.fetch_max(proc_status_bytes(pid, "RssFile"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let t0 = Instant::now();
    let barrier = Barrier::new(MEM_WORKERS);
    std::thread::scope(|s| {
        for i in 0..MEM_WORKERS {
            let barrier = &barrier;
            s.spawn(move || {
                for round in 1..=MEM_ROUNDS {
                    let (st, model) = http(port, "GET", "/api/v1/fl/model/latest", b"");
                    assert_eq!(st, 200);
                    upload(port, &format!("w{i}"), round, &model);
                    // The last ack of a round returns after its aggregation: past the barrier
                    // the next round is open.
                    barrier.wait();
                }
            });
        }
    });
    let wall_s = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("memory sampler");
    let hwm = proc_status_bytes(pid, "VmHWM");
    drop(coord);
    let _ = std::fs::remove_dir_all(&dir);
    let extra = peak.load(Ordering::Relaxed).saturating_sub(base) as f64 / model_bytes as f64;
    let file_extra = peak_file.load(Ordering::Relaxed).saturating_sub(base_file) as f64;
    let allowance = 3.0 + (MEM_WORKERS as u64 * CONN_BUF_BYTES) as f64 / model_bytes as f64;
    println!(
        "coordinator memory: {MEM_WORKERS} workers x {MEM_ROUNDS} rounds x {model_bytes} B model in {wall_s:.1} s: \
         peak RssAnon {:.1} MB above the {:.1} MB after start = {extra:.2} models \
         (target <= {allowance:.2} = 3 models + {MEM_WORKERS} x {CONN_BUF_BYTES} B connection buffers); \
         mapped file pages (RssFile) peaked {:.1} MB above start = {:.2} models (page cache, not heap); \
         VmHWM {:.1} MB; load average {}",
        (peak.load(Ordering::Relaxed) - base) as f64 / 1e6,
        base as f64 / 1e6,
        file_extra / 1e6,
        file_extra / model_bytes as f64,
        hwm as f64 / 1e6,
        load_average()
    );
    vec![Row {
        case: format!(
            "coordinator extra memory, {MEM_WORKERS} workers x {MEM_ROUNDS} rounds x 1M params"
        ),
        value: Some(extra),
        unit: Some("models".into()),
        targets: vec![Target::MaxValue(allowance)],
        ..Row::default()
    }]
}

fn bench_round_scale(c: &mut Criterion) {
    let mut rows = bench_big_model(c);
    rows.extend(measure_memory());
    match write_rows("round_scale", &rows) {
        Ok(p) => println!("rows written to {}", p.display()),
        Err(e) => eprintln!("writing bench rows: {e}"),
    }
}

criterion_group!(benches, bench_round_scale);
criterion_main!(benches);
