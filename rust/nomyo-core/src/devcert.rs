//! Throwaway TLS certificates for the development router: a private CA and one server
//! certificate for `localhost`, `127.0.0.1` and `::1`.
//!
//! `nomyo serve-dev --tls` needs them at run time, where neither the `cryptography` package
//! nor an `openssl` binary can be assumed. aws-lc (already linked) generates the P-256 keys and
//! makes the ECDSA-SHA256 signatures; this module only writes the X.509 v3 DER around them
//! (RFC 5280), the same fields `nomyo.testing.make_test_certificates` writes with
//! `cryptography`. The CA's private key never leaves this function: it signs the server
//! certificate and is dropped, so the CA cannot issue anything else.

use std::net::IpAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use pkcs8::der::pem::{self, LineEnding};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keys::write_new_file;

/// The PEM text of a development CA, a server certificate it signed, and the server's key.
pub struct DevCertificates {
    /// The CA certificate (trust it in the client).
    pub ca_pem: String,
    /// The server certificate (for `localhost`, `127.0.0.1` and `::1`).
    pub cert_pem: String,
    /// The server's PKCS#8 private key (`PRIVATE KEY`), wiped on drop.
    pub key_pem: Zeroizing<String>,
}

// Object identifiers (DER content octets).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const OID_SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];
const OID_AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23];
const OID_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];

const CA_NAME: &str = "nomyo dev router CA";
const SERVER_NAME: &str = "localhost";

/// Make a CA and a server certificate valid from an hour ago for `days` days.
pub fn make_dev_certificates(days: u32) -> Result<DevCertificates> {
    if days == 0 || days > 3650 {
        return Err(Error::Value("days must be between 1 and 3650".into()));
    }
    let rng = SystemRandom::new();
    let (ca_key, _) = generate(&rng)?;
    let (server_key, server_pkcs8) = generate(&rng)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::Internal("the system clock is before 1970"))?
        .as_secs();
    let validity = seq(&[
        &time(now.saturating_sub(3600))?,
        &time(now + u64::from(days) * 86_400)?,
    ]);
    let ca_ski = key_id(&ca_key);
    let ca_name = name(CA_NAME);

    let ca_extensions = [
        // CA, and no CA below it.
        extension(
            OID_BASIC_CONSTRAINTS,
            true,
            &seq(&[&tlv(0x01, &[0xff]), &tlv(0x02, &[0])]),
        ),
        // keyCertSign (bit 5) and cRLSign (bit 6).
        extension(OID_KEY_USAGE, true, &tlv(0x03, &[0x01, 0x06])),
        extension(OID_SUBJECT_KEY_ID, false, &tlv(0x04, &ca_ski)),
    ];
    let ca_der = certificate(
        &rng,
        &ca_key,
        &ca_name,
        &validity,
        &ca_name,
        &ca_key,
        &ca_extensions,
    )?;

    let mut alt_names = tlv(0x82, SERVER_NAME.as_bytes());
    for ip in ["127.0.0.1".parse::<IpAddr>(), "::1".parse::<IpAddr>()] {
        let ip = ip.map_err(|_| Error::Internal("bad IP literal"))?;
        alt_names.extend(match ip {
            IpAddr::V4(v4) => tlv(0x87, &v4.octets()),
            IpAddr::V6(v6) => tlv(0x87, &v6.octets()),
        });
    }
    let server_extensions = [
        extension(OID_BASIC_CONSTRAINTS, true, &seq(&[])),
        // digitalSignature (bit 0).
        extension(OID_KEY_USAGE, true, &tlv(0x03, &[0x07, 0x80])),
        extension(
            OID_EXT_KEY_USAGE,
            false,
            &seq(&[&tlv(0x06, OID_SERVER_AUTH)]),
        ),
        extension(OID_SUBJECT_ALT_NAME, false, &tlv(0x30, &alt_names)),
        extension(OID_SUBJECT_KEY_ID, false, &tlv(0x04, &key_id(&server_key))),
        extension(OID_AUTHORITY_KEY_ID, false, &seq(&[&tlv(0x80, &ca_ski)])),
    ];
    let cert_der = certificate(
        &rng,
        &ca_key,
        &ca_name,
        &validity,
        &name(SERVER_NAME),
        &server_key,
        &server_extensions,
    )?;
    Ok(DevCertificates {
        ca_pem: to_pem("CERTIFICATE", &ca_der)?,
        cert_pem: to_pem("CERTIFICATE", &cert_der)?,
        key_pem: Zeroizing::new(to_pem("PRIVATE KEY", &server_pkcs8)?),
    })
}

/// Make the certificates ([`make_dev_certificates`]) and write them, each atomically and
/// replacing what is there: `ca_path` and `cert_path` 0644, the server's key `key_path` 0600.
pub fn write_dev_certificates(
    ca_path: &Path,
    cert_path: &Path,
    key_path: &Path,
    days: u32,
) -> Result<()> {
    let certs = make_dev_certificates(days)?;
    write_new_file(key_path, certs.key_pem.as_bytes(), true, 0o600)?;
    write_new_file(cert_path, certs.cert_pem.as_bytes(), true, 0o644)?;
    write_new_file(ca_path, certs.ca_pem.as_bytes(), true, 0o644)
}

