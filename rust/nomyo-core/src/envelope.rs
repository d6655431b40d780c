//! The hybrid envelope of the NOMYO protocol, version 1.0 (PROTOCOL.md section 3).
//!
//! Sealing: a fresh AES-256 key and 12-byte nonce from the OS CSPRNG, AES-256-GCM over the
//! plaintext without associated data, the AES key wrapped with RSA-OAEP-SHA256 (MGF1-SHA256,
//! empty label) for the recipient, every binary field standard base64, all in one JSON object.
//!
//! Opening checks the structure strictly and early (size limits before any decoding, version
//! and algorithm pinned, exact field lengths), then unwraps and authenticates. Every failure
//! after the structural checks is the single opaque [`Error::Security`].

use std::borrow::Cow;

use serde::Deserialize;

use crate::aead::{self, KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::b64;
use crate::error::{Error, Result};
use crate::keys::{PrivateKey, PublicKey};
use crate::rsa;
use crate::secret::SecretBuf;

/// The only envelope version spoken.
pub const VERSION: &str = "1.0";
/// The only envelope algorithm spoken.
pub const ALGORITHM: &str = "hybrid-aes256-rsa4096";
/// The key-wrap algorithm name.
pub const KEY_ALGORITHM: &str = "RSA-OAEP-SHA256";
/// The payload algorithm name.
pub const PAYLOAD_ALGORITHM: &str = "AES-256-GCM";
/// Default largest envelope accepted by [`open`], in bytes (64 MiB).
pub const DEFAULT_MAX_ENVELOPE: usize = 64 << 20;

#[derive(Deserialize)]
struct WirePayload<'a> {
    #[serde(borrow)]
    ciphertext: Cow<'a, str>,
    #[serde(borrow)]
    nonce: Cow<'a, str>,
    #[serde(borrow)]
    tag: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    version: Cow<'a, str>,
    #[serde(borrow)]
    algorithm: Cow<'a, str>,
    #[serde(borrow)]
    encrypted_payload: WirePayload<'a>,
    #[serde(borrow)]
    encrypted_aes_key: Cow<'a, str>,
    #[serde(borrow, default)]
    key_algorithm: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload_algorithm: Option<Cow<'a, str>>,
    #[serde(default)]
    processed_at: Option<serde_json::Number>,
}

/// An opened envelope.
#[derive(Debug)]
pub struct Opened {
    /// The decrypted plaintext.
    pub plaintext: SecretBuf,
    /// The envelope's `processed_at`, when the sender put one in.
    pub processed_at: Option<serde_json::Number>,
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if s.chars().count() > 40 {
        out.push('…');
    }
    out
}

fn pinned(field: &str, got: &str, want: &str) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::envelope(format!(
            "unsupported {field} '{}': expected '{want}'",
            short(got)
        )))
    }
}

fn fixed<const N: usize>(field: &str, encoded: &str) -> Result<[u8; N]> {
    match b64::decoded_len(encoded) {
        Some(n) if n == N => {
            let mut out = [0u8; N];
            b64::decode_into(field, encoded, &mut out)?;
            Ok(out)
        }
        Some(n) => Err(Error::envelope(format!(
            "field '{field}' must be {N} bytes, got {n}"
        ))),
        None => Err(Error::envelope(format!(
            "field '{field}' is not valid base64"
        ))),
    }
}

