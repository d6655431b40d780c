//! The replay harness's mutators: a small deterministic PRNG, byte-level edits (bit flips,
//! byte edits, insertions, splices, dictionary tokens) and JSON-aware field replacement.

use serde_json::Value;

// --- PRNG ---------------------------------------------------------------------------------------

/// splitmix64, seeded by the caller (the same seed replays the same inputs).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

// --- mutation -----------------------------------------------------------------------------------

const DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"false",
    b"0",
    b"-0",
    b"1e999",
    b"-1",
    b"18446744073709551616",
    b"1.5",
    b"\"\"",
    b"[]",
    b"{}",
    b"\\u0000",
    b"\\ud800",
    b"\\\"",
    b"\xff",
    b"\xc3\xa9",
    b"   ",
    b"\n",
    b"\"version\"",
    b"\"algorithm\"",
    b"\"encrypted_payload\"",
    b"\"ciphertext\"",
    b"\"nonce\"",
    b"\"tag\"",
    b"\"encrypted_aes_key\"",
    b"\"key_algorithm\"",
    b"\"payload_algorithm\"",
    b"\"processed_at\"",
    b"\"1.0\"",
    b"\"hybrid-aes256-rsa4096\"",
    b"\"RSA-OAEP-SHA256\"",
    b"\"AES-256-GCM\"",
    b"\"is_available\"",
    b"\"pcr_banks\"",
    b"\"pcr_values\"",
    b"\"quote_b64\"",
    b"\"signature_b64\"",
    b"\"aik_pubkey_b64\"",
    b"\"sha256:0,7,10\"",
    b"sha1",
    b"sha256",
    b"sha384",
    b"sha512",
    b"+",
    b"0,7,10",
    b"24",
    b"255",
    b"=",
    b"==",
    b"AAAA",
    b"////",
    b"++++",
    b"-_",
    b"A===",
    b"-----BEGIN ",
    b"-----END ",
    b"PRIVATE KEY-----",
    b"PUBLIC KEY-----",
    b"ENCRYPTED PRIVATE KEY-----",
    b"RSA PRIVATE KEY-----",
    b"RSA PUBLIC KEY-----",
    b"\xff\x54\x43\x47",
    b"\x80\x18",
    b"\x80\x17",
    b"\x00\x14",
    b"\x00\x16",
    b"\x00\x18",
    b"\x00\x0b",
    b"\x00\x04",
    b"\x00\x0c",
    b"\x00\x0d",
    b"\x00\x10",
    b"\x00\x01",
    b"\x00\x23",
    b"\x00\x03",
    b"\x00\x05\x00\x72",
    b"\x08\x00",
    b"\x01\x00",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
    // DER: SEQUENCE, INTEGER, OID rsaEncryption, NULL, long lengths
    b"\x30\x82",
    b"\x30\x84\xff\xff\xff\xff",
    b"\x02\x01\x00",
    b"\x02\x81\x80",
    b"\x05\x00",
    b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01",
    b"\x03\x82\x01\x0f\x00",
    b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x05\x0d",
    b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x05\x0c",
    b"\x06\x09\x2b\x06\x01\x04\x01\xda\x47\x04\x0b",
];

const INTERESTING_LENGTHS: &[usize] = &[
    0, 1, 2, 3, 11, 12, 13, 15, 16, 17, 20, 31, 32, 33, 48, 63, 64, 65, 127, 128, 255, 256, 257,
    384, 511, 512, 513,
];

