//! Known-answer tests from Project Wycheproof (vectors in tests/vectors/wycheproof, Apache-2.0).

use std::path::PathBuf;

use nomyo_core::keys::PrivateKey;
use nomyo_core::{aead, rsa, Error};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/vectors/wycheproof")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).expect("vector file")).expect("vector JSON")
}

fn hex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

#[test]
fn aes_gcm_every_12_byte_iv_vector() {
    let doc = load("aes_gcm_test.json");
    let mut checked = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        if group["ivSize"] != 96 || group["tagSize"] != 128 {
            continue;
        }
        for t in group["tests"].as_array().unwrap() {
            let (key, iv, aad, msg, ct, tag) = (
                hex(&t["key"]),
                hex(&t["iv"]),
                hex(&t["aad"]),
                hex(&t["msg"]),
                hex(&t["ct"]),
                hex(&t["tag"]),
            );
            let valid = t["result"] == "valid";
            let mut buf = ct.clone();
            let opened = aead::open_in_place(&key, &iv, &aad, &tag, &mut buf);
            let id = &t["tcId"];
            if valid {
                assert_eq!(opened, Ok(()), "tcId {id} should open");
                assert_eq!(buf, msg, "tcId {id} plaintext");
                let mut again = msg.clone();
                let iv12: [u8; 12] = iv.clone().try_into().unwrap();
                let sealed_tag = aead::seal_in_place(&key, &iv12, &aad, &mut again).unwrap();
                assert_eq!((again, sealed_tag.to_vec()), (ct, tag), "tcId {id} seal");
            } else {
                assert_eq!(
                    opened,
                    Err(Error::Security),
                    "tcId {id} must be rejected opaquely"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 197, "every 12-byte-IV vector");
}

fn oaep_file(name: &str) -> (usize, usize) {
    let doc = load(name);
    let (mut valid, mut invalid) = (0, 0);
    for group in doc["testGroups"].as_array().unwrap() {
        let key =
            PrivateKey::from_pkcs8_der(&hex(&group["privateKeyPkcs8"])).expect("vector key loads");
        for t in group["tests"].as_array().unwrap() {
            let label = hex(&t["label"]);
            let label = if label.is_empty() {
                None
            } else {
                Some(label.as_slice())
            };
            let out = rsa::oaep_decrypt(key.as_decrypting_key(), &hex(&t["ct"]), label);
            let id = &t["tcId"];
            match t["result"].as_str().unwrap() {
                "valid" => {
                    assert_eq!(
                        out.expect("valid vector decrypts").as_slice(),
                        hex(&t["msg"]).as_slice(),
                        "tcId {id}"
                    );
                    valid += 1;
                }
                _ => {
                    assert_eq!(
                        out.unwrap_err(),
                        Error::Security,
                        "tcId {id} must be rejected opaquely"
                    );
                    invalid += 1;
                }
            }
        }
    }
    (valid, invalid)
}

#[test]
fn rsa_oaep_sha256_mgf1_sha256_2048() {
    assert_eq!(
        oaep_file("rsa_oaep_2048_sha256_mgf1sha256_test.json"),
        (18, 19)
    );
}

#[test]
fn rsa_oaep_sha256_mgf1_sha256_3072() {
    assert_eq!(
        oaep_file("rsa_oaep_3072_sha256_mgf1sha256_test.json"),
        (18, 19)
    );
}

#[test]
fn rsa_oaep_sha256_mgf1_sha256_4096() {
    assert_eq!(
        oaep_file("rsa_oaep_4096_sha256_mgf1sha256_test.json"),
        (18, 19)
    );
}

#[test]
fn rsa_oaep_mgf1_sha1_never_decrypts() {
    let doc = load("rsa_oaep_4096_sha256_mgf1sha1_test.json");
    let mut n = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        let key = PrivateKey::from_pkcs8_der(&hex(&group["privateKeyPkcs8"])).unwrap();
        for t in group["tests"].as_array().unwrap() {
            let label = hex(&t["label"]);
            let label = if label.is_empty() {
                None
            } else {
                Some(label.as_slice())
            };
            let out = rsa::oaep_decrypt(key.as_decrypting_key(), &hex(&t["ct"]), label);
            assert_eq!(
                out.unwrap_err(),
                Error::Security,
                "tcId {} decrypted under MGF1-SHA256",
                t["tcId"]
            );
            n += 1;
        }
    }
    assert_eq!(n, 32);
}
