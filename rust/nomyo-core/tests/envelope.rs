//! Envelope seal/open, keys and their failure modes.

use std::sync::OnceLock;

use nomyo_core::envelope::{self, DEFAULT_MAX_ENVELOPE};
use nomyo_core::keys::{PrivateKey, PublicKey};
use nomyo_core::Error;
use serde_json::{json, Value};

fn key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| PrivateKey::generate(2048).unwrap())
}

fn other_key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| PrivateKey::generate(2048).unwrap())
}

fn sealed(plain: &[u8]) -> Value {
    serde_json::from_slice(&envelope::seal(plain, key().public_key(), None).unwrap()).unwrap()
}

fn open_value(v: &Value) -> Result<Vec<u8>, Error> {
    envelope::open(v.to_string().as_bytes(), key(), DEFAULT_MAX_ENVELOPE)
        .map(|o| o.plaintext.as_slice().to_vec())
}

#[test]
fn round_trip_sizes() {
    for size in [0usize, 1, 15, 16, 17, 4096, 1 << 20] {
        let plain: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let env = envelope::seal(&plain, key().public_key(), None).unwrap();
        let opened = envelope::open(&env, key(), DEFAULT_MAX_ENVELOPE).unwrap();
        assert_eq!(opened.plaintext.as_slice(), plain.as_slice());
        assert!(opened.processed_at.is_none());
    }
}

#[test]
fn fields_and_processed_at() {
    let ts = serde_json::Number::from(1_700_000_000u64);
    let env: Value =
        serde_json::from_slice(&envelope::seal(b"{}", key().public_key(), Some(&ts)).unwrap())
            .unwrap();
    assert_eq!(env["version"], "1.0");
    assert_eq!(env["algorithm"], "hybrid-aes256-rsa4096");
    assert_eq!(env["key_algorithm"], "RSA-OAEP-SHA256");
    assert_eq!(env["payload_algorithm"], "AES-256-GCM");
    assert_eq!(env["processed_at"], 1_700_000_000u64);
    let opened = envelope::open(env.to_string().as_bytes(), key(), DEFAULT_MAX_ENVELOPE).unwrap();
    assert_eq!(opened.processed_at, Some(ts));
}

#[test]
fn fresh_key_and_nonce_each_time() {
    let a = sealed(b"same");
    let b = sealed(b"same");
    assert_ne!(a["encrypted_aes_key"], b["encrypted_aes_key"]);
    assert_ne!(
        a["encrypted_payload"]["nonce"],
        b["encrypted_payload"]["nonce"]
    );
    assert_ne!(
        a["encrypted_payload"]["ciphertext"],
        b["encrypted_payload"]["ciphertext"]
    );
}

fn flip(v: &mut Value, path: &[&str]) {
    let mut cur = &mut *v;
    for p in path {
        cur = &mut cur[*p];
    }
    let s = cur.as_str().unwrap();
    let mut bytes = base64_decode(s);
    bytes[0] ^= 0x01;
    *cur = Value::String(base64_encode(&bytes));
}

