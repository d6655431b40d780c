//! Signature primitives (aws-lc-rs) used for TPM quotes.
//!
//! All of them return `false` for any malformed input instead of failing loudly.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{
    RsaParameters, RsaPssSaltLength, RsaPublicKeyComponents, UnparsedPublicKey,
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
};

/// RSA-PSS/SHA-256 with the largest possible salt (`emLen - hLen - 2`).
///
/// `RSA_PSS_2048_8192_SHA256` itself expects a salt as long as the hash (32 bytes).
const RSA_PSS_SHA256_MAX_SALT: RsaParameters =
    RSA_PSS_2048_8192_SHA256.with_pss_salt_length(RsaPssSaltLength::Max);

/// Size of a P-256 field element / scalar.
const P256_BYTES: usize = 32;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// Verifies an RSASSA-PKCS1-v1_5 / SHA-256 signature (2048- to 8192-bit keys).
///
/// `n` and `e` are big-endian; leading zero bytes are allowed.
pub fn verify_rsassa_sha256(n: &[u8], e: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    rsa_key(n, e)
        .verify(&RSA_PKCS1_2048_8192_SHA256, msg, sig)
        .is_ok()
}

/// Salt length of an RSASSA-PSS / SHA-256 signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PssSalt {
    /// 32 bytes, the hash length (swtpm, most TPMs).
    HashLen,
    /// The maximum, `emLen - 34` bytes (222 for RSA-2048).
    Max,
}

/// Verifies an RSASSA-PSS / SHA-256 / MGF1-SHA-256 signature (2048- to 8192-bit keys).
///
/// TPMs differ in the salt length they use: accepted are a salt of 32 bytes (the hash
/// length, e.g. swtpm) and the maximum salt (`emLen - 34`), nothing in between.
pub fn verify_rsapss_sha256(n: &[u8], e: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    verify_rsapss_sha256_with_salt(n, e, msg, sig, PssSalt::HashLen)
        || verify_rsapss_sha256_with_salt(n, e, msg, sig, PssSalt::Max)
}

/// Verifies an RSASSA-PSS / SHA-256 / MGF1-SHA-256 signature with exactly the given salt length.
pub fn verify_rsapss_sha256_with_salt(
    n: &[u8],
    e: &[u8],
    msg: &[u8],
    sig: &[u8],
    salt: PssSalt,
) -> bool {
    let params = match salt {
        PssSalt::HashLen => &RSA_PSS_2048_8192_SHA256,
        PssSalt::Max => &RSA_PSS_SHA256_MAX_SALT,
    };
    rsa_key(n, e).verify(params, msg, sig).is_ok()
}

/// RSA public key components without leading zero bytes (aws-lc-rs refuses them).
fn rsa_key<'a>(n: &'a [u8], e: &'a [u8]) -> RsaPublicKeyComponents<&'a [u8]> {
    RsaPublicKeyComponents {
        n: strip_zeros(n),
        e: strip_zeros(e),
    }
}

/// `v` without its leading zero bytes.
fn strip_zeros(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    &v[start..]
}

/// Verifies an ECDSA P-256 / SHA-256 signature given as the integers `r` and `s`.
///
/// `x`, `y`, `r` and `s` are big-endian and at most 32 bytes each; shorter values are
/// left-padded with zeros.
pub fn verify_ecdsa_p256_sha256(x: &[u8], y: &[u8], msg: &[u8], r: &[u8], s: &[u8]) -> bool {
    let mut point = [0u8; 1 + 2 * P256_BYTES];
    let mut sig = [0u8; 2 * P256_BYTES];
    point[0] = 0x04;
    let (px, py) = point[1..].split_at_mut(P256_BYTES);
    let (sr, ss) = sig.split_at_mut(P256_BYTES);
    if !(left_pad(px, x) && left_pad(py, y) && left_pad(sr, r) && left_pad(ss, s)) {
        return false;
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point[..])
        .verify(msg, &sig)
        .is_ok()
}

/// Copies `src` right-aligned into `dst` (already zeroed); `false` if it does not fit.
fn left_pad(dst: &mut [u8], src: &[u8]) -> bool {
    let Some(start) = dst.len().checked_sub(src.len()) else {
        return false;
    };
    dst[start..].copy_from_slice(src);
    true
}
