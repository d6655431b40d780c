//! A global allocator that wipes every block before it is freed (the Python binding's
//! `#[global_allocator]`), so transient plaintext never lingers in freed heap memory.

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator, zeroing memory on `dealloc` (and so on every `realloc` move).
pub struct Wiping;

// SAFETY: delegates to System; only adds a wipe of memory we are about to free.
unsafe impl GlobalAlloc for Wiping {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        zeroize::Zeroize::zeroize(std::slice::from_raw_parts_mut(ptr, layout.size()));
        System.dealloc(ptr, layout);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let new = System.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_zeroes_and_moves_contents_with_their_alignment() {
        for align in [1, 8, 64, 4096] {
            let layout = Layout::from_size_align(100, align).unwrap();
            // SAFETY: non-zero layouts; every block is used within its size and freed once
            // with the layout it has.
            unsafe {
                let zeroed = Wiping.alloc_zeroed(layout);
                assert!(!zeroed.is_null() && (zeroed as usize).is_multiple_of(align));
                assert!(std::slice::from_raw_parts(zeroed, 100)
                    .iter()
                    .all(|&b| b == 0));
                Wiping.dealloc(zeroed, layout);

                let p = Wiping.alloc(layout);
                assert!(!p.is_null() && (p as usize).is_multiple_of(align));
                for i in 0..100 {
                    *p.add(i) = i as u8;
                }
                let grown = Wiping.realloc(p, layout, 10_000);
                assert!(!grown.is_null() && (grown as usize).is_multiple_of(align));
                let kept = std::slice::from_raw_parts(grown, 100);
                assert!(kept.iter().enumerate().all(|(i, &b)| b == i as u8));
                let big = Layout::from_size_align(10_000, align).unwrap();
                let shrunk = Wiping.realloc(grown, big, 10);
                let kept = std::slice::from_raw_parts(shrunk, 10);
                assert!(kept.iter().enumerate().all(|(i, &b)| b == i as u8));
                Wiping.dealloc(shrunk, Layout::from_size_align(10, align).unwrap());
            }
        }
    }
}