fn generate(rng: &SystemRandom) -> Result<(EcdsaKeyPair, Zeroizing<Vec<u8>>)> {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, rng)
        .map_err(|_| Error::Internal("P-256 key generation failed"))?;
    let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8)
        .map_err(|_| Error::Internal("P-256 key import failed"))?;
    Ok((key, pkcs8))
}

fn to_pem(label: &'static str, der: &[u8]) -> Result<String> {
    pem::encode_string(label, LineEnding::LF, der)
        .map_err(|_| Error::Internal("PEM encoding failed"))
}

/// A key identifier: the first 20 bytes of SHA-256 over the public key (RFC 7093, method 1).
fn key_id(key: &EcdsaKeyPair) -> Vec<u8> {
    digest::digest(&digest::SHA256, key.public_key().as_ref()).as_ref()[..20].to_vec()
}

fn certificate(
    rng: &SystemRandom,
    issuer_key: &EcdsaKeyPair,
    issuer: &[u8],
    validity: &[u8],
    subject: &[u8],
    subject_key: &EcdsaKeyPair,
    extensions: &[Vec<u8>],
) -> Result<Vec<u8>> {
    let mut serial = [0u8; 16];
    crate::rand::fill(&mut serial)?;
    serial[0] = (serial[0] & 0x7f) | 0x40; // positive, 16 bytes, minimal encoding
    let algorithm = seq(&[&tlv(0x06, OID_ECDSA_SHA256)]);
    let spki = seq(&[
        &seq(&[&tlv(0x06, OID_EC_PUBLIC_KEY), &tlv(0x06, OID_P256)]),
        &bit_string(subject_key.public_key().as_ref()),
    ]);
    let extension_refs: Vec<&[u8]> = extensions.iter().map(Vec::as_slice).collect();
    let tbs = seq(&[
        &tlv(0xa0, &tlv(0x02, &[2])), // version v3
        &tlv(0x02, &serial),
        &algorithm,
        issuer,
        validity,
        subject,
        &spki,
        &tlv(0xa3, &seq(&extension_refs)),
    ]);
    let signature = issuer_key
        .sign(rng, &tbs)
        .map_err(|_| Error::Internal("ECDSA signing failed"))?;
    Ok(seq(&[&tbs, &algorithm, &bit_string(signature.as_ref())]))
}

fn name(common_name: &str) -> Vec<u8> {
    let attribute = seq(&[
        &tlv(0x06, OID_COMMON_NAME),
        &tlv(0x0c, common_name.as_bytes()),
    ]);
    seq(&[&tlv(0x31, &attribute)])
}

fn extension(oid: &[u8], critical: bool, value: &[u8]) -> Vec<u8> {
    let oid = tlv(0x06, oid);
    let value = tlv(0x04, value);
    if critical {
        seq(&[&oid, &tlv(0x01, &[0xff]), &value])
    } else {
        seq(&[&oid, &value])
    }
}

/// UTCTime (years 1950-2049) or GeneralizedTime (from 2050), as RFC 5280 4.1.2.5 requires.
fn time(unix: u64) -> Result<Vec<u8>> {
    let days = i64::try_from(unix / 86_400).map_err(|_| Error::Internal("time out of range"))?;
    let secs = unix % 86_400;
    let (year, month, day) = civil_from_days(days);
    let clock = format!(
        "{month:02}{day:02}{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if (1950..2050).contains(&year) {
        Ok(tlv(0x17, format!("{:02}{clock}", year % 100).as_bytes()))
    } else if (2050..10_000).contains(&year) {
        Ok(tlv(0x18, format!("{year:04}{clock}").as_bytes()))
    } else {
        Err(Error::Internal("time out of range"))
    }
}

/// Days since 1970-01-01 to a (year, month, day) of the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0); // no unused bits
    content.extend_from_slice(bytes);
    tlv(0x03, &content)
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// One DER tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_789), (2026, 12, 2));
        assert_eq!(civil_from_days(29_220), (2050, 1, 1));
    }

    #[test]
    fn times_switch_to_generalized_in_2050() {
        assert_eq!(time(0).unwrap(), tlv(0x17, b"700101000000Z"));
        assert_eq!(time(2_524_608_000).unwrap(), tlv(0x18, b"20500101000000Z"));
    }

    #[test]
    fn long_lengths() {
        assert_eq!(&tlv(0x04, &[0; 200])[..3], &[0x04, 0x81, 200]);
        assert_eq!(&tlv(0x04, &[0; 300])[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn writes_the_three_files() {
        let dir = std::env::temp_dir().join(format!("nomyo-devcert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, cert, key) = (dir.join("ca.pem"), dir.join("s.pem"), dir.join("k.pem"));
        write_dev_certificates(&ca, &cert, &key, 1).unwrap();
        write_dev_certificates(&ca, &cert, &key, 1).unwrap(); // replaces
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(std::fs::read_to_string(&cert)
            .unwrap()
            .contains("CERTIFICATE"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn makes_pem_certificates_and_a_key() {
        let certs = make_dev_certificates(7).unwrap();
        assert!(certs.ca_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(certs.cert_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(certs.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_ne!(certs.ca_pem, certs.cert_pem);
        assert!(make_dev_certificates(0).is_err());
    }
}
