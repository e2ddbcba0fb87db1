//! A blocking HTTP/1.1 GET/POST over a loopback socket, enough to read the coordinator's JSON
//! endpoints and to talk to etcd's HTTP/JSON gRPC gateway. The harness has no async runtime; a
//! single short request per poll does not warrant one (reqwest's blocking client would pull tokio into every harness build).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest response body read (the rounds history of a long job stays well below this).
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Per-request connect/read/write timeout: the coordinator answers on loopback in ms.
const IO_TIMEOUT_MS: u64 = 5_000;

/// GETs `path` with the given headers; returns the status and the body.
pub fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Vec<u8>), String> {
    request(
        "GET",
        addr,
        path,
        headers,
        None,
        Duration::from_millis(IO_TIMEOUT_MS),
    )
}

/// POSTs a JSON `body` to `path`; every socket operation gives up after `timeout` (etcd's
/// gateway holds a write without quorum for its own request timeout, seconds: the caller
/// bounds how long it listens).
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    request(
        "POST",
        addr,
        path,
        &[("content-type", "application/json")],
        Some(body),
        timeout,
    )
}

pub fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    t: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let what = |e: std::io::Error| format!("{method} http://{addr}{path} failed: {e}");
    let mut s = TcpStream::connect_timeout(&addr, t).map_err(what)?;
    s.set_read_timeout(Some(t)).map_err(what)?;
    s.set_write_timeout(Some(t)).map_err(what)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("content-length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    s.write_all(&bytes).map_err(what)?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE_BYTES as u64 + 64 * 1024)
        .read_to_end(&mut raw)
        .map_err(what)?;
    parse_response(&raw).map_err(|e| format!("{method} http://{addr}{path}: {e}"))
}

/// Splits a whole HTTP/1.1 response into status and body (identity or chunked).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the response has no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line `{status_line}`"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[end + 4..];
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    // Each chunk is at least 3 bytes ("0\r\n"), so this bounds the loop.
    for _ in 0..=body.len() {
        let nl = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk size line has no end")?;
        let size_text = std::str::from_utf8(&rest[..nl]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size `{size_text}`"))?;
        if size == 0 {
            return Ok((status, out));
        }
        let data = rest
            .get(nl + 2..nl + 2 + size)
            .ok_or("the response ends inside a chunk")?;
        if out.len() + size > MAX_RESPONSE_BYTES {
            return Err(format!("the body is over {MAX_RESPONSE_BYTES} bytes"));
        }
        out.extend_from_slice(data);
        rest = rest.get(nl + 2 + size + 2..).unwrap_or_default();
    }
    Err("the chunked body never ends".into())
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn identity_and_chunked_bodies() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(r).unwrap(), (200, b"{}".to_vec()));
        let r = b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(r).unwrap(), (401, b"abcde".to_vec()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        let r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n";
        assert!(parse_response(r).unwrap_err().contains("chunk size"));
    }
}
