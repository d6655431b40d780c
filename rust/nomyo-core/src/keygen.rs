//! RSA key generation raced on several cores.
//!
//! aws-lc generates an RSA prime by drawing fresh random candidates until one passes trial
//! division and Miller-Rabin (FIPS 186-4 B.3.3), so the time a key takes is the luck of the
//! draw: from a fifth to three times the mean for RSA-4096. Running independent generations
//! on `n` threads and keeping the first to finish cuts the wait to the fastest of `n` draws;
//! the others are stopped through aws-lc's generation callback at their next candidate.
//!
//! The kept key is drawn exactly as a single generation draws it: each candidate is fresh
//! randomness, so how many candidates a thread needed says nothing about the primes it found,
//! and picking the first thread to finish picks no particular key. The generation itself is
//! aws-lc's `EVP_PKEY_keygen` (what `aws_lc_rs::rsa::PrivateDecryptingKey::generate` calls),
//! with a callback added; the key comes out as PKCS#8 DER that is zeroed on drop (which
//! `keys::PrivateKey::generate` loads).

use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;

use aws_lc_sys as sys;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// At most this many generations race (more cores shorten the wait less and less).
pub const MAX_RACERS: usize = 4;

/// How many generations `PrivateKey::generate` races here: the cores this process may
/// use, at most [`MAX_RACERS`].
pub fn default_racers() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get().min(MAX_RACERS))
}

/// Generate an RSA key pair (e = 65537) of `bits` with `racers` generations in parallel
/// (one of them on the calling thread) and keep the first to finish, as PKCS#8 DER.
pub fn generate_raced(bits: usize, racers: usize) -> Result<Zeroizing<Vec<u8>>> {
    let bits = c_int::try_from(bits).map_err(|_| Error::Internal("RSA key size out of range"))?;
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let (sender, receiver) = mpsc::channel();
        for _ in 1..racers {
            let sender = sender.clone();
            let stop = &stop;
            let spawned = thread::Builder::new()
                .name("nomyo-keygen".into())
                .spawn_scoped(scope, move || {
                    let _ = sender.send(generate_pkcs8(bits, stop));
                });
            if spawned.is_err() {
                break; // out of threads: race with the ones that started
            }
        }
        drop(sender);
        let mut failure = None;
        for outcome in std::iter::once(generate_pkcs8(bits, &stop)).chain(receiver.iter()) {
            match outcome {
                Ok(Some(der)) => return Ok(der), // the scope then waits for the stopped ones
                Ok(None) => {}
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        // Every racer failed.
        Err(failure.unwrap_or(Error::Internal("RSA key generation failed")))
    })
}

/// aws-lc's generation callback: called for each candidate and Miller-Rabin round; 0 stops
/// the generation, which then fails.
unsafe extern "C" fn keep_going(ctx: *mut sys::EVP_PKEY_CTX) -> c_int {
    // SAFETY: `ctx` is the context `generate_pkcs8` set up, whose app data points at the
    // `AtomicBool` that function borrows for as long as the generation runs.
    let stop = unsafe { &*(sys::EVP_PKEY_CTX_get_app_data(ctx) as *const AtomicBool) };
    c_int::from(!stop.load(Ordering::Relaxed))
}

/// Owns an aws-lc pointer and frees it with `free` on drop.
struct Owned<T> {
    ptr: *mut T,
    free: unsafe extern "C" fn(*mut T),
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from the aws-lc allocator that `free` belongs to, and
            // nothing else frees it.
            unsafe { (self.free)(self.ptr) }
        }
    }
}

/// One generation, serialised as PKCS#8 DER. The first to succeed sets `stop`, which ends
/// the others (`Ok(None)`, as for one that succeeds after it).
fn generate_pkcs8(bits: c_int, stop: &AtomicBool) -> Result<Option<Zeroizing<Vec<u8>>>> {
    const FAILED: Error = Error::Internal("RSA key generation failed");
    // SAFETY: every pointer is checked before use and owned by an `Owned` that frees it
    // once; the callback's app data (`stop`) outlives the `EVP_PKEY_keygen` call.
    unsafe {
        let ctx = Owned {
            ptr: sys::EVP_PKEY_CTX_new_id(sys::EVP_PKEY_RSA, ptr::null_mut()),
            free: sys::EVP_PKEY_CTX_free,
        };
        if ctx.ptr.is_null()
            || sys::EVP_PKEY_keygen_init(ctx.ptr) != 1
            || sys::EVP_PKEY_CTX_set_rsa_keygen_bits(ctx.ptr, bits) != 1
        {
            return Err(FAILED);
        }
        sys::EVP_PKEY_CTX_set_app_data(ctx.ptr, ptr::from_ref(stop).cast_mut().cast::<c_void>());
        sys::EVP_PKEY_CTX_set_cb(ctx.ptr, Some(keep_going));
        let mut raw = ptr::null_mut();
        let generated = sys::EVP_PKEY_keygen(ctx.ptr, &mut raw) == 1;
        let pkey = Owned {
            ptr: raw,
            free: sys::EVP_PKEY_free,
        };
        let won = generated && !pkey.ptr.is_null() && !stop.swap(true, Ordering::Relaxed);
        if !won {
            sys::ERR_clear_error();
            if stop.load(Ordering::Relaxed) {
                return Ok(None); // freed (aws-lc clears bignums) by `pkey`'s drop
            }
            return Err(FAILED);
        }
        let der = marshal_pkcs8(pkey.ptr);
        if der.is_err() {
            sys::ERR_clear_error();
        }
        der.map(Some)
    }
}

/// PKCS#8 DER of `pkey`, copied out of aws-lc's buffer (which `OPENSSL_free` clears).
///
/// # Safety
/// `pkey` must point at a valid `EVP_PKEY`.
unsafe fn marshal_pkcs8(pkey: *const sys::EVP_PKEY) -> Result<Zeroizing<Vec<u8>>> {
    const FAILED: Error = Error::Internal("could not encode the generated key");
    let mut cbb = MaybeUninit::<sys::CBB>::uninit();
    // SAFETY: `CBB_zero` initialises the CBB; `CBB_init` sizes it for an RSA-8192 key so it
    // is not reallocated; `CBB_cleanup` is a no-op after a successful `CBB_finish`.
    unsafe {
        sys::CBB_zero(cbb.as_mut_ptr());
        let cbb = cbb.as_mut_ptr();
        if sys::CBB_init(cbb, 8192) != 1 || sys::EVP_marshal_private_key(cbb, pkey) != 1 {
            sys::CBB_cleanup(cbb);
            return Err(FAILED);
        }
        let mut data = ptr::null_mut();
        let mut len = 0usize;
        if sys::CBB_finish(cbb, &mut data, &mut len) != 1 || data.is_null() {
            sys::CBB_cleanup(cbb);
            return Err(FAILED);
        }
        let der = Zeroizing::new(std::slice::from_raw_parts(data, len).to_vec());
        sys::OPENSSL_free(data.cast::<c_void>());
        Ok(der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_generation_ends_without_a_key() {
        let stop = AtomicBool::new(true);
        assert!(generate_pkcs8(2048, &stop).unwrap().is_none());
    }
}
