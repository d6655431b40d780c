//! One Python request (a dict) converted into the core's `sealed::Request`.

use nomyo_core::http::{self, Timeouts};
use nomyo_core::sealed::{Body, Open, Request};
use nomyo_core::secret::{self, Policy};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::CoreError;
use crate::json;
use crate::keys::{PyPrivateKey, PyPublicKey};

/// The request as Python hands it over: a dict with these keys (see `_core.pyi`).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub(crate) struct PyRequest<'py> {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    #[pyo3(default)]
    body: Option<Bound<'py, PyBytes>>,
    /// `(payload, server_key)`: the payload is serialized to JSON and sealed to the key.
    #[pyo3(default)]
    seal: Option<(Bound<'py, PyAny>, Bound<'py, PyPublicKey>)>,
    /// `(client_key, max_size)`: open a 200 reply with the key.
    #[pyo3(default)]
    open: Option<(Bound<'py, PyPrivateKey>, usize)>,
    ok_limit: usize,
    error_limit: usize,
    /// `(connect, read, write, pool)` seconds, None for no limit.
    timeouts: (Option<f64>, Option<f64>, Option<f64>, Option<f64>),
    #[pyo3(default)]
    body_deadline: Option<f64>,
    #[pyo3(default)]
    proxy: Option<String>,
}

impl PyRequest<'_> {
    /// The core request; the payload is serialized here (before anything is sent) under
    /// `policy`.
    pub(crate) fn into_core(self, policy: Policy) -> PyResult<Request> {
        let method = http::method(&self.method).map_err(CoreError)?;
        let body = match (self.body, self.seal) {
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err("pass either body or seal, not both"))
            }
            (Some(raw), None) => Body::Raw(raw.as_bytes().to_vec()),
            (None, Some((payload, key))) => Body::Sealed {
                plaintext: secret::secret_step(policy, || json::dumps(&payload))?,
                recipient: key.get().inner.clone(),
            },
            (None, None) => Body::Empty,
        };
        Ok(Request {
            method,
            url: self.url,
            headers: self.headers,
            body,
            open: self.open.map(|(key, max_size)| Open {
                key: key.get().inner.clone(),
                max_size,
            }),
            ok_limit: self.ok_limit,
            error_limit: self.error_limit,
            timeouts: Timeouts::from_seconds(self.timeouts).map_err(CoreError)?,
            body_deadline: http::seconds(self.body_deadline, "body deadline").map_err(CoreError)?,
            proxy: self.proxy,
            policy,
        })
    }
}
