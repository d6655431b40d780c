//! Wiping what secret operations leave behind outside secret buffers: vector registers and
//! the stack below the caller.

use zeroize::Zeroize;

/// Bytes of stack below the caller that [`scrub`] zeroes.
const SCRUB_STACK: usize = 16 << 10;

/// Wipe the copies of secrets that moving them leaves outside secret buffers on this thread:
/// the vector registers, which copying and AES-GCM go through and which are later saved to the
/// stack (by the dynamic linker's lazy binding, `_dl_runtime_resolve_xsave`, and by signal
/// delivery) where a core dump finds them; and 16 KiB of stack below the caller, where the
/// secret operation's callees ran. Call it where a secret operation returns to code that does
/// not handle secrets (about a microsecond).
#[inline(never)]
pub fn scrub() {
    scrub_stack();
    clear_vector_registers();
}

#[inline(never)]
fn scrub_stack() {
    let mut area = [0u64; SCRUB_STACK / 8];
    // Volatile writes: the compiler cannot drop them although `area` is never read.
    area.zeroize();
    std::hint::black_box(&mut area);
}

/// Zero every vector register (`vzeroall`, and zmm16-31 with AVX-512; a CPU with AVX-512F but
/// not VL, the first Xeon Phi only, keeps zmm16-31).
#[cfg(target_arch = "x86_64")]
fn clear_vector_registers() {
    // EVEX-encoded 128-bit writes zero the whole zmm register (bits 128-511 too) without a
    // 512-bit instruction, which would lower the clock of some Intel CPUs for a while.
    #[target_feature(enable = "avx512f,avx512vl")]
    unsafe fn avx512() {
        // SAFETY: only zeroes registers, all of them declared clobbered (the C ABI's
        // caller-saved set includes every vector register).
        unsafe {
            std::arch::asm!(
                "vzeroall",
                "vpxord xmm16, xmm16, xmm16",
                "vpxord xmm17, xmm17, xmm17",
                "vpxord xmm18, xmm18, xmm18",
                "vpxord xmm19, xmm19, xmm19",
                "vpxord xmm20, xmm20, xmm20",
                "vpxord xmm21, xmm21, xmm21",
                "vpxord xmm22, xmm22, xmm22",
                "vpxord xmm23, xmm23, xmm23",
                "vpxord xmm24, xmm24, xmm24",
                "vpxord xmm25, xmm25, xmm25",
                "vpxord xmm26, xmm26, xmm26",
                "vpxord xmm27, xmm27, xmm27",
                "vpxord xmm28, xmm28, xmm28",
                "vpxord xmm29, xmm29, xmm29",
                "vpxord xmm30, xmm30, xmm30",
                "vpxord xmm31, xmm31, xmm31",
                clobber_abi("C"),
                options(nostack, nomem, preserves_flags),
            );
        }
    }
    #[target_feature(enable = "avx")]
    unsafe fn avx() {
        // SAFETY: as above.
        unsafe {
            std::arch::asm!(
                "vzeroall",
                clobber_abi("C"),
                options(nostack, nomem, preserves_flags)
            );
        }
    }
    fn sse() {
        // SAFETY: as above.
        unsafe {
            std::arch::asm!(
                "xorps xmm0, xmm0",
                "xorps xmm1, xmm1",
                "xorps xmm2, xmm2",
                "xorps xmm3, xmm3",
                "xorps xmm4, xmm4",
                "xorps xmm5, xmm5",
                "xorps xmm6, xmm6",
                "xorps xmm7, xmm7",
                "xorps xmm8, xmm8",
                "xorps xmm9, xmm9",
                "xorps xmm10, xmm10",
                "xorps xmm11, xmm11",
                "xorps xmm12, xmm12",
                "xorps xmm13, xmm13",
                "xorps xmm14, xmm14",
                "xorps xmm15, xmm15",
                clobber_abi("C"),
                options(nostack, nomem, preserves_flags),
            );
        }
    }
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        // SAFETY: the CPU has AVX-512F and AVX-512VL.
        unsafe { avx512() }
    } else if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX.
        unsafe { avx() }
    } else {
        sse();
    }
}

/// Other architectures: the stack is scrubbed, the registers are not (yet).
#[cfg(not(target_arch = "x86_64"))]
fn clear_vector_registers() {}
