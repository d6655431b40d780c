//! A forward proxy (`http://[user:password@]host[:port]`): where to connect and the
//! `Proxy-Authorization` value its credentials make. Neither `Debug` nor `Display` shows the
//! credentials; errors name the proxy as `http://host:port` only.

use std::fmt;

use base64::Engine as _;
use hyper::header::HeaderValue;

use crate::error::{Error, Result};

/// A parsed proxy URL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Proxy {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `Basic base64(user:password)`, marked sensitive (hyper never logs it).
    authorization: Option<HeaderValue>,
}

fn percent_decode(text: &str) -> Result<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::config("bad percent-encoding in the proxy credentials"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

impl Proxy {
    /// Parse `http://[user[:password]@]host[:port][/]`. Other schemes (https, socks) are
    /// refused here; the Python side hands them to httpx.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            _ => {
                return Err(Error::Config(
                    "the native transport supports http:// proxies only".into(),
                ))
            }
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| Error::config("invalid proxy URL"))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(Error::config("the proxy URL has no host"));
        }
        let port = match port {
            None | Some("") => 80,
            Some(p) => p.parse().map_err(|_| Error::config("invalid proxy port"))?,
        };
        let authorization = match userinfo {
            None => None,
            Some(info) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                let mut plain = percent_decode(user)?;
                plain.push(b':');
                plain.extend(percent_decode(password)?);
                let token = base64::engine::general_purpose::STANDARD.encode(&plain);
                let mut value = HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|_| Error::config("invalid proxy credentials"))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Proxy {
            host: host.to_ascii_lowercase(),
            port,
            authorization,
        })
    }

    /// The `Proxy-Authorization` value, when the URL carried credentials.
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Proxy({self}{})",
            if self.authorization.is_some() {
                ", credentials"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hides_credentials() {
        let p = Proxy::parse("http://us%40er:p%3Ass@Proxy.example:3128/").unwrap();
        assert_eq!(p.to_string(), "http://proxy.example:3128");
        assert_eq!(
            format!("{p:?}"),
            "Proxy(http://proxy.example:3128, credentials)"
        );
        let value = p.authorization().unwrap();
        assert!(value.is_sensitive());
        let token = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let plain = base64::engine::general_purpose::STANDARD
            .decode(token)
            .unwrap();
        assert_eq!(plain, b"us@er:p:ss");
        let p = Proxy::parse("http://[::1]").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 80));
        assert!(p.authorization().is_none());
        assert!(Proxy::parse("socks5://h:1").is_err());
        assert!(Proxy::parse("http://h:x").is_err());
        let err = Proxy::parse("http://u:secret@h:1%zz").unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }
}