/// One random edit of `data` (kept within `max_len`), sometimes drawing on `corpus`.
pub fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>], max_len: usize) {
    let len = data.len();
    match rng.below(13) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = [0, 0xff, 0x7f, 0x80, 0x01, b'"', b'{', b'=', b'A'][rng.below(9)];
        }
        2 if len > 0 => {
            let i = rng.below(len);
            data[i] = data[i].wrapping_add((rng.below(33) as u8).wrapping_sub(16));
        }
        3 => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes = rng.bytes(n);
            data.splice(i..i, bytes);
        }
        4 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(64));
            data.drain(i..i + n);
        }
        5 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(256));
            let copy = data[i..i + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, copy);
        }
        6 if !corpus.is_empty() => {
            let other = &corpus[rng.below(corpus.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        7 => {
            let token = DICT[rng.below(DICT.len())];
            let i = rng.below(len + 1);
            if rng.chance(2) || i + token.len() > len {
                data.splice(i..i, token.iter().copied());
            } else {
                data[i..i + token.len()].copy_from_slice(token);
            }
        }
        8 if len >= 2 => {
            let i = rng.below(len - 1);
            let v: u16 = [
                0,
                1,
                0xffff,
                0x7fff,
                0x8000,
                0x0100,
                len as u16,
                rng.next_u64() as u16,
            ][rng.below(8)];
            data[i..i + 2].copy_from_slice(&v.to_be_bytes());
        }
        9 if len >= 4 => {
            let i = rng.below(len - 3);
            let v: u32 = [
                0,
                1,
                u32::MAX,
                0x7fff_ffff,
                0x8000_0000,
                100_000_000,
                0x0001_0000,
            ][rng.below(7)];
            data[i..i + 4].copy_from_slice(&v.to_be_bytes());
        }
        10 if len > 0 => data.truncate(rng.below(len)),
        11 => {
            if let Ok(mut value) = serde_json::from_slice::<Value>(data) {
                mutate_json(rng, &mut value, 0);
                *data = serde_json::to_vec(&value).unwrap_or_default();
            } else if len > 0 {
                // maybe there is JSON after a leading mode byte (tpm_verify)
                if let Ok(mut value) = serde_json::from_slice::<Value>(&data[1..]) {
                    mutate_json(rng, &mut value, 0);
                    let head = data[0];
                    *data = vec![head];
                    data.extend(serde_json::to_vec(&value).unwrap_or_default());
                }
            }
        }
        _ => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let b = rng.next_u64() as u8;
            data.splice(i..i, std::iter::repeat_n(b, n));
        }
    }
    data.truncate(max_len);
}

fn random_b64(rng: &mut Rng) -> String {
    use base64::Engine as _;
    let n = if rng.chance(2) {
        INTERESTING_LENGTHS[rng.below(INTERESTING_LENGTHS.len())]
    } else {
        rng.below(2048)
    };
    let mut s = base64::engine::general_purpose::STANDARD.encode(rng.bytes(n));
    match rng.below(6) {
        0 if !s.is_empty() => {
            let i = rng.below(s.len());
            s.insert(i, ['=', '-', '_', ' ', '\n', '!'][rng.below(6)]);
        }
        1 => s = s.trim_end_matches('=').to_owned(),
        2 => s = base64::engine::general_purpose::URL_SAFE.encode(rng.bytes(n)),
        _ => {}
    }
    s
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 8 } else { 10 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(2)),
        2 => Value::from(rng.next_u64() as i64),
        3 => serde_json::Number::from_f64((rng.next_u64() as f64) / 7.0)
            .map_or(Value::Null, Value::Number),
        4 | 5 => Value::String(random_b64(rng)),
        6 => {
            let n = rng.below(40);
            Value::String(String::from_utf8_lossy(&rng.bytes(n)).into_owned())
        }
        7 => Value::String(
            [
                "1.0",
                "hybrid-aes256-rsa4096",
                "RSA-OAEP-SHA256",
                "AES-256-GCM",
                "sha256:0,7,10",
                "",
            ][rng.below(6)]
            .to_owned(),
        ),
        8 => Value::Array(
            (0..rng.below(3))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(3))
                .map(|i| (format!("k{i}"), random_value(rng, depth + 1)))
                .collect(),
        ),
    }
}

fn mutate_json(rng: &mut Rng, value: &mut Value, depth: usize) {
    match value {
        Value::Object(map) if !map.is_empty() && depth < 8 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = keys[rng.below(keys.len())].clone();
            match rng.below(6) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    let v = random_value(rng, depth);
                    map.insert(key, v);
                }
                2 => {
                    let v = random_value(rng, depth);
                    map.insert(format!("{key}_x"), v);
                }
                _ => mutate_json(rng, map.get_mut(&key).expect("key"), depth + 1),
            }
        }
        Value::Array(items) if !items.is_empty() && depth < 8 => {
            let i = rng.below(items.len());
            if rng.chance(4) {
                items.remove(i);
            } else {
                mutate_json(rng, &mut items[i], depth + 1);
            }
        }
        Value::String(s) => match rng.below(5) {
            0 => *s = random_b64(rng),
            1 if !s.is_empty() => {
                let mut bytes = s.clone().into_bytes();
                let i = rng.below(bytes.len());
                bytes[i] = [b'A', b'=', b'/', b'+', b'-', b' ', b'0'][rng.below(7)];
                *s = String::from_utf8_lossy(&bytes).into_owned();
            }
            2 if !s.is_empty() => {
                let cut = rng.below(s.len());
                *s = s.chars().take(cut).collect();
            }
            3 => *value = random_value(rng, depth),
            _ => s.push_str(&random_b64(rng)),
        },
        _ => *value = random_value(rng, depth),
    }
}
