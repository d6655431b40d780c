//! Strict parsers for the three marshalled TPM 2.0 structures of a quote.
//!
//! Everything is big-endian. Every length prefix is checked against a small bound before any
//! slice is taken, reads never go past the end, and each structure must consume its input
//! exactly (no trailing bytes). Unknown structure tags and algorithm ids are refused.

use super::pcr;
pub use super::pcr::PcrBank;

/// `TPM_GENERATED_VALUE`: the first four bytes of every structure a TPM makes.
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;

/// `TPM_ALG_RSA`.
const ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_ECC`.
const ALG_ECC: u16 = 0x0023;
/// `TPM_ALG_NULL`.
pub const ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_RSASSA` (PKCS#1 v1.5).
pub const ALG_RSASSA: u16 = 0x0014;
/// `TPM_ALG_RSAPSS`.
pub const ALG_RSAPSS: u16 = 0x0016;
/// `TPM_ALG_ECDSA`.
pub const ALG_ECDSA: u16 = 0x0018;
/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000b;
/// `TPM_ECC_NIST_P256`.
pub const ECC_NIST_P256: u16 = 0x0003;

/// Symmetric algorithms a `TPMT_SYM_DEF_OBJECT` may name (AES, SM4, CAMELLIA).
const SYM_ALGS: [u16; 3] = [0x0006, 0x0013, 0x0026];
/// Key derivation schemes a `TPMT_KDF_SCHEME` may name (MGF1, KDF1 56A, KDF2, KDF1 108).
const KDF_ALGS: [u16; 4] = [0x0007, 0x0020, 0x0021, 0x0022];

/// Largest `TPM2B_NAME` (2-byte algorithm + 64-byte digest).
const MAX_NAME: usize = 66;
/// Largest digest / `TPM2B_DATA` / `TPM2B_DIGEST` (SHA-512).
const MAX_DIGEST: usize = 64;
/// Largest RSA modulus or signature (4096 bits).
const MAX_RSA_BYTES: usize = 512;
/// Largest ECC coordinate or signature integer (P-521).
const MAX_ECC_BYTES: usize = 66;
/// Most PCR banks in one selection (one per hash algorithm).
const MAX_BANKS: u32 = 16;
/// Largest `sizeofSelect` (64 PCRs).
const MAX_SELECT: u8 = 8;
/// Smallest RSA key accepted by the parser, in bits.
const MIN_RSA_BITS: u16 = 1024;

/// Why a structure was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// `TPMS_ATTEST.magic` is not `TPM_GENERATED_VALUE`.
    BadMagic,
    /// `TPMS_ATTEST.type` is not `TPM_ST_ATTEST_QUOTE`.
    BadAttestType,
    /// Any other structural defect, with a short description.
    Malformed(&'static str),
}

/// Shorthand for parser results.
pub type Parsed<T> = Result<T, ParseError>;

/// A bounds-checked big-endian cursor over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `buf` from its first byte.
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Takes the next `n` bytes, or fails with `what` on a short read.
    fn take(&mut self, n: usize, what: &'static str) -> Parsed<&'a [u8]> {
        if n > self.buf.len() {
            return Err(ParseError::Malformed(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Takes exactly `N` bytes as an array.
    fn array<const N: usize>(&mut self, what: &'static str) -> Parsed<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// Reads a `u8`.
    fn u8(&mut self, what: &'static str) -> Parsed<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Reads a big-endian `u16`.
    fn u16(&mut self, what: &'static str) -> Parsed<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian `u32`.
    fn u32(&mut self, what: &'static str) -> Parsed<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian `u64`.
    fn u64(&mut self, what: &'static str) -> Parsed<u64> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// Reads a `TPM2B` (u16 size + bytes) whose size must not exceed `max`.
    fn tpm2b(&mut self, max: usize, what: &'static str) -> Parsed<&'a [u8]> {
        let len = usize::from(self.u16(what)?);
        if len > max {
            return Err(ParseError::Malformed(what));
        }
        self.take(len, what)
    }

    /// Fails unless every byte has been consumed.
    fn finish(&self, what: &'static str) -> Parsed<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ParseError::Malformed(what))
        }
    }
}

/// A parsed `TPMS_ATTEST` of type quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// `qualifiedSigner` (`TPM2B_NAME`).
    pub qualified_signer: Vec<u8>,
    /// `extraData` (qualifying data supplied by the caller of `TPM2_Quote`).
    pub extra_data: Vec<u8>,
    /// `clockInfo.clock` (milliseconds).
    pub clock: u64,
    /// `clockInfo.resetCount`.
    pub reset_count: u32,
    /// `clockInfo.restartCount`.
    pub restart_count: u32,
    /// `clockInfo.safe`.
    pub safe: bool,
    /// `firmwareVersion`.
    pub firmware_version: u64,
    /// `TPML_PCR_SELECTION`, in the quote's order.
    pub selection: Vec<PcrBank>,
    /// `pcrDigest`.
    pub pcr_digest: Vec<u8>,
}

/// Parses a marshalled `TPMS_ATTEST` that must be a quote.
///
/// The magic is checked first, then the type, then the rest of the structure.
pub fn attest(buf: &[u8]) -> Parsed<Attest> {
    let mut r = Reader::new(buf);
    if r.u32("TPMS_ATTEST too short for magic")? != TPM_GENERATED {
        return Err(ParseError::BadMagic);
    }
    if r.u16("TPMS_ATTEST too short for type")? != ST_ATTEST_QUOTE {
        return Err(ParseError::BadAttestType);
    }
    let qualified_signer = r.tpm2b(MAX_NAME, "bad qualifiedSigner")?.to_vec();
    let extra_data = r.tpm2b(MAX_DIGEST, "bad extraData")?.to_vec();
    let clock = r.u64("short clockInfo")?;
    let reset_count = r.u32("short clockInfo")?;
    let restart_count = r.u32("short clockInfo")?;
    let safe = yes_no(r.u8("short clockInfo")?)?;
    let firmware_version = r.u64("short firmwareVersion")?;
    let selection = pcr_selection(&mut r)?;
    let pcr_digest = r.tpm2b(MAX_DIGEST, "bad pcrDigest")?.to_vec();
    r.finish("trailing bytes after TPMS_ATTEST")?;
    Ok(Attest {
        qualified_signer,
        extra_data,
        clock,
        reset_count,
        restart_count,
        safe,
        firmware_version,
        selection,
        pcr_digest,
    })
}

/// Decodes a `TPMI_YES_NO`.
fn yes_no(b: u8) -> Parsed<bool> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(ParseError::Malformed("clockInfo.safe is not 0 or 1")),
    }
}

/// Parses a `TPML_PCR_SELECTION`; a bank may appear only once.
fn pcr_selection(r: &mut Reader<'_>) -> Parsed<Vec<PcrBank>> {
    let count = r.u32("short PCR selection")?;
    if count > MAX_BANKS {
        return Err(ParseError::Malformed("too many PCR banks"));
    }
    let mut banks: Vec<PcrBank> = Vec::new();
    for _ in 0..count {
        let bank = pcr_bank(r)?;
        if banks.iter().any(|b| b.alg == bank.alg) {
            return Err(ParseError::Malformed("PCR bank selected twice"));
        }
        banks.push(bank);
    }
    Ok(banks)
}

/// Parses one `TPMS_PCR_SELECTION` (hash, sizeofSelect, LSB-first bitmap).
fn pcr_bank(r: &mut Reader<'_>) -> Parsed<PcrBank> {
    let alg = r.u16("short PCR selection")?;
    if pcr::bank_by_alg(alg).is_none() {
        return Err(ParseError::Malformed("unknown PCR bank algorithm"));
    }
    let size = r.u8("short PCR selection")?;
    if size > MAX_SELECT {
        return Err(ParseError::Malformed("PCR bitmap too large"));
    }
    let bitmap = r.take(usize::from(size), "short PCR bitmap")?;
    let mut indices = Vec::new();
    for (byte_idx, byte) in (0u32..).zip(bitmap) {
        for bit in 0..8u32 {
            if byte & (1 << bit) != 0 {
                indices.push(byte_idx * 8 + bit);
            }
        }
    }
    Ok(PcrBank { alg, indices })
}

/// The signing scheme of a `TPMT_SIGNATURE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigScheme {
    /// RSASSA-PKCS1-v1_5.
    RsaSsa,
    /// RSASSA-PSS.
    RsaPss,
    /// ECDSA.
    Ecdsa,
}

impl SigScheme {
    /// The TPM algorithm id.
    pub fn alg(self) -> u16 {
        match self {
            Self::RsaSsa => ALG_RSASSA,
            Self::RsaPss => ALG_RSAPSS,
            Self::Ecdsa => ALG_ECDSA,
        }
    }

    /// Short name used in reports: `rsassa`, `rsapss` or `ecdsa`.
    pub fn name(self) -> &'static str {
        match self {
            Self::RsaSsa => "rsassa",
            Self::RsaPss => "rsapss",
            Self::Ecdsa => "ecdsa",
        }
    }
}

/// The signature value of a `TPMT_SIGNATURE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigValue {
    /// An RSA signature (big-endian, modulus-sized).
    Rsa(Vec<u8>),
    /// An ECDSA signature as two big-endian integers.
    Ecc {
        /// `signatureR`.
        r: Vec<u8>,
        /// `signatureS`.
        s: Vec<u8>,
    },
}

/// A parsed `TPMT_SIGNATURE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Signing scheme.
    pub scheme: SigScheme,
    /// Hash algorithm id (known, not necessarily supported).
    pub hash: u16,
    /// Signature value.
    pub value: SigValue,
}

/// Parses a marshalled `TPMT_SIGNATURE` (RSASSA, RSAPSS or ECDSA only).
pub fn signature(buf: &[u8]) -> Parsed<Signature> {
    let mut r = Reader::new(buf);
    let scheme = match r.u16("short TPMT_SIGNATURE")? {
        ALG_RSASSA => SigScheme::RsaSsa,
        ALG_RSAPSS => SigScheme::RsaPss,
        ALG_ECDSA => SigScheme::Ecdsa,
        _ => return Err(ParseError::Malformed("unknown signature algorithm")),
    };
    let hash = known_hash(r.u16("short TPMT_SIGNATURE")?)?;
    let value = match scheme {
        SigScheme::Ecdsa => SigValue::Ecc {
            r: r.tpm2b(MAX_ECC_BYTES, "bad ECDSA signatureR")?.to_vec(),
            s: r.tpm2b(MAX_ECC_BYTES, "bad ECDSA signatureS")?.to_vec(),
        },
        _ => SigValue::Rsa(r.tpm2b(MAX_RSA_BYTES, "bad RSA signature")?.to_vec()),
    };
    r.finish("trailing bytes after TPMT_SIGNATURE")?;
    Ok(Signature {
        scheme,
        hash,
        value,
    })
}

/// Accepts a hash algorithm id the TPM specification defines for PCR banks and signatures.
fn known_hash(alg: u16) -> Parsed<u16> {
    if pcr::bank_by_alg(alg).is_some() {
        Ok(alg)
    } else {
        Err(ParseError::Malformed("unknown hash algorithm"))
    }
}

/// The public key material of a `TPMT_PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA key.
    Rsa {
        /// Modulus, big-endian, exactly `keyBits / 8` bytes.
        n: Vec<u8>,
        /// Public exponent (0 in the structure already replaced by 65537).
        e: u32,
    },
    /// ECC key.
    Ecc {
        /// `TPM_ECC_CURVE` id.
        curve: u16,
        /// X coordinate.
        x: Vec<u8>,
        /// Y coordinate.
        y: Vec<u8>,
    },
}

/// A parsed `TPM2B_PUBLIC` of an RSA or ECC signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    /// `nameAlg`.
    pub name_alg: u16,
    /// `objectAttributes` (as claimed by whoever marshalled the structure).
    pub attributes: u32,
    /// Signing scheme fixed in the key (`None` for `TPM_ALG_NULL`) and its hash.
    pub scheme: Option<(SigScheme, u16)>,
    /// The key itself.
    pub key: PublicKey,
}

/// Parses a marshalled `TPM2B_PUBLIC` (RSA or ECC).
pub fn public(buf: &[u8]) -> Parsed<Public> {
    let mut outer = Reader::new(buf);
    let inner = outer.tpm2b(usize::from(u16::MAX), "bad TPM2B_PUBLIC size")?;
    outer.finish("trailing bytes after TPM2B_PUBLIC")?;
    let mut r = Reader::new(inner);
    let kind = r.u16("short TPMT_PUBLIC")?;
    let name_alg = known_hash(r.u16("short TPMT_PUBLIC")?)?;
    let attributes = r.u32("short TPMT_PUBLIC")?;
    r.tpm2b(MAX_DIGEST, "bad authPolicy")?;
    let (scheme, key) = match kind {
        ALG_RSA => rsa_params_and_key(&mut r)?,
        ALG_ECC => ecc_params_and_key(&mut r)?,
        _ => return Err(ParseError::Malformed("AIK is neither RSA nor ECC")),
    };
    r.finish("TPMT_PUBLIC shorter than its TPM2B size")?;
    Ok(Public {
        name_alg,
        attributes,
        scheme,
        key,
    })
}

/// Parses `TPMT_SYM_DEF_OBJECT` (NULL, or algorithm + keyBits + mode).
fn symmetric(r: &mut Reader<'_>) -> Parsed<()> {
    let alg = r.u16("short symmetric definition")?;
    if alg == ALG_NULL {
        return Ok(());
    }
    if !SYM_ALGS.contains(&alg) {
        return Err(ParseError::Malformed("unknown symmetric algorithm"));
    }
    r.u16("short symmetric definition")?;
    r.u16("short symmetric definition")?;
    Ok(())
}

/// Parses a signing scheme (`TPMT_RSA_SCHEME` / `TPMT_ECC_SCHEME`) limited to `allowed`.
fn key_scheme(r: &mut Reader<'_>, allowed: &[SigScheme]) -> Parsed<Option<(SigScheme, u16)>> {
    let alg = r.u16("short key scheme")?;
    if alg == ALG_NULL {
        return Ok(None);
    }
    let Some(scheme) = allowed.iter().copied().find(|s| s.alg() == alg) else {
        return Err(ParseError::Malformed(
            "AIK scheme is not a supported signing scheme",
        ));
    };
    let hash = known_hash(r.u16("short key scheme")?)?;
    Ok(Some((scheme, hash)))
}

/// Parses `TPMS_RSA_PARMS` and the `TPM2B_PUBLIC_KEY_RSA` unique field.
fn rsa_params_and_key(r: &mut Reader<'_>) -> Parsed<(Option<(SigScheme, u16)>, PublicKey)> {
    symmetric(r)?;
    let scheme = key_scheme(r, &[SigScheme::RsaSsa, SigScheme::RsaPss])?;
    let bits = r.u16("short RSA parameters")?;
    if bits < MIN_RSA_BITS || !bits.is_multiple_of(8) || usize::from(bits / 8) > MAX_RSA_BYTES {
        return Err(ParseError::Malformed("unsupported RSA key size"));
    }
    let e = match r.u32("short RSA parameters")? {
        0 => 65_537,
        e => e,
    };
    let n = r.tpm2b(MAX_RSA_BYTES, "bad RSA modulus")?;
    if n.len() != usize::from(bits / 8) {
        return Err(ParseError::Malformed(
            "RSA modulus length does not match keyBits",
        ));
    }
    Ok((scheme, PublicKey::Rsa { n: n.to_vec(), e }))
}

/// Parses `TPMS_ECC_PARMS` and the `TPMS_ECC_POINT` unique field.
fn ecc_params_and_key(r: &mut Reader<'_>) -> Parsed<(Option<(SigScheme, u16)>, PublicKey)> {
    symmetric(r)?;
    let scheme = key_scheme(r, &[SigScheme::Ecdsa])?;
    let curve = r.u16("short ECC parameters")?;
    let kdf = r.u16("short ECC parameters")?;
    if kdf != ALG_NULL {
        if !KDF_ALGS.contains(&kdf) {
            return Err(ParseError::Malformed("unknown KDF scheme"));
        }
        known_hash(r.u16("short ECC parameters")?)?;
    }
    let x = r.tpm2b(MAX_ECC_BYTES, "bad ECC point X")?.to_vec();
    let y = r.tpm2b(MAX_ECC_BYTES, "bad ECC point Y")?.to_vec();
    Ok((scheme, PublicKey::Ecc { curve, x, y }))
}
