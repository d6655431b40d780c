//! `tpm::verify_json`: verification of an attestation block given as JSON text (as the Python
//! binding passes it), on the committed swtpm fixtures (tests/fixtures/tpm).

use std::path::PathBuf;

use nomyo_core::tpm::{self, Verification};
use nomyo_core::Error;
use serde_json::{json, Value};

/// One committed fixture (`valid/q1_rsa_rsassa`), parsed.
fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tpm")
        .join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("fixture JSON")
}

/// The fixture's attestation block as JSON text, and its payload id.
fn block(doc: &Value) -> (Vec<u8>, String) {
    let text = serde_json::to_vec(&doc["tpm_attestation"]).unwrap();
    (text, doc["payload_id"].as_str().unwrap().to_owned())
}

fn verify(doc: &Value, pcrs: Option<&Value>, trusted: Option<&[String]>) -> Verification {
    let (text, pid) = block(doc);
    let pcrs = pcrs.map(|p| serde_json::to_vec(p).unwrap());
    tpm::verify_json(Some(&text), &pid, pcrs.as_deref(), trusted).unwrap()
}

#[test]
fn gives_what_verify_gives_on_every_kind_of_fixture() {
    for name in [
        "valid/q1_rsa_rsassa",
        "valid/q3_ecc_ecdsa",
        "invalid/rsa_wrong_magic",
        "invalid/ecc_wrong_payload_id",
        "forged/software_key_consistent",
        "misc/unavailable",
    ] {
        let doc = fixture(name);
        let direct = tpm::verify(
            &doc["tpm_attestation"],
            doc["payload_id"].as_str().unwrap(),
            None,
        );
        assert_eq!(verify(&doc, None, None), direct, "{name}");
        assert_eq!(
            Value::Bool(direct.valid),
            doc["expected"]["valid"],
            "{name}"
        );
    }
}

#[test]
fn pins_are_matched_in_any_case_and_with_blanks_around() {
    let doc = fixture("valid/q1_rsa_rsassa");
    let fingerprint = verify(&doc, None, None)
        .aik_fingerprint
        .expect("fingerprint");
    let pinned = [format!("  {}\n", fingerprint.to_ascii_uppercase())];
    let v = verify(&doc, None, Some(&pinned));
    assert!(v.valid && v.aik_trusted && v.genuine_tpm_proven, "{v:?}");
    assert_eq!(v.caveat, tpm::CAVEAT_PINNED);
    let other = verify(&fixture("valid/q3_ecc_ecdsa"), None, Some(&pinned));
    assert_eq!(other.reason, tpm::reason::AIK_UNTRUSTED);
    assert!(!other.genuine_tpm_proven);
}

#[test]
fn a_pcr_policy_in_json_is_applied() {
    let doc = fixture("valid/q1_rsa_rsassa");
    let reported = doc["tpm_attestation"]["pcr_values"].clone();
    let v = verify(&doc, Some(&reported), None);
    assert_eq!((v.valid, v.pcr_policy_matched), (true, Some(true)));
    let (bank, pcrs) = reported.as_object().unwrap().iter().next().unwrap();
    let index = pcrs.as_object().unwrap().keys().next().unwrap().clone();
    let wrong = json!({ bank.as_str(): { index: "00".repeat(32) } });
    let v = verify(&doc, Some(&wrong), None);
    assert_eq!(v.reason, tpm::reason::PCR_POLICY_MISMATCH);
    assert_eq!(v.pcr_policy_matched, Some(false));
}

#[test]
fn a_policy_of_another_shape_is_a_value_error() {
    let (text, pid) = block(&fixture("valid/q1_rsa_rsassa"));
    for bad in [
        &b"[1, 2]"[..],
        br#"{"sha256": {"x": "00"}}"#,
        br#"{"sha256": 5}"#,
    ] {
        let err = tpm::verify_json(Some(&text), &pid, Some(bad), None).unwrap_err();
        assert!(matches!(err, Error::Value(_)), "{err:?}");
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let err = tpm::verify_json(Some(&text), &pid, Some(deep.as_bytes()), None).unwrap_err();
    assert!(matches!(err, Error::Value(_)), "{err:?}");
}

#[test]
fn a_block_that_is_not_json_of_bounded_depth_is_a_parse_error() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for block in [None, Some(deep.as_bytes()), Some(&b"{"[..])] {
        // The policy is not looked at (not even this one, which is not a policy at all).
        let v = tpm::verify_json(block, "pid", Some(b"[]"), None).unwrap();
        assert_eq!(
            (v.valid, v.reason.as_str()),
            (false, tpm::reason::PARSE_ERROR)
        );
        assert_eq!(
            v.detail,
            "the attestation block is not a JSON object of bounded depth"
        );
        assert_eq!(v.pcr_policy_matched, None);
    }
}

#[test]
fn a_null_block_is_not_available() {
    let v = tpm::verify_json(Some(b"null"), "pid", None, None).unwrap();
    assert_eq!(
        (v.available, v.reason.as_str()),
        (false, tpm::reason::NOT_AVAILABLE)
    );
}
