//! Randomness straight from the operating system's CSPRNG (`getrandom(2)` on Linux).

use crate::error::{Error, Result};

/// Fill `buf` with bytes from the OS CSPRNG.
pub fn fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| Error::Internal("the OS random number generator failed"))
}

/// Whether aws-lc seeds its own random generator (used inside RSA-OAEP and TLS) by sampling
/// CPU timing jitter; this build turns that off (`.cargo/config.toml`) and seeds from the OS.
pub fn aws_lc_seeds_from_cpu_jitter() -> bool {
    aws_lc_rs::try_fips_cpu_jitter_entropy().is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn aws_lc_seeds_from_the_os_not_cpu_jitter() {
        // Set in .cargo/config.toml (AWS_LC_SYS_NO_JITTER_ENTROPY): jitter sampling cost
        // 35-70 ms on each process's first random number.
        assert!(!super::aws_lc_seeds_from_cpu_jitter());
    }
}