fn base64_decode(s: &str) -> Vec<u8> {
    nomyo_core::b64::decode("x", s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    nomyo_core::b64::encode(b)
}

#[test]
fn tampering_is_one_opaque_error() {
    let base = sealed(b"{\"secret\": 1}");
    for path in [
        &["encrypted_payload", "ciphertext"][..],
        &["encrypted_payload", "nonce"],
        &["encrypted_payload", "tag"],
        &["encrypted_aes_key"],
    ] {
        let mut v = base.clone();
        flip(&mut v, path);
        assert_eq!(open_value(&v), Err(Error::Security), "{path:?}");
    }
    let to_other = envelope::seal(b"x", other_key().public_key(), None).unwrap();
    assert_eq!(
        envelope::open(&to_other, key(), DEFAULT_MAX_ENVELOPE).unwrap_err(),
        Error::Security
    );
}

fn envelope_error(v: &Value) -> String {
    match open_value(v) {
        Err(Error::Envelope(m)) => m,
        other => panic!("expected an envelope error, got {other:?}"),
    }
}

#[test]
fn structural_errors_name_the_problem() {
    let base = sealed(b"{}");
    let mut v = base.clone();
    v.as_object_mut().unwrap().remove("encrypted_aes_key");
    assert!(envelope_error(&v).contains("encrypted_aes_key"));
    let mut v = base.clone();
    v["encrypted_payload"]
        .as_object_mut()
        .unwrap()
        .remove("tag");
    assert!(envelope_error(&v).contains("tag"));
    let mut v = base.clone();
    v["version"] = json!("2.0");
    assert!(envelope_error(&v).contains("version"));
    let mut v = base.clone();
    v["algorithm"] = json!("hybrid-aes128-rsa2048");
    assert!(envelope_error(&v).contains("algorithm"));
    let mut v = base.clone();
    v["encrypted_payload"]["nonce"] = json!(base64_encode(&[0u8; 11]));
    assert!(envelope_error(&v).contains("nonce"));
    let mut v = base.clone();
    v["encrypted_payload"]["tag"] = json!(base64_encode(&[0u8; 17]));
    assert!(envelope_error(&v).contains("tag"));
    let mut v = base.clone();
    v["encrypted_aes_key"] = json!(base64_encode(&[0u8; 255]));
    assert!(envelope_error(&v).contains("encrypted_aes_key"));
    let mut v = base.clone();
    v["encrypted_payload"]["ciphertext"] = json!("not*base64!");
    assert!(envelope_error(&v).contains("ciphertext"));
    let mut v = base.clone();
    v["encrypted_aes_key"] = json!(12);
    assert!(envelope_error(&v).contains("invalid type"));
    let mut v = base;
    v["processed_at"] = json!("yesterday");
    assert!(matches!(open_value(&v), Err(Error::Envelope(_))));
}

#[test]
fn non_json_inputs() {
    for bad in [
        &b"not json"[..],
        b"[1,2]",
        b"\"str\"",
        b"\xff\xfe",
        b"{",
        b"",
    ] {
        assert!(
            matches!(
                envelope::open(bad, key(), DEFAULT_MAX_ENVELOPE),
                Err(Error::Envelope(_))
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn oversized_envelope_refused_before_parsing() {
    let big = vec![b' '; 1025];
    match envelope::open(&big, key(), 1024) {
        Err(Error::Envelope(m)) => assert!(m.contains("exceeds")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn keys_round_trip_through_pem() {
    let pem = key().to_pem(None).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let again = PrivateKey::from_pem(pem.as_bytes(), None).unwrap();
    assert_eq!(again.public_key(), key().public_key());
    let pub_pem = key().public_key().to_pem();
    assert_eq!(
        &PublicKey::from_pem(pub_pem.as_bytes()).unwrap(),
        key().public_key()
    );
    assert!(key().public_key().fingerprint().starts_with("sha256:"));
    assert_eq!(key().public_key().fingerprint().len(), 71);
}

#[test]
fn encrypted_pem_needs_the_right_password() {
    let pem = key().to_pem(Some(b"correct horse")).unwrap();
    assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"));
    let again = PrivateKey::from_pem(pem.as_bytes(), Some(b"correct horse")).unwrap();
    assert_eq!(again.public_key(), key().public_key());
    for (pw, needle) in [
        (Some(&b"wrong"[..]), "wrong password"),
        (None, "password is required"),
    ] {
        match PrivateKey::from_pem(pem.as_bytes(), pw) {
            Err(Error::Key(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    let plain = key().to_pem(None).unwrap();
    assert!(matches!(
        PrivateKey::from_pem(plain.as_bytes(), Some(b"pw")),
        Err(Error::Key(_))
    ));
}

#[test]
fn garbage_keys_are_key_errors() {
    for bad in [
        &b""[..],
        b"hello",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ] {
        assert!(matches!(
            PrivateKey::from_pem(bad, None),
            Err(Error::Key(_))
        ));
        assert!(matches!(PublicKey::from_pem(bad), Err(Error::Key(_))));
    }
}

#[test]
fn save_is_exclusive_and_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("nomyo-core-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("private_key.pem");
    let _ = std::fs::remove_file(&path);
    key().save(&path, None, false).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = std::fs::read(&path).unwrap();
    match other_key().save(&path, None, false) {
        Err(Error::Io(kind, _)) => assert_eq!(kind, std::io::ErrorKind::AlreadyExists),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "existing key untouched"
    );
    other_key().save(&path, None, true).unwrap();
    assert_ne!(std::fs::read(&path).unwrap(), before);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temporary files left"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unwrapped_key_of_wrong_length_is_the_same_opaque_error() {
    // A validly wrapped 16-byte key: the unwrap succeeds but the key is refused, through the
    // same AES-GCM path as a bad tag.
    let mut v = sealed(b"{\"secret\": 1}");
    let wrapped =
        nomyo_core::rsa::oaep_encrypt(key().public_key().as_encrypting_key(), &[7u8; 16], None)
            .unwrap();
    v["encrypted_aes_key"] = json!(base64_encode(&wrapped));
    assert_eq!(open_value(&v), Err(Error::Security));
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let mut r = [0u8; 8];
    nomyo_core::rand::fill(&mut r).unwrap();
    let d = std::env::temp_dir().join(format!("nomyo-{name}-{:016x}", u64::from_le_bytes(r)));
    std::fs::create_dir(&d).unwrap();
    d
}

#[test]
fn key_files_load_natively_with_checks() {
    let dir = temp_dir("load");
    let path = dir.join("k.pem");
    key().save(&path, Some(b"pw"), false).unwrap();
    let loaded = PrivateKey::load(&path, Some(b"pw"), false).unwrap();
    assert_eq!(loaded.public_key(), key().public_key());
    match PrivateKey::load(&dir.join("missing"), None, false) {
        Err(Error::Io(std::io::ErrorKind::NotFound, _)) => {}
        other => panic!("{other:?}"),
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        match PrivateKey::load(&path, Some(b"pw"), false) {
            Err(Error::Key(m)) => assert!(m.contains("mode 0644") && m.contains("chmod 600")),
            other => panic!("{other:?}"),
        }
        assert!(PrivateKey::load(&path, Some(b"pw"), true).is_ok());
        let link = dir.join("link.pem");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(
            PrivateKey::load(&link, Some(b"pw"), true),
            Err(Error::Io(..))
        ));
        assert!(matches!(
            PrivateKey::load(&dir, None, true),
            Err(Error::Key(m)) if m.contains("not a regular file")
        ));
    }
    let big = dir.join("big.pem");
    nomyo_core::keys::write_new_file(&big, &vec![b'A'; (1 << 20) + 1], false, 0o600).unwrap();
    assert!(matches!(
        PrivateKey::load(&big, None, false),
        Err(Error::Key(m)) if m.contains("too large")
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn write_new_file_is_exclusive_unless_overwriting() {
    let dir = temp_dir("write");
    let path = dir.join("public_key.pem");
    nomyo_core::keys::write_new_file(&path, b"one", false, 0o644).unwrap();
    assert!(matches!(
        nomyo_core::keys::write_new_file(&path, b"two", false, 0o644),
        Err(Error::Io(std::io::ErrorKind::AlreadyExists, _))
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"one");
    nomyo_core::keys::write_new_file(&path, b"two", true, 0o600).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"two");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temp file left"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
