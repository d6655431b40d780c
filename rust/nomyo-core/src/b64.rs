//! Standard base64 with padding (RFC 4648 section 4), strict on input.
//!
//! SIMD-accelerated (`base64-simd`, AVX2/SSE4.1/NEON chosen at run time, scalar otherwise).
//! Decoding is strict: padding required, no whitespace, no URL-safe alphabet, and
//! non-canonical trailing bits are refused.

use base64_simd::{Out, STANDARD};

use crate::error::{Error, Result};

/// Encode `data` as padded standard base64.
pub fn encode(data: &[u8]) -> String {
    STANDARD.encode_to_string(data)
}

/// Length of the padded standard base64 of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Encode `data` into `out`, which must be exactly [`encoded_len`]`(data.len())` long.
///
/// # Panics
/// If `out` has the wrong length (a bug in the caller).
pub fn encode_into(data: &[u8], out: &mut [u8]) {
    assert_eq!(out.len(), encoded_len(data.len()), "base64 output size");
    let written = STANDARD.encode(data, Out::from_slice(out)).len();
    debug_assert_eq!(written, out.len());
}

/// Number of bytes `encoded` decodes to, if it is well-formed in length.
pub fn decoded_len(encoded: &str) -> Option<usize> {
    if !encoded.len().is_multiple_of(4) {
        return None;
    }
    let pad = encoded.bytes().rev().take(2).filter(|&b| b == b'=').count();
    Some(encoded.len() / 4 * 3 - pad)
}

/// Decode padded standard base64 into `out` (which must be exactly [`decoded_len`] long).
pub fn decode_into(field: &str, encoded: &str, out: &mut [u8]) -> Result<()> {
    let src = encoded.as_bytes();
    let want = out.len();
    let ok = matches!(STANDARD.decoded_length(src), Ok(n) if n == want)
        && matches!(STANDARD.decode(src, Out::from_slice(out)), Ok(d) if d.len() == want);
    if ok {
        Ok(())
    } else {
        Err(Error::envelope(format!(
            "field '{field}' is not valid base64"
        )))
    }
}

/// Decode padded standard base64 into a new vector (for non-secret fields).
pub fn decode(field: &str, encoded: &str) -> Result<Vec<u8>> {
    let len = decoded_len(encoded)
        .ok_or_else(|| Error::envelope(format!("field '{field}' is not valid base64")))?;
    let mut out = vec![0u8; len];
    decode_into(field, encoded, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD as REFERENCE;
    use base64::Engine as _;

    #[test]
    fn matches_the_reference_codec_on_every_length() {
        let data: Vec<u8> = (0..3000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for n in 0..data.len() {
            let src = &data[..n];
            let want = REFERENCE.encode(src);
            assert_eq!(encode(src), want);
            let mut out = vec![0u8; encoded_len(n)];
            encode_into(src, &mut out);
            assert_eq!(out, want.as_bytes());
            assert_eq!(decode("f", &want).unwrap(), src);
        }
    }

    #[test]
    fn strict_decoding() {
        for bad in [
            "QR==",
            "QUJ=",
            "QQ=",
            "QQ",
            "QUJ",
            "Q===",
            "====",
            "QQ==QQ==",
            "QUJD\n",
            " QUJD",
            "QU-D",
            "QU_D",
            "QQ=Q",
            "=QQQ",
            "QUJD QUJD",
            "QUJDQUJ\0",
        ] {
            assert!(decode("f", bad).is_err(), "{bad:?} accepted");
            assert!(
                REFERENCE.decode(bad).is_err(),
                "{bad:?} accepted by reference"
            );
        }
        assert_eq!(decode("f", "QQ==").unwrap(), b"A");
        assert_eq!(decode("f", "QUI=").unwrap(), b"AB");
        assert_eq!(decode("f", "").unwrap(), b"");
        // Long inputs (SIMD path) with one bad byte anywhere are refused.
        let good = encode(&[0x42u8; 4096]);
        for pos in [0usize, 1, 31, 32, 33, 1000, good.len() - 5] {
            for c in [b'*', b'-', b'_', b'\n', b'=', 0x80] {
                let mut s = good.clone().into_bytes();
                s[pos] = c;
                if let Ok(s) = String::from_utf8(s) {
                    assert!(decode("f", &s).is_err(), "byte {c} at {pos} accepted");
                }
            }
        }
        // Wrong output size is an error, not a panic.
        let mut small = [0u8; 1];
        assert!(decode_into("f", "QUI=", &mut small).is_err());
        let mut big = [0u8; 3];
        assert!(decode_into("f", "QUI=", &mut big).is_err());
    }
}