/// Open `envelope`, sealed to `key`. `max_size` bounds the envelope's length in bytes.
pub fn open(envelope: &[u8], key: &PrivateKey, max_size: usize) -> Result<Opened> {
    if envelope.is_empty() {
        return Err(Error::envelope("empty envelope"));
    }
    if envelope.len() > max_size {
        return Err(Error::envelope(format!(
            "envelope of {} bytes exceeds the limit of {max_size} bytes",
            envelope.len()
        )));
    }
    let text = std::str::from_utf8(envelope).map_err(|_| Error::envelope("not valid UTF-8"))?;
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        return Err(Error::envelope(
            if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                "not a JSON object"
            } else {
                "not valid JSON"
            },
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let wire: Wire<'_> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            Error::envelope(format!("malformed: {inner}"))
        } else {
            Error::envelope(format!("field '{path}': {inner}"))
        }
    })?;
    pinned("version", &wire.version, VERSION)?;
    pinned("algorithm", &wire.algorithm, ALGORITHM)?;
    if let Some(k) = &wire.key_algorithm {
        pinned("key_algorithm", k, KEY_ALGORITHM)?;
    }
    if let Some(p) = &wire.payload_algorithm {
        pinned("payload_algorithm", p, PAYLOAD_ALGORITHM)?;
    }
    let nonce: [u8; NONCE_LEN] = fixed("nonce", &wire.encrypted_payload.nonce)?;
    let tag: [u8; TAG_LEN] = fixed("tag", &wire.encrypted_payload.tag)?;
    let wrapped = b64::decode("encrypted_aes_key", &wire.encrypted_aes_key)?;
    let modulus = key.public_key().key_size_bytes();
    if wrapped.len() != modulus {
        return Err(Error::envelope(format!(
            "field 'encrypted_aes_key' must be {modulus} bytes for this key, got {}",
            wrapped.len()
        )));
    }
    let ct = &wire.encrypted_payload.ciphertext;
    let ct_len = b64::decoded_len(ct)
        .ok_or_else(|| Error::envelope("field 'ciphertext' is not valid base64"))?;
    let mut plaintext = SecretBuf::zeroed(ct_len)?;
    b64::decode_into("ciphertext", ct, plaintext.as_mut_slice())?;

    // Unwrap the AES key. If the unwrap fails (or yields a key that is not 32 bytes), do not
    // return early: carry on with a random key through AES-GCM over the ciphertext, which then
    // fails its tag check. An unwrap failure and a tag failure thus take the same path and end
    // in the same opaque error, so timing does not tell them apart (no padding oracle).
    let unwrapped = rsa::oaep_decrypt(key.as_decrypting_key(), &wrapped, None)
        .ok()
        .filter(|k| k.len() == KEY_LEN);
    let unwrap_ok = unwrapped.is_some();
    let aes_key = match unwrapped {
        Some(k) => k,
        None => {
            let mut k = SecretBuf::zeroed(KEY_LEN)?;
            crate::rand::fill(k.as_mut_slice())?;
            k
        }
    };
    let opened = aead::open_in_place(
        aes_key.as_slice(),
        &nonce,
        b"",
        &tag,
        plaintext.as_mut_slice(),
    );
    // `unwrap_ok` also covers the (2^-128) chance that the random key passes the tag check.
    if opened.is_err() || !unwrap_ok {
        plaintext.clear();
        return Err(Error::Security);
    }
    Ok(Opened {
        plaintext,
        processed_at: wire.processed_at,
    })
}

const HEAD: &str = "{\"version\": \"1.0\", \"algorithm\": \"hybrid-aes256-rsa4096\", \
                    \"encrypted_payload\": {\"ciphertext\": \"";
const AFTER_CT: &str = "\", \"nonce\": \"";
const AFTER_NONCE: &str = "\", \"tag\": \"";
const AFTER_TAG: &str = "\"}, \"encrypted_aes_key\": \"";
const TAIL: &str =
    "\", \"key_algorithm\": \"RSA-OAEP-SHA256\", \"payload_algorithm\": \"AES-256-GCM\"";
const TS_KEY: &str = ", \"processed_at\": ";

/// Exact length in bytes of the envelope that [`seal_in_place_into`] writes for a plaintext
/// of `plaintext_len` bytes.
pub fn sealed_len(
    plaintext_len: usize,
    recipient: &PublicKey,
    processed_at: Option<&serde_json::Number>,
) -> usize {
    HEAD.len()
        + b64::encoded_len(plaintext_len)
        + AFTER_CT.len()
        + b64::encoded_len(NONCE_LEN)
        + AFTER_NONCE.len()
        + b64::encoded_len(TAG_LEN)
        + AFTER_TAG.len()
        + b64::encoded_len(recipient.key_size_bytes())
        + TAIL.len()
        + processed_at.map_or(0, |ts| TS_KEY.len() + ts.to_string().len())
        + 1
}

/// Sequential writer over a byte slice of known, exact size.
struct Cursor<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn text(&mut self, s: &str) {
        self.out[self.pos..self.pos + s.len()].copy_from_slice(s.as_bytes());
        self.pos += s.len();
    }

    fn b64(&mut self, data: &[u8]) {
        let n = b64::encoded_len(data.len());
        b64::encode_into(data, &mut self.out[self.pos..self.pos + n]);
        self.pos += n;
    }
}

