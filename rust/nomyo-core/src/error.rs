//! The one error type of the core, and its one wording (`Display`).
//!
//! Crypto failures are a single opaque variant ([`Error::Security`]) so that nothing about *why*
//! an unwrap or authentication failed can leak to a caller (no padding or timing oracle).
//! Structural failures name the problem; their messages never contain secret bytes.
//! Failures of the HTTP engine carry what a caller decides on as data, never as text: the
//! [`Cause`] of a failed connection, the status a forward proxy answered with, the [`Phase`]
//! that timed out.

use std::fmt;

/// Everything that can go wrong in the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Decryption, unwrapping or authentication failed. Deliberately without detail.
    Security,
    /// An envelope (or decrypted reply) is structurally invalid: not JSON, a missing or
    /// oversized field, bad base64, wrong version or algorithm.
    Envelope(String),
    /// A key could not be parsed, decrypted or accepted.
    Key(String),
    /// A value cannot be represented (e.g. JSON serialization of a NaN).
    Value(String),
    /// A value of a type JSON cannot hold, or a key of a type JSON cannot write.
    Type(String),
    /// A value inside more than the given number of containers (or a circular reference).
    TooDeep(usize),
    /// A file-system or OS failure, with the OS error kind kept.
    Io(std::io::ErrorKind, String),
    /// The OS random number generator or the crypto library failed unexpectedly.
    Internal(&'static str),
    /// `secure_memory='require'`: a secret buffer could not be locked and dump-excluded, so it
    /// was refused before anything was written to it (sizes and limit only).
    Memory(Shortfall),
    /// A bad URL, header, limit or trust store: nothing was sent.
    Config(String),
    /// No connection could be made; the cause says which step failed and how.
    Connect(Cause, String),
    /// The forward proxy did not open the tunnel: the status it answered with, or `None` when
    /// it gave no usable answer (malformed, oversized, or bytes after accepting).
    Proxy(Option<u16>, String),
    /// The named phase took longer than its timeout.
    Timeout(Phase),
    /// The connection broke after it was made, or the server spoke malformed HTTP.
    Closed(String),
    /// The reply body is (or announces itself) larger than the caller's limit.
    TooLarge(String),
    /// The reply is compressed although `identity` was requested.
    Encoding(String),
}

/// Why a connection could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The host name does not resolve (no such name, no address, a permanent resolver error).
    Dns,
    /// The resolver failed for now (`EAI_AGAIN` and the like): may work on another try.
    DnsTransient,
    /// The host refused the TCP connection.
    Refused,
    /// The connection was reset, aborted or closed while it was being made (also in the
    /// middle of a TLS handshake or a proxy tunnel).
    Reset,
    /// The host could not be reached (unreachable network, no route, a TCP timeout).
    Unreachable,
    /// The TLS handshake failed (no common protocol, an alert, not TLS at all).
    Tls,
    /// The server's certificate was refused (untrusted issuer, wrong name, expired, ...).
    Certificate,
}

impl Cause {
    /// The name Python sees (`TransportError.cause`).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Dns => "dns",
            Cause::DnsTransient => "dns-transient",
            Cause::Refused => "refused",
            Cause::Reset => "reset",
            Cause::Unreachable => "unreachable",
            Cause::Tls => "tls",
            Cause::Certificate => "certificate",
        }
    }

    /// The cause of an I/O failure while connecting (TCP, the tunnel, or the handshake's
    /// transport).
    pub fn of_io(kind: std::io::ErrorKind) -> Cause {
        use std::io::ErrorKind as K;
        match kind {
            K::ConnectionRefused => Cause::Refused,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                Cause::Reset
            }
            _ => Cause::Unreachable,
        }
    }
}

/// The phase of a request that timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Making the connection: TCP, the proxy tunnel and TLS.
    Connect,
    /// Waiting for the reply head, or between body chunks, or for the whole body.
    Read,
    /// Waiting for a free slot in the client.
    Pool,
}

impl Phase {
    /// The name Python sees (`TransportError.phase`).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Read => "read",
            Phase::Pool => "pool",
        }
    }
}

/// Result alias of the core.
pub type Result<T> = std::result::Result<T, Error>;

/// Longest structural-error detail shown: it can echo attacker-chosen names and values.
const MAX_DETAIL: usize = 300;

