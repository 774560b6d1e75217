//! A minimal HTTP/1.1 client for the router's local API, run from a thread
//! inside the node's namespace (the API listens on that namespace's loopback).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::in_netns;

/// Bound for connect, each read/write, and the whole exchange.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response body accepted; the API's answers are small.
const MAX_RESPONSE: usize = 16 << 20;

/// `application/x-www-form-urlencoded` encoding of `pairs`.
pub fn form_urlencode(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v))).collect::<Vec<_>>().join("&")
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Sends one request to `addr` from inside namespace `ns` and returns
/// `(status, body)`. A `Some(form)` is sent url-encoded as the body.
pub fn http_request(
    ns: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    form: Option<&[(&str, &str)]>,
) -> Result<(u16, String)> {
    let body = form.map(form_urlencode);
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = &body {
        request.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    } else if method != "GET" && method != "HEAD" {
        request.push_str("Content-Length: 0\r\n\r\n");
    } else {
        request.push_str("\r\n");
    }
    let raw = in_netns(ns, || exchange(addr, request.as_bytes()))?
        .with_context(|| format!("{method} http://{addr}{path} in {ns}"))?;
    parse_response(&raw).with_context(|| format!("{method} http://{addr}{path} in {ns}"))
}

fn exchange(addr: SocketAddr, request: &[u8]) -> Result<Vec<u8>> {
    let deadline = Instant::now() + HTTP_TIMEOUT;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).context("connect")?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    stream.write_all(request).context("write request")?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if Instant::now() >= deadline {
            bail!("response not complete within {HTTP_TIMEOUT:?}");
        }
        let n = stream.read(&mut buf).context("read response")?;
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_RESPONSE {
            bail!("response larger than {MAX_RESPONSE} bytes");
        }
    }
}

/// Parses a complete `Connection: close` response into `(status, body)`,
/// undoing chunked transfer encoding.
pub fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no end of headers in response")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    // Each iteration consumes one chunk, so the loop is bounded by the input.
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").context("chunk size line")?;
        let size_line = String::from_utf8_lossy(&data[..eol]);
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).with_context(|| format!("chunk size {size_hex:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).context("truncated chunk")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).context("truncated chunk trailer")?;
    }
}
