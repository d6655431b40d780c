//! How this build's cryptography is configured (`crypto_info()` in Python), for diagnostics
//! and tests.

use serde::Serialize;

/// The crypto library, how it seeds its random generator, and how many RSA key generations
/// `PrivateKey.generate` races here. Serializes to the dict `crypto_info()` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CryptoInfo {
    /// Always `aws-lc`.
    pub library: &'static str,
    /// `os`, or `cpu-jitter` in a build without the project's cargo settings
    /// (see [`crate::rand::aws_lc_seeds_from_cpu_jitter`]).
    pub rng_seed: &'static str,
    /// [`crate::keygen::default_racers`].
    pub key_generation_racers: usize,
}

/// This build's configuration.
pub fn crypto_info() -> CryptoInfo {
    CryptoInfo {
        library: "aws-lc",
        rng_seed: if crate::rand::aws_lc_seeds_from_cpu_jitter() {
            "cpu-jitter"
        } else {
            "os"
        },
        key_generation_racers: crate::keygen::default_racers(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_aws_lc_seeded_from_the_os_and_the_racers() {
        let info = super::crypto_info();
        assert_eq!((info.library, info.rng_seed), ("aws-lc", "os"));
        assert!((1..=crate::keygen::MAX_RACERS).contains(&info.key_generation_racers));
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["key_generation_racers"], info.key_generation_racers);
    }
}
