//! `crypto_info()`: how this build's cryptography is configured, for diagnostics and tests.

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The crypto library, how it seeds its random generator, and how many RSA key generations
/// `PrivateKey.generate` races here.
#[pyfunction]
pub fn crypto_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("library", "aws-lc")?;
    let seed = if nomyo_core::rand::aws_lc_seeds_from_cpu_jitter() {
        "cpu-jitter"
    } else {
        "os"
    };
    d.set_item("rng_seed", seed)?;
    d.set_item(
        "key_generation_racers",
        nomyo_core::keygen::default_racers(),
    )?;
    Ok(d)
}