fn clipped(message: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if message.chars().count() <= MAX_DETAIL {
        return f.write_str(message);
    }
    let head: String = message.chars().take(MAX_DETAIL).collect();
    write!(f, "{head}… (truncated)")
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Security => {
                f.write_str("Decryption failed: integrity check or authentication failed")
            }
            Error::Envelope(m) => {
                f.write_str("Invalid encrypted envelope: ")?;
                clipped(m, f)
            }
            Error::Internal(m) => write!(f, "internal error: {m}"),
            Error::Memory(shortfall) => shortfall.fmt(f),
            Error::Timeout(phase) => write!(f, "{} timeout", phase.as_str()),
            Error::TooDeep(depth) => write!(
                f,
                "JSON nesting too deep (a value inside more than {depth} arrays or objects, or \
                 a circular reference)"
            ),
            Error::Key(m)
            | Error::Value(m)
            | Error::Type(m)
            | Error::Io(_, m)
            | Error::Config(m)
            | Error::Connect(_, m)
            | Error::Proxy(_, m)
            | Error::Closed(m)
            | Error::TooLarge(m)
            | Error::Encoding(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    pub(crate) fn envelope(msg: impl Into<String>) -> Self {
        Error::Envelope(msg.into())
    }

    pub(crate) fn key(msg: impl Into<String>) -> Self {
        Error::Key(msg.into())
    }

    pub(crate) fn io(context: &str, err: &std::io::Error) -> Self {
        Error::Io(err.kind(), format!("{context}: {err}"))
    }

    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }

    /// A short machine-readable name of the failure (`TransportError.kind` for the engine's).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Security => "security",
            Error::Envelope(_) => "envelope",
            Error::Key(_) => "key",
            Error::Value(_) => "value",
            Error::Type(_) => "type",
            Error::TooDeep(_) => "too_deep",
            Error::Io(..) => "io",
            Error::Internal(_) => "internal",
            Error::Memory(_) => "memory",
            Error::Config(_) => "config",
            Error::Connect(..) => "connect",
            Error::Proxy(..) => "proxy",
            Error::Timeout(_) => "timeout",
            Error::Closed(_) => "closed",
            Error::TooLarge(_) => "too_large",
            Error::Encoding(_) => "encoding",
        }
    }

    /// Why a connection failed (`TransportError.cause`): only for [`Error::Connect`].
    pub fn cause(&self) -> Option<Cause> {
        match self {
            Error::Connect(cause, _) => Some(*cause),
            _ => None,
        }
    }

    /// What a forward proxy answered (`TransportError.status`): only for [`Error::Proxy`],
    /// and `None` there when it gave no usable answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Proxy(status, _) => *status,
            _ => None,
        }
    }

    /// What timed out (`TransportError.phase`): only for [`Error::Timeout`].
    pub fn phase(&self) -> Option<Phase> {
        match self {
            Error::Timeout(phase) => Some(*phase),
            _ => None,
        }
    }
}

/// Why [`Policy::Require`] refused a secret buffer: what it needed and what the limit is.
/// Holds sizes only, never contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// Bytes of the mapping that could not be locked (whole pages).
    pub needed: u64,
    /// The soft `RLIMIT_MEMLOCK` in bytes (`None` = unlimited).
    pub limit: Option<u64>,
    /// Bytes this process had locked when it was refused.
    pub locked: u64,
    /// The pages were locked but could not be excluded from core dumps.
    pub dump_exclusion_failed: bool,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dump_exclusion_failed {
            return write!(
                f,
                "secure_memory='require': a secret buffer of {} bytes could not be excluded \
                 from core dumps (madvise MADV_DONTDUMP failed on this platform); nothing was \
                 written to it or sent",
                self.needed
            );
        }
        let limit = match self.limit {
            Some(l) => format!("{l} bytes"),
            None => "unlimited".to_owned(),
        };
        write!(
            f,
            "secure_memory='require': a secret buffer of {} bytes could not be locked in RAM \
             (RLIMIT_MEMLOCK is {limit}, {} bytes already locked by this process); nothing was \
             written to it or sent. Raise the limit (`ulimit -l unlimited`, \
             `docker run --ulimit memlock=-1:-1`, LimitMEMLOCK=infinity for systemd) or grant \
             CAP_IPC_LOCK; `nomyo doctor --size BYTES` checks a request size",
            self.needed, self.locked
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_details_belong_to_their_own_variant_only() {
        let connect = Error::Connect(Cause::DnsTransient, "no answer".into());
        let proxy = Error::Proxy(Some(407), "auth".into());
        let timeout = Error::Timeout(Phase::Pool);
        let closed = Error::Closed("eof".into());
        assert_eq!(connect.cause().map(Cause::as_str), Some("dns-transient"));
        assert_eq!(proxy.status(), Some(407));
        assert_eq!(Error::Proxy(None, "garbled".into()).status(), None);
        assert_eq!(timeout.phase().map(Phase::as_str), Some("pool"));
        for err in [&connect, &proxy, &timeout, &closed] {
            let set = [
                err.cause().is_some(),
                err.status().is_some(),
                err.phase().is_some(),
            ];
            assert!(set.iter().filter(|&&s| s).count() <= 1, "{err:?}");
        }
        assert_eq!(
            (closed.cause(), closed.status(), closed.phase()),
            (None, None, None)
        );
    }
}
