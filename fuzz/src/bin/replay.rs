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

use nomyo_fuzz::mutate::{mutate_bytes, Rng};

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