/// Seal the plaintext held in `buf` for `recipient`, writing the envelope into `out`, which
/// must be exactly [`sealed_len`] bytes. `buf` is encrypted in place (and so no longer holds
/// the plaintext afterwards). `processed_at` is written when given.
///
/// The base64 of the ciphertext is written straight into `out` (no intermediate string), so
/// a caller can hand in the final destination, such as a new Python `bytes` object.
pub fn seal_in_place_into(
    buf: &mut SecretBuf,
    recipient: &PublicKey,
    processed_at: Option<&serde_json::Number>,
    out: &mut [u8],
) -> Result<()> {
    if out.len() != sealed_len(buf.len(), recipient, processed_at) {
        return Err(Error::Internal("envelope output buffer has the wrong size"));
    }
    let mut aes_key = SecretBuf::zeroed(KEY_LEN)?;
    crate::rand::fill(aes_key.as_mut_slice())?;
    let mut nonce = [0u8; NONCE_LEN];
    crate::rand::fill(&mut nonce)?;
    let tag = aead::seal_in_place(aes_key.as_slice(), &nonce, b"", buf.as_mut_slice())?;
    let wrapped = rsa::oaep_encrypt(recipient.as_encrypting_key(), aes_key.as_slice(), None)?;
    drop(aes_key);
    if wrapped.len() != recipient.key_size_bytes() {
        return Err(Error::Internal("RSA-OAEP output has an unexpected size"));
    }

    let mut w = Cursor { out, pos: 0 };
    w.text(HEAD);
    w.b64(buf.as_slice());
    w.text(AFTER_CT);
    w.b64(&nonce);
    w.text(AFTER_NONCE);
    w.b64(&tag);
    w.text(AFTER_TAG);
    w.b64(&wrapped);
    w.text(TAIL);
    if let Some(ts) = processed_at {
        w.text(TS_KEY);
        w.text(&ts.to_string());
    }
    w.text("}");
    debug_assert_eq!(w.pos, w.out.len());
    Ok(())
}

/// Seal the plaintext held in `buf` for `recipient`; `buf` is encrypted in place (and so no
/// longer holds the plaintext afterwards). `processed_at` is written when given.
pub fn seal_in_place(
    buf: &mut SecretBuf,
    recipient: &PublicKey,
    processed_at: Option<&serde_json::Number>,
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; sealed_len(buf.len(), recipient, processed_at)];
    seal_in_place_into(buf, recipient, processed_at, &mut out)?;
    Ok(out)
}

/// Seal a copy of `plaintext` for `recipient`.
pub fn seal(
    plaintext: &[u8],
    recipient: &PublicKey,
    processed_at: Option<&serde_json::Number>,
) -> Result<Vec<u8>> {
    let mut buf = SecretBuf::from_slice(plaintext)?;
    seal_in_place(&mut buf, recipient, processed_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn key() -> &'static PrivateKey {
        static KEY: std::sync::OnceLock<PrivateKey> = std::sync::OnceLock::new();
        KEY.get_or_init(|| PrivateKey::generate(2048).unwrap())
    }

    /// The layout written field by field is exactly the one the protocol's reference writes
    /// (Python's `json.dumps` of the envelope dict, default separators).
    #[test]
    fn layout_is_exact_and_sized() {
        let ts = serde_json::Number::from(1_700_000_000u64);
        for (plain, ts) in [
            (&b""[..], None),
            (b"x", Some(&ts)),
            (&[7u8; 1000][..], None),
        ] {
            let env = seal(plain, key().public_key(), ts).unwrap();
            assert_eq!(env.len(), sealed_len(plain.len(), key().public_key(), ts));
            let v: serde_json::Value = serde_json::from_slice(&env).unwrap();
            let p = &v["encrypted_payload"];
            let s = |x: &serde_json::Value| x.as_str().unwrap().to_owned();
            let mut want = format!(
                "{{\"version\": \"{VERSION}\", \"algorithm\": \"{ALGORITHM}\", \
                 \"encrypted_payload\": {{\"ciphertext\": \"{}\", \"nonce\": \"{}\", \
                 \"tag\": \"{}\"}}, \"encrypted_aes_key\": \"{}\", \"key_algorithm\": \
                 \"{KEY_ALGORITHM}\", \"payload_algorithm\": \"{PAYLOAD_ALGORITHM}\"",
                s(&p["ciphertext"]),
                s(&p["nonce"]),
                s(&p["tag"]),
                s(&v["encrypted_aes_key"])
            );
            if let Some(ts) = ts {
                want.push_str(&format!(", \"processed_at\": {ts}"));
            }
            want.push('}');
            assert_eq!(String::from_utf8(env.clone()).unwrap(), want);
            let opened = open(&env, key(), DEFAULT_MAX_ENVELOPE).unwrap();
            assert_eq!(opened.plaintext.as_slice(), plain);
        }
    }

    #[test]
    fn wrong_output_size_is_refused() {
        let mut buf = SecretBuf::from_slice(b"abc").unwrap();
        let n = sealed_len(3, key().public_key(), None);
        let mut out = vec![0u8; n + 1];
        assert!(seal_in_place_into(&mut buf, key().public_key(), None, &mut out).is_err());
        assert_eq!(buf.as_slice(), b"abc");
    }
}
