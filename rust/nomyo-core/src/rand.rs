//! Randomness straight from the operating system's CSPRNG (`getrandom(2)` on Linux).

use crate::error::{Error, Result};

/// Fill `buf` with bytes from the OS CSPRNG.
pub fn fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| Error::Internal("the OS random number generator failed"))
}
