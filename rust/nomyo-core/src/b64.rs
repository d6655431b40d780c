//! Standard base64 with padding (RFC 4648 section 4), strict on input.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::error::{Error, Result};

/// Encode `data` as padded standard base64.
pub fn encode(data: &[u8]) -> String {
    STANDARD.encode(data)
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
    match STANDARD.decode_slice(encoded.as_bytes(), out) {
        Ok(n) if n == out.len() => Ok(()),
        _ => Err(Error::envelope(format!(
            "field '{field}' is not valid base64"
        ))),
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
