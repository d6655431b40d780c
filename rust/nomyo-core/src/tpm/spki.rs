//! The AIK as a DER `SubjectPublicKeyInfo`, so that it can be pinned by the same kind of
//! fingerprint as the server key (`sha256:<hex>` over the SPKI DER): `tpm2_readpublic -f pem`
//! or `openssl pkey -pubin -outform DER | sha256sum` give the same value for a TPM's AK.

use super::crypto;
use super::parse::{PublicKey, ECC_NIST_P256};
use super::pcr;

/// `rsaEncryption` (1.2.840.113549.1.1.1).
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// `id-ecPublicKey` (1.2.840.10045.2.1).
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// `prime256v1` (1.2.840.10045.3.1.7).
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// One DER element: tag, definite length, content.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A non-negative INTEGER from big-endian bytes (minimal, sign byte where needed).
fn uint(bytes: &[u8]) -> Vec<u8> {
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    let digits = &bytes[skip.min(bytes.len().saturating_sub(1))..];
    let mut content = Vec::with_capacity(digits.len() + 1);
    if digits.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(digits);
    tlv(0x02, &content)
}

/// `SEQUENCE { algorithm, BIT STRING key }`.
fn spki(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bits = vec![0u8];
    bits.extend_from_slice(key);
    let mut content = tlv(0x30, algorithm);
    content.extend(tlv(0x03, &bits));
    tlv(0x30, &content)
}

/// `x` left-padded to `n` bytes (None when longer).
fn pad(x: &[u8], n: usize) -> Option<Vec<u8>> {
    let skip = x.iter().take_while(|&&b| b == 0).count();
    let x = &x[skip..];
    (x.len() <= n).then(|| {
        let mut out = vec![0u8; n - x.len()];
        out.extend_from_slice(x);
        out
    })
}

/// The DER `SubjectPublicKeyInfo` of an RSA or P-256 key (None for other curves).
pub fn der(key: &PublicKey) -> Option<Vec<u8>> {
    match key {
        PublicKey::Rsa { n, e } => {
            let mut algorithm = tlv(0x06, OID_RSA);
            algorithm.extend_from_slice(&[0x05, 0x00]);
            let mut numbers = uint(n);
            numbers.extend(uint(&e.to_be_bytes()));
            Some(spki(&algorithm, &tlv(0x30, &numbers)))
        }
        PublicKey::Ecc { curve, x, y } if *curve == ECC_NIST_P256 => {
            let mut algorithm = tlv(0x06, OID_EC);
            algorithm.extend(tlv(0x06, OID_P256));
            let mut point = vec![0x04];
            point.extend(pad(x, 32)?);
            point.extend(pad(y, 32)?);
            Some(spki(&algorithm, &point))
        }
        PublicKey::Ecc { .. } => None,
    }
}

/// `sha256:<hex>` of the key's SPKI DER.
pub fn fingerprint(key: &PublicKey) -> Option<String> {
    der(key).map(|d| format!("sha256:{}", pcr::hex_encode(&crypto::sha256(&d))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_and_integers() {
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(uint(&[0, 0, 0x01, 0x00, 0x01]), vec![0x02, 3, 1, 0, 1]);
        assert_eq!(uint(&[0x80]), vec![0x02, 2, 0, 0x80]);
        assert_eq!(uint(&[0, 0]), vec![0x02, 1, 0]);
        assert_eq!(pad(&[1], 3), Some(vec![0, 0, 1]));
        assert_eq!(pad(&[1, 2, 3, 4], 3), None);
    }
}
