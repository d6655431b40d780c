//! PCR banks: the `pcr_banks` string, the `pcr_values` map, and their comparison with the
//! selection inside the quote.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// One bank of a `TPML_PCR_SELECTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrBank {
    /// Hash algorithm id of the bank.
    pub alg: u16,
    /// Selected PCR indices, ascending.
    pub indices: Vec<u32>,
}

/// A PCR bank: tpm2-tools name, TPM algorithm id, digest length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BankInfo {
    /// Name as tpm2-tools writes it (`sha256`).
    pub name: &'static str,
    /// `TPM_ALG_ID`.
    pub alg: u16,
    /// Digest size in bytes.
    pub len: usize,
}

/// Hash algorithms the TPM 2.0 library specification defines for PCR banks.
const BANKS: [BankInfo; 8] = [
    BankInfo {
        name: "sha1",
        alg: 0x0004,
        len: 20,
    },
    BankInfo {
        name: "sha256",
        alg: 0x000b,
        len: 32,
    },
    BankInfo {
        name: "sha384",
        alg: 0x000c,
        len: 48,
    },
    BankInfo {
        name: "sha512",
        alg: 0x000d,
        len: 64,
    },
    BankInfo {
        name: "sm3_256",
        alg: 0x0012,
        len: 32,
    },
    BankInfo {
        name: "sha3_256",
        alg: 0x0027,
        len: 32,
    },
    BankInfo {
        name: "sha3_384",
        alg: 0x0028,
        len: 48,
    },
    BankInfo {
        name: "sha3_512",
        alg: 0x0029,
        len: 64,
    },
];

/// Longest accepted `pcr_banks` string.
const MAX_BANKS_STR: usize = 4096;
/// Longest digest of any bank (SHA-512), in bytes.
const MAX_DIGEST: usize = 64;
/// Most PCR values accepted in `pcr_values` (all banks together).
const MAX_VALUES: usize = 512;

/// PCR values by bank name and index.
pub type PcrMap = BTreeMap<String, BTreeMap<u32, Vec<u8>>>;
/// A PCR selection by bank name (empty banks left out).
pub type Selection = BTreeMap<String, BTreeSet<u32>>;

/// Looks a bank up by its algorithm id.
pub fn bank_by_alg(alg: u16) -> Option<BankInfo> {
    BANKS.iter().copied().find(|b| b.alg == alg)
}

/// Looks a bank up by its tpm2-tools name.
fn bank_by_name(name: &str) -> Option<BankInfo> {
    BANKS.iter().copied().find(|b| b.name == name)
}

/// Parses a canonical decimal PCR index (`0`, `7`, `10`; no sign, no leading zero).
fn index(s: &str) -> Option<u32> {
    let canonical = !s.is_empty()
        && s.len() <= 10
        && s.bytes().all(|c| c.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

/// Parses `pcr_banks` such as `sha256:0,7,10` or `sha1:0,7+sha256:0,7,10`.
///
/// Empty banks are dropped; a bank or an index given twice is an error.
pub fn parse_banks(s: &str) -> Result<Selection, &'static str> {
    if s.len() > MAX_BANKS_STR {
        return Err("pcr_banks too long");
    }
    let mut out = Selection::new();
    for part in s.split('+') {
        let (name, list) = part.split_once(':').ok_or("pcr_banks bank without ':'")?;
        if name.is_empty() || out.contains_key(name) {
            return Err("pcr_banks bank empty or repeated");
        }
        let mut set = BTreeSet::new();
        for item in list.split(',').filter(|_| !list.is_empty()) {
            let idx = index(item).ok_or("pcr_banks index is not a decimal number")?;
            if !set.insert(idx) {
                return Err("pcr_banks index repeated");
            }
        }
        if !set.is_empty() {
            out.insert(name.to_owned(), set);
        }
    }
    Ok(out)
}

/// Parses `pcr_values` (`{bank: {index: hex}}`); values of known banks must have its digest size.
pub fn parse_values(v: &Value) -> Result<PcrMap, &'static str> {
    let banks = v.as_object().ok_or("pcr_values is not an object")?;
    let mut out = PcrMap::new();
    let mut total = 0usize;
    for (name, entries) in banks {
        let entries = entries
            .as_object()
            .ok_or("pcr_values bank is not an object")?;
        let want_len = bank_by_name(name).map(|b| b.len);
        let mut bank = BTreeMap::new();
        for (idx, hex) in entries {
            total += 1;
            if total > MAX_VALUES {
                return Err("too many pcr_values");
            }
            let idx = index(idx).ok_or("pcr_values index is not a decimal number")?;
            let hex = hex.as_str().ok_or("pcr_values value is not a string")?;
            if hex.len() > 2 * MAX_DIGEST {
                return Err("pcr_values value too long");
            }
            let bytes = hex_decode(hex).ok_or("pcr_values value is not hex")?;
            if want_len.is_some_and(|n| n != bytes.len()) {
                return Err("pcr_values value has the wrong length for its bank");
            }
            bank.insert(idx, bytes);
        }
        if !bank.is_empty() {
            out.insert(name.clone(), bank);
        }
    }
    Ok(out)
}

/// The quote's selection keyed by bank name, empty banks left out.
pub fn quote_selection(banks: &[PcrBank]) -> Selection {
    banks
        .iter()
        .filter(|b| !b.indices.is_empty())
        .filter_map(|b| {
            let info = bank_by_alg(b.alg)?;
            Some((info.name.to_owned(), b.indices.iter().copied().collect()))
        })
        .collect()
}

/// How `pcr_values` relate to the quote's selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Exactly the selected PCRs are present.
    Exact,
    /// A selected PCR has no value.
    Missing,
    /// A value is present for a PCR the quote does not select.
    Extra,
}

/// Compares the reported values with the quote's selection.
pub fn coverage(selection: &Selection, values: &PcrMap) -> Coverage {
    let missing = selection.iter().any(|(bank, set)| {
        let have = values.get(bank);
        set.iter().any(|i| !have.is_some_and(|m| m.contains_key(i)))
    });
    if missing {
        return Coverage::Missing;
    }
    let extra = values.iter().any(|(bank, map)| {
        let sel = selection.get(bank);
        map.keys().any(|i| !sel.is_some_and(|s| s.contains(i)))
    });
    if extra {
        Coverage::Extra
    } else {
        Coverage::Exact
    }
}

/// Concatenates the selected values: banks in quote order, ascending index within a bank.
///
/// Returns `None` if a value is missing (call [`coverage`] first).
pub fn concatenated(banks: &[PcrBank], values: &PcrMap) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for bank in banks {
        if bank.indices.is_empty() {
            continue;
        }
        let map = values.get(bank_by_alg(bank.alg)?.name)?;
        for idx in &bank.indices {
            out.extend_from_slice(map.get(idx)?);
        }
    }
    Some(out)
}

/// Decodes hex (either case); `None` on odd length or a non-hex character.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// Encodes bytes as lower-case hex.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}
