//! Stable, libFuzzer-free fuzzing harness for the targets in `src/lib.rs`.
//!
//! Runs one target over its corpus, then over mutated inputs (bit flips, byte edits,
//! insertions, splices, dictionary tokens, JSON-aware field replacement) for a time or run
//! budget. Without coverage instrumentation it keeps inputs that show a new *behaviour*
//! (a new error message or verification outcome, see `nomyo_fuzz::note`).
//!
//! Findings are written to `artifacts/<target>/`: a panic (`crash-*`), an input slower than
//! `--slow-ms` (`slow-*`), an input still running after `--timeout` seconds (`timeout-*`,
//! written by a watchdog thread, then the process exits 3) and a fatal signal such as an
//! abort on allocation failure (`abort-*`, written by a signal handler, then re-raised).
//!
//! ```text
//! cargo run --release --no-default-features --bin replay -- [options] TARGET
//!   --seconds S      time budget (default 60)       --runs N     stop after N executions
//!   --seed X         PRNG seed (default: time)       --max-len N  largest input (65536)
//!   --corpus DIR     corpus folder (repeatable; default seeds/TARGET and corpus/TARGET)
//!   --artifacts DIR  where findings go (default artifacts/TARGET)
//!   --slow-ms MS     report inputs slower than this (default 2000)
//!   --timeout S      watchdog: give up on an input after S seconds (default 30)
//!   --replay-only    only run the corpus files once
//! ```
//! Exit status: 0 nothing found, 1 crash found, 3 timeout, 2 usage error.

use std::collections::HashSet;
use std::fs;
use std::io::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

// --- PRNG ---------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
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

fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>], max_len: usize) {
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
                rng.next() as u16,
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
            let b = rng.next() as u8;
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
        2 => Value::from(rng.next() as i64),
        3 => serde_json::Number::from_f64((rng.next() as f64) / 7.0)
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

// --- findings -------------------------------------------------------------------------------------

static PANIC_MESSAGE: Mutex<String> = Mutex::new(String::new());

// The input being executed, for the watchdog and the fatal-signal handler.
static CURRENT_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);
static CURRENT_GEN: AtomicU64 = AtomicU64::new(0);
static ABORT_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_fatal_signal(sig: libc::c_int) {
    // async-signal-safe only: write the current input to the pre-opened file, then re-raise.
    let fd = ABORT_FD.load(Ordering::SeqCst);
    let ptr = CURRENT_PTR.load(Ordering::SeqCst);
    let len = CURRENT_LEN.load(Ordering::SeqCst);
    unsafe {
        if fd >= 0 && !ptr.is_null() {
            libc::ftruncate(fd, 0);
            libc::lseek(fd, 0, libc::SEEK_SET);
            libc::write(fd, ptr.cast(), len);
            libc::fsync(fd);
        }
        let msg = b"\nreplay: fatal signal; the input is in artifacts/<target>/abort-input\n";
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

fn install_signal_handlers(artifacts: &Path) {
    let path = artifacts.join("abort-input");
    if let Ok(file) = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
    {
        use std::os::fd::IntoRawFd;
        ABORT_FD.store(file.into_raw_fd(), Ordering::SeqCst);
    }
    for sig in [
        libc::SIGABRT,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
    ] {
        unsafe {
            libc::signal(
                sig,
                on_fatal_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

fn hex(data: &[u8], limit: usize) -> String {
    let mut s: String = data
        .iter()
        .take(limit)
        .map(|b| format!("{b:02x}"))
        .collect();
    if data.len() > limit {
        s.push_str(&format!("...(+{} bytes)", data.len() - limit));
    }
    s
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn save(dir: &Path, kind: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(format!("{kind}-{:016x}", fnv(data)));
    let _ = fs::write(&path, data);
    path
}

// --- main -----------------------------------------------------------------------------------------

struct Options {
    target: String,
    seconds: f64,
    runs: u64,
    seed: u64,
    max_len: usize,
    corpus: Vec<PathBuf>,
    artifacts: Option<PathBuf>,
    slow_ms: u128,
    timeout: u64,
    replay_only: bool,
}

fn usage() -> ! {
    eprintln!("usage: replay [--seconds S] [--runs N] [--seed X] [--max-len N] [--corpus DIR]...");
    eprintln!(
        "              [--artifacts DIR] [--slow-ms MS] [--timeout S] [--replay-only] TARGET"
    );
    let names: Vec<&str> = nomyo_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    eprintln!("targets: {}", names.join(", "));
    std::process::exit(2)
}

fn parse_args() -> Options {
    let mut o = Options {
        target: String::new(),
        seconds: 60.0,
        runs: u64::MAX,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        max_len: 65536,
        corpus: Vec::new(),
        artifacts: None,
        slow_ms: 2000,
        timeout: 30,
        replay_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--seconds" => o.seconds = val().parse().unwrap_or_else(|_| usage()),
            "--runs" => o.runs = val().parse().unwrap_or_else(|_| usage()),
            "--seed" => o.seed = val().parse().unwrap_or_else(|_| usage()),
            "--max-len" => o.max_len = val().parse().unwrap_or_else(|_| usage()),
            "--corpus" => o.corpus.push(PathBuf::from(val())),
            "--artifacts" => o.artifacts = Some(PathBuf::from(val())),
            "--slow-ms" => o.slow_ms = val().parse().unwrap_or_else(|_| usage()),
            "--timeout" => o.timeout = val().parse().unwrap_or_else(|_| usage()),
            "--replay-only" => o.replay_only = true,
            "-h" | "--help" => usage(),
            s if !s.starts_with('-') && o.target.is_empty() => o.target = s.to_owned(),
            _ => usage(),
        }
    }
    if o.target.is_empty() {
        usage();
    }
    o
}

fn load_corpus(dirs: &[PathBuf], max_len: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            if let Ok(mut data) = fs::read(&path) {
                data.truncate(max_len);
                out.push(data);
            }
        }
    }
    out
}

fn main() {
    let opts = parse_args();
    let Some(run) = nomyo_fuzz::target(&opts.target) else {
        eprintln!("unknown target {:?}", opts.target);
        usage()
    };
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let corpus_dirs = if opts.corpus.is_empty() {
        vec![
            here.join("seeds").join(&opts.target),
            here.join("corpus").join(&opts.target),
        ]
    } else {
        opts.corpus.clone()
    };
    let artifacts = opts
        .artifacts
        .clone()
        .unwrap_or_else(|| here.join("artifacts").join(&opts.target));
    fs::create_dir_all(&artifacts).expect("artifacts folder");
    install_signal_handlers(&artifacts);

    panic::set_hook(Box::new(|info| {
        let msg = info.to_string();
        if let Ok(mut slot) = PANIC_MESSAGE.lock() {
            *slot = msg;
        }
    }));

    // Watchdog: an input running longer than --timeout is reported and ends the run.
    {
        let timeout = Duration::from_secs(opts.timeout);
        let artifacts = artifacts.clone();
        let target = opts.target.clone();
        std::thread::spawn(move || {
            let mut seen = (u64::MAX, Instant::now());
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let gen = CURRENT_GEN.load(Ordering::SeqCst);
                if gen != seen.0 {
                    seen = (gen, Instant::now());
                } else if gen % 2 == 1 && seen.1.elapsed() > timeout {
                    let ptr = CURRENT_PTR.load(Ordering::SeqCst);
                    let len = CURRENT_LEN.load(Ordering::SeqCst);
                    // The main thread is stuck inside the target: the input is still alive.
                    let data = unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec();
                    let path = save(&artifacts, "timeout", &data);
                    println!(
                        "TIMEOUT target={target} after {}s input({} bytes)={} saved={}",
                        timeout.as_secs(),
                        data.len(),
                        hex(&data, 2048),
                        path.display()
                    );
                    let _ = std::io::stdout().flush();
                    std::process::exit(3);
                }
            }
        });
    }

    let mut rng = Rng(opts.seed);
    let mut corpus = load_corpus(&corpus_dirs, opts.max_len);
    let seeds = corpus.len();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let mut behaviours: HashSet<u64> = HashSet::new();
    let mut crash_sites: HashSet<String> = HashSet::new();
    let unique_crashes = std::cell::Cell::new(0usize);
    let (mut execs, mut crashes, mut slow) = (0u64, 0u64, 0u64);
    let mut slowest = (Duration::ZERO, 0usize);
    let start = Instant::now();
    let budget = Duration::from_secs_f64(opts.seconds);

    let mut exec = |input: &[u8], execs: &mut u64| -> (bool, u64) {
        CURRENT_PTR.store(input.as_ptr().cast_mut(), Ordering::SeqCst);
        CURRENT_LEN.store(input.len(), Ordering::SeqCst);
        CURRENT_GEN.fetch_add(1, Ordering::SeqCst); // odd: running
        let t0 = Instant::now();
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| run(input)));
        let took = t0.elapsed();
        CURRENT_GEN.fetch_add(1, Ordering::SeqCst); // even: idle
        *execs += 1;
        let feedback = nomyo_fuzz::take_feedback();
        if took > slowest.0 {
            slowest = (took, input.len());
        }
        if took.as_millis() > opts.slow_ms {
            slow += 1;
            let path = save(&artifacts, "slow", input);
            println!(
                "SLOW target={} {:.2}s input({} bytes)={} saved={}",
                opts.target,
                took.as_secs_f64(),
                input.len(),
                hex(input, 512),
                path.display()
            );
        }
        if outcome.is_err() {
            let msg = PANIC_MESSAGE.lock().map(|m| m.clone()).unwrap_or_default();
            crashes += 1;
            let site = msg.lines().next().unwrap_or("").to_owned();
            if crash_sites.insert(site) {
                unique_crashes.set(crash_sites.len());
                let path = save(&artifacts, "crash", input);
                println!(
                    "CRASH target={} {msg}\n  input({} bytes)={}\n  saved={}",
                    opts.target,
                    input.len(),
                    hex(input, 4096),
                    path.display()
                );
            }
            return (true, feedback);
        }
        (false, feedback)
    };

    // 1. the corpus as it is
    for input in corpus.clone() {
        let (_, fb) = exec(&input, &mut execs);
        behaviours.insert(fb);
    }
    // 2. mutations
    if !opts.replay_only {
        let mut input = Vec::new();
        while execs < opts.runs && start.elapsed() < budget && unique_crashes.get() < 20 {
            input.clear();
            input.extend_from_slice(&corpus[rng.below(corpus.len())]);
            for _ in 0..1 + rng.below(4) {
                mutate_bytes(&mut rng, &mut input, &corpus, opts.max_len);
            }
            let (crashed, fb) = exec(&input, &mut execs);
            if !crashed && behaviours.insert(fb) && corpus.len() < 20_000 {
                corpus.push(input.clone());
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "target={} execs={} seconds={:.1} execs_per_sec={:.0} seeds={} corpus={} behaviours={} \
         crashes={} unique_crashes={} slow={} slowest_ms={} slowest_len={} seed={}",
        opts.target,
        execs,
        secs,
        execs as f64 / secs.max(1e-9),
        seeds,
        corpus.len(),
        behaviours.len(),
        crashes,
        crash_sites.len(),
        slow,
        slowest.0.as_millis(),
        slowest.1,
        opts.seed
    );
    let _ = fs::remove_file(artifacts.join("abort-input"));
    std::process::exit(i32::from(crashes > 0));
}
