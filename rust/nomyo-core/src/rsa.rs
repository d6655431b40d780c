//! RSA-OAEP with SHA-256 and MGF1-SHA-256 (the envelope's key wrap), via aws-lc-rs.

use aws_lc_rs::rsa::{
    OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey,
    OAEP_SHA256_MGF1SHA256,
};

use crate::error::{Error, Result};
use crate::secret::SecretBuf;

/// Wrap `plaintext` (an AES key) for `public`. The label is empty unless given.
pub fn oaep_encrypt(
    public: &PublicEncryptingKey,
    plaintext: &[u8],
    label: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let key = OaepPublicEncryptingKey::new(public.clone())
        .map_err(|_| Error::Internal("unusable RSA public key"))?;
    let mut out = vec![0u8; key.ciphertext_size()];
    let n = key
        .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, label)
        .map_err(|_| Error::Internal("RSA-OAEP encryption failed"))?
        .len();
    out.truncate(n);
    Ok(out)
}

/// Unwrap `ciphertext` with `private` into a secret buffer. Every failure is [`Error::Security`].
pub fn oaep_decrypt(
    private: &PrivateDecryptingKey,
    ciphertext: &[u8],
    label: Option<&[u8]>,
) -> Result<SecretBuf> {
    let key = OaepPrivateDecryptingKey::new(private.clone()).map_err(|_| Error::Security)?;
    let mut out = SecretBuf::zeroed(key.min_output_size())?;
    let n = key
        .decrypt(
            &OAEP_SHA256_MGF1SHA256,
            ciphertext,
            out.as_mut_slice(),
            label,
        )
        .map_err(|_| Error::Security)?
        .len();
    out.truncate(n);
    Ok(out)
}
