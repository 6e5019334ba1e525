//! A tiny HTTP/1.1 client that talks to servers inside a namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::netns::in_netns;

/// A minimal HTTP/1.1 request from inside `ns`: (status, body). The answer may take 5 s, times
/// [`crate::slowdown::slowdown`] (a scrape reading a full pending-SYN map takes seconds in the
/// emulated guest).
pub fn http(ns: &str, to: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
    let read_timeout = Duration::from_secs(5) * crate::slowdown::slowdown();
    in_netns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(read_timeout))?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad response {response:?}")))?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(head, body)| response_body(head, body))
            .unwrap_or_default();
        Ok((status, body))
    })
}

/// GET `path` from `to` inside `ns` with an optional Accept header: (status, content type,
/// body).
pub fn get(ns: &str, to: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let accept = accept
        .map(|accept| format!("Accept: {accept}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\n{accept}Connection: close\r\n\r\n");
    let response = in_netns(ns, move || {
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    });
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, response_body(head, body))
}

/// The body of an HTTP/1.1 response with head `head`, de-chunked if it was sent with
/// `Transfer-Encoding: chunked` (the telemetry path streams its body so; Prometheus sends its
/// larger API answers so).
fn response_body(head: &str, body: &str) -> String {
    let chunked = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding") && value.trim() == "chunked"
        })
    });
    if !chunked {
        return body.to_string();
    }
    let mut chunks = body;
    let mut whole = String::new();
    loop {
        let (size, rest) = chunks.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return whole;
        }
        whole.push_str(&rest[..size]);
        chunks = rest[size..].strip_prefix("\r\n").expect("chunk end");
    }
}
