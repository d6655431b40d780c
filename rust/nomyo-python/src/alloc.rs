//! A global allocator that wipes every block before it is freed.

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
