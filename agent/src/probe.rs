//! `task-executor probe URL`: one HTTP GET, exit 0 on a 2xx answer.
//!
//! The agent's image is `scratch` (no shell, no curl), so a container
//! engine's health check (Docker's `HEALTHCHECK CMD`) has nothing to run but
//! the agent's own binary. The probe is plain blocking std networking: no
//! async runtime, no configuration from the environment, so it starts in
//! microseconds and works with whatever environment the container has.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Why a probe failed, for the health check's log (Docker keeps the output
/// of the last checks in `docker inspect`).
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// The URL is not `http://HOST:PORT/PATH`.
    BadUrl(String),
    /// Nothing answered, or the answer was not HTTP.
    Unreachable(String),
    /// An HTTP answer outside 2xx.
    Status(u16),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::BadUrl(m) => write!(f, "bad probe URL: {m}"),
            ProbeError::Unreachable(m) => write!(f, "unreachable: {m}"),
            ProbeError::Status(code) => write!(f, "HTTP {code}"),
        }
    }
}

/// The parts of an `http://` URL the probe needs.
fn parse(url: &str) -> Result<(String, u16, String), ProbeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ProbeError::BadUrl(format!("`{url}` does not start with http://")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| ProbeError::BadUrl(format!("`{p}` is not a port")))?,
        ),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err(ProbeError::BadUrl(format!("`{url}` has no host")));
    }
    Ok((host.to_string(), port, path.to_string()))
}

/// GETs `url` within `timeout` (connect, then the whole answer) and returns
/// the status code when it is 2xx.
pub fn probe(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let (host, port, path) = parse(url)?;
    let addr: SocketAddr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| ProbeError::Unreachable(format!("{host}: {e}")))?
        .next()
        .ok_or_else(|| ProbeError::Unreachable(format!("{host} has no address")))?;
    let unreachable = |e: std::io::Error| ProbeError::Unreachable(format!("{addr}: {e}"));
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    // HTTP/1.0 with Connection: close: the server ends the body by closing,
    // so reading to the end needs no chunked decoding.
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(unreachable)?;
    let mut head = Vec::with_capacity(256);
    // The status line is all the probe needs; bound what it reads.
    stream
        .take(4096)
        .read_to_end(&mut head)
        .map_err(unreachable)?;
    let line = String::from_utf8_lossy(&head);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/"))
        .ok_or_else(|| ProbeError::Unreachable(format!("{addr} did not answer HTTP")))?;
    if (200..300).contains(&code) {
        Ok(code)
    } else {
        Err(ProbeError::Status(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server answering `answer` to the first connection.
    fn serve(answer: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Read the whole request first: closing with unread bytes
            // would reset the connection under the client's read.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            s.write_all(answer.as_bytes()).unwrap();
        });
        port
    }

    #[test]
    fn a_2xx_answer_passes() {
        let port = serve("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        let url = format!("http://127.0.0.1:{port}/ready");
        assert_eq!(probe(&url, Duration::from_secs(5)), Ok(200));
    }

    #[test]
    fn a_503_fails_with_its_status() {
        let port = serve("HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready");
        let url = format!("http://127.0.0.1:{port}/ready");
        assert_eq!(
            probe(&url, Duration::from_secs(5)),
            Err(ProbeError::Status(503))
        );
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/ready");
        assert!(matches!(
            probe(&url, Duration::from_secs(5)),
            Err(ProbeError::Unreachable(_))
        ));
    }

    #[test]
    fn malformed_urls_are_rejected() {
        for url in ["https://x/ready", "http://:80/", "http://h:port/"] {
            assert!(
                matches!(
                    probe(url, Duration::from_secs(1)),
                    Err(ProbeError::BadUrl(_))
                ),
                "{url}"
            );
        }
        assert_eq!(
            parse("http://127.0.0.1:8081").unwrap(),
            ("127.0.0.1".into(), 8081, "/".into())
        );
    }
}
