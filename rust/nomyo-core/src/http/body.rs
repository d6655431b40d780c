//! Reading a reply: its head, then its body within the caller's limits and deadlines.

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use tokio::time::Instant;

use super::{Request, Response};
use crate::error::{Error, Phase, Result};

/// The first reservation for a reply body, whatever length the server declares: the buffer
/// grows (fallibly) as bytes arrive, so a declared length costs nothing until it is sent.
const FIRST_RESERVATION: usize = 64 * 1024;

/// The header list of a reply: lower-case names, values decoded lossily as UTF-8.
fn header_list(response: &hyper::Response<Incoming>) -> Vec<(String, String)> {
    response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Read `response` completely under the limits of `req`: a 200 over `ok_limit` or
/// compressed is an error; another status keeps its head and drops a body it cannot keep
/// (the status may be retryable).
pub(super) async fn read(
    response: hyper::Response<Incoming>,
    req: &Request<'_>,
) -> Result<Response> {
    let status = response.status().as_u16();
    let headers = header_list(&response);
    let encoding = response.headers().get(CONTENT_ENCODING);
    let compressed = encoding.is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    let ok = status == 200;
    let limit = if ok { req.ok_limit } else { req.error_limit };
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = if compressed {
        Err(Error::Encoding(
            "the reply is compressed (Content-Encoding) although identity was requested".into(),
        ))
    } else if let Some(declared) = declared.filter(|&d| d > limit as u64) {
        Err(Error::TooLarge(format!(
            "reply of {declared} bytes exceeds the limit of {limit} bytes"
        )))
    } else {
        let deadline = req.body_deadline.map(|d| Instant::now() + d);
        let reading = Reading {
            limit,
            read: req.timeouts.read,
            deadline,
        };
        reading.collect(response.into_body(), declared).await
    };
    match body {
        Ok(body) => Ok(Response {
            status,
            headers,
            body,
        }),
        // An error status from a proxy or CDN that compressed anyway, or with a body over
        // the limit: keep the status, drop the body (and the connection).
        Err(Error::Encoding(_) | Error::TooLarge(_)) if !ok => Ok(Response {
            status,
            headers,
            body: Vec::new(),
        }),
        Err(e) => Err(e),
    }
}

/// How one body is read: at most `limit` bytes, each chunk within `read`, all by `deadline`.
struct Reading {
    limit: usize,
    read: Option<std::time::Duration>,
    deadline: Option<Instant>,
}

impl Reading {
    /// When the next chunk must have come (None: no bound).
    fn next_end(&self) -> Option<Instant> {
        let read_end = self.read.map(|r| Instant::now() + r);
        match (read_end, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    async fn collect<B>(&self, mut body: B, declared: Option<u64>) -> Result<Vec<u8>>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let mut data = Vec::new();
        let first = declared.map_or(0, |d| d as usize).min(self.limit);
        if data.try_reserve(first.min(FIRST_RESERVATION)).is_err() {
            return Err(Error::TooLarge("cannot allocate the reply buffer".into()));
        }
        loop {
            let next = match self.next_end() {
                None => Ok(body.frame().await),
                Some(end) => tokio::time::timeout_at(end, body.frame()).await,
            };
            let frame = match next {
                Err(_) => return Err(Error::Timeout(Phase::Read)),
                Ok(None) => return Ok(data),
                Ok(Some(Err(e))) => {
                    return Err(Error::Closed(format!("the reply body broke off: {e}")))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(chunk) = frame.into_data() {
                self.append(&mut data, &chunk)?;
            }
        }
    }

    /// Append `chunk` with amortised (doubling) growth capped at the limit; a failed
    /// allocation is an error, not an abort.
    fn append(&self, data: &mut Vec<u8>, chunk: &[u8]) -> Result<()> {
        if data.len() + chunk.len() > self.limit {
            return Err(Error::TooLarge(format!(
                "reply body exceeds the limit of {} bytes",
                self.limit
            )));
        }
        if data.capacity() - data.len() < chunk.len() {
            let want = (data.len() + chunk.len())
                .max(data.capacity() * 2)
                .min(self.limit);
            if data.try_reserve_exact(want - data.len()).is_err() {
                return Err(Error::TooLarge(format!(
                    "cannot allocate {want} bytes for the reply"
                )));
            }
        }
        data.extend_from_slice(chunk);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_grows_by_doubling_and_stops_at_the_limit() {
        let reading = Reading {
            limit: 10,
            read: None,
            deadline: None,
        };
        let mut data = Vec::new();
        reading.append(&mut data, b"abc").unwrap();
        reading.append(&mut data, b"defg").unwrap();
        assert_eq!(data, b"abcdefg");
        assert!(data.capacity() <= 10);
        let err = reading.append(&mut data, b"hijk").unwrap_err();
        assert_eq!(err.kind(), "too_large");
        assert_eq!(
            data, b"abcdefg",
            "nothing of a chunk over the limit is kept"
        );
    }

    #[test]
    fn the_next_chunk_is_due_at_the_earlier_of_read_and_deadline() {
        let now = Instant::now();
        let soon = Reading {
            limit: 1,
            read: Some(std::time::Duration::from_secs(60)),
            deadline: Some(now),
        };
        assert_eq!(soon.next_end(), Some(now));
        let none = Reading {
            limit: 1,
            read: None,
            deadline: None,
        };
        assert_eq!(none.next_end(), None);
    }
}
