//! Name resolution with the resolver's verdict kept: `getaddrinfo`'s return code tells a
//! name that does not exist ([`Cause::Dns`]) from a resolver that failed for now
//! ([`Cause::DnsTransient`], `EAI_AGAIN`). The standard library folds both into one
//! uncategorised `io::Error` whose text alone tells them apart.

use std::net::{IpAddr, SocketAddr};

use crate::error::{Cause, Error, Result};

/// The addresses of `host` (a name or an IP literal without brackets) at `port`, in the
/// resolver's order. Runs the blocking lookup on Tokio's blocking pool.
pub(crate) async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let name = host.to_owned();
    tokio::task::spawn_blocking(move || lookup(&name, port))
        .await
        .unwrap_or_else(|_| {
            Err(Error::Connect(
                Cause::DnsTransient,
                "the name lookup was cancelled".into(),
            ))
        })
}

#[cfg(unix)]
fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>> {
    use std::ffi::{CStr, CString};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    let failed = |cause: Cause, detail: &str| {
        Error::Connect(
            cause,
            format!("cannot resolve {host}: failed to lookup address information: {detail}"),
        )
    };
    let name = CString::new(host).map_err(|_| failed(Cause::Dns, "the name holds a NUL byte"))?;
    // SAFETY: an all-zero addrinfo is the documented "no hints" value; the fields set below
    // are plain integers.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: `name` is a NUL-terminated string, `hints` a valid addrinfo, `list` a valid
    // out-pointer; on success the list is freed below with freeaddrinfo.
    let code = unsafe { libc::getaddrinfo(name.as_ptr(), std::ptr::null(), &hints, &mut list) };
    if code != 0 {
        // SAFETY: gai_strerror returns a static NUL-terminated string for any code.
        let detail = unsafe { CStr::from_ptr(libc::gai_strerror(code)) }.to_string_lossy();
        let cause = match code {
            libc::EAI_AGAIN | libc::EAI_MEMORY | libc::EAI_SYSTEM => Cause::DnsTransient,
            _ => Cause::Dns,
        };
        return Err(failed(cause, &detail));
    }
    let mut addrs = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getaddrinfo returned (not yet freed); its
        // `ai_addr` points at a sockaddr of the family `ai_family` names.
        unsafe {
            let info = &*entry;
            match info.ai_family {
                libc::AF_INET => {
                    let sin = &*(info.ai_addr as *const libc::sockaddr_in);
                    let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    addrs.push(SocketAddr::new(IpAddr::V4(ip), port));
                }
                libc::AF_INET6 => {
                    let sin6 = &*(info.ai_addr as *const libc::sockaddr_in6);
                    let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                    let v6 = SocketAddrV6::new(ip, port, sin6.sin6_flowinfo, sin6.sin6_scope_id);
                    addrs.push(SocketAddr::V6(v6));
                }
                _ => {}
            }
            entry = info.ai_next;
        }
    }
    // SAFETY: `list` came from a successful getaddrinfo and is freed once.
    unsafe { libc::freeaddrinfo(list) };
    if addrs.is_empty() {
        return Err(failed(Cause::Dns, "no address"));
    }
    Ok(addrs)
}

/// Elsewhere the standard resolver; its failures count as a name that does not resolve.
#[cfg(not(unix))]
fn lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .map_err(|e| Error::Connect(Cause::Dns, format!("cannot resolve {host}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn literals_and_localhost_resolve() {
        let v6 = run(resolve("::1", 8443)).unwrap();
        assert_eq!(v6, vec!["[::1]:8443".parse().unwrap()]);
        let local = run(resolve("localhost", 80)).unwrap();
        assert!(
            local.iter().all(|a| a.ip().is_loopback() && a.port() == 80),
            "{local:?}"
        );
    }

    #[test]
    fn a_name_that_cannot_exist_is_a_dns_failure() {
        // `.invalid` is reserved never to resolve (RFC 6761).
        let err = run(resolve("no-such-host.invalid", 443)).unwrap_err();
        match &err {
            Error::Connect(cause, text) => {
                assert!(
                    matches!(cause, Cause::Dns | Cause::DnsTransient),
                    "{cause:?}"
                );
                assert!(text.contains("no-such-host.invalid"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        let nul = run(resolve("a\0b", 1)).unwrap_err();
        assert!(matches!(nul, Error::Connect(Cause::Dns, _)));
    }
}
