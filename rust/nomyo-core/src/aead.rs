//! AES-GCM with a 12-byte nonce and a separate 16-byte tag (the envelope's payload layer).

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::error::{Error, Result};

/// Nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// Tag length in bytes.
pub const TAG_LEN: usize = 16;
/// Key length of the envelope's AES-256-GCM.
pub const KEY_LEN: usize = 32;

fn key(key_bytes: &[u8]) -> Result<LessSafeKey> {
    let alg = match key_bytes.len() {
        16 => &aead::AES_128_GCM,
        24 => &aead::AES_192_GCM,
        32 => &aead::AES_256_GCM,
        _ => return Err(Error::Security),
    };
    let unbound = UnboundKey::new(alg, key_bytes).map_err(|_| Error::Security)?;
    Ok(LessSafeKey::new(unbound))
}

/// Encrypt `in_out` in place under `key_bytes` and `nonce`, without associated data.
///
/// Returns the tag.
pub fn seal_in_place(
    key_bytes: &[u8],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut [u8],
) -> Result<[u8; TAG_LEN]> {
    let key = key(key_bytes)?;
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), in_out)
        .map_err(|_| Error::Internal("AES-GCM encryption failed"))?;
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(tag.as_ref());
    Ok(out)
}

/// Decrypt `in_out` in place and check `tag`. Every failure is [`Error::Security`].
///
/// On failure the contents of `in_out` are unspecified; the caller wipes them.
pub fn open_in_place(
    key_bytes: &[u8],
    nonce: &[u8],
    aad: &[u8],
    tag: &[u8],
    in_out: &mut [u8],
) -> Result<()> {
    if nonce.len() != NONCE_LEN || tag.len() != TAG_LEN {
        return Err(Error::Security);
    }
    let key = key(key_bytes)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Security)?;
    key.open_in_place_separate_tag(nonce, Aad::from(aad), tag, in_out)
        .map(|_| ())
        .map_err(|_| Error::Security)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = [7u8; 32];
        let n = [9u8; 12];
        let mut data = b"attack at dawn".to_vec();
        let tag = seal_in_place(&k, &n, b"", &mut data).unwrap();
        assert_ne!(&data, b"attack at dawn");
        let mut copy = data.clone();
        open_in_place(&k, &n, b"", &tag, &mut copy).unwrap();
        assert_eq!(&copy, b"attack at dawn");
        let mut bad = data.clone();
        bad[0] ^= 1;
        assert_eq!(
            open_in_place(&k, &n, b"", &tag, &mut bad),
            Err(Error::Security)
        );
        assert_eq!(
            open_in_place(&k, &n[..11], b"", &tag, &mut data.clone()),
            Err(Error::Security)
        );
        assert_eq!(
            open_in_place(&k[..31], &n, b"", &tag, &mut data),
            Err(Error::Security)
        );
    }
}
