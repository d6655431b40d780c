//! How hard a secret buffer insists on locked pages, taken from the calling thread.

use std::cell::Cell;

use crate::error::{Error, Result};

/// How hard a secret buffer insists on locked, dump-excluded pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Do not lock the pages (they are still dump-excluded where possible, and zeroed).
    Off,
    /// Lock when the OS allows; otherwise carry on with unlocked pages (and count them).
    #[default]
    BestEffort,
    /// Refuse ([`Error::Memory`]) a mapping that cannot be locked and dump-excluded, before
    /// anything is written to it.
    Require,
}

impl Policy {
    /// `"off"`, `"best_effort"` or `"require"`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "off" => Some(Policy::Off),
            "best_effort" => Some(Policy::BestEffort),
            "require" => Some(Policy::Require),
            _ => None,
        }
    }

    /// [`Policy::parse`] of a caller's `secure_memory=` argument: an unknown name is an
    /// [`Error::Value`] naming the three.
    pub fn named(name: &str) -> Result<Self> {
        Self::parse(name).ok_or_else(|| {
            Error::Value(format!(
                "secure_memory must be 'off', 'best_effort' or 'require', not {name:?}"
            ))
        })
    }

    /// The name [`Policy::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Off => "off",
            Policy::BestEffort => "best_effort",
            Policy::Require => "require",
        }
    }
}

thread_local! {
    static POLICY: Cell<Policy> = const { Cell::new(Policy::BestEffort) };
}

/// The policy of buffers made on this thread now.
pub fn policy() -> Policy {
    POLICY.with(Cell::get)
}

/// Run `f` with buffers made on this thread under `policy` (restored afterwards, also on
/// panic). Buffers keep the policy they were made with when they grow later.
pub fn with_policy<T>(policy: Policy, f: impl FnOnce() -> T) -> T {
    struct Restore(Policy);
    impl Drop for Restore {
        fn drop(&mut self) {
            POLICY.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(POLICY.with(|p| p.replace(policy)));
    f()
}

/// One secret step: `f` under `policy` (see [`with_policy`]), then [`scrub`](super::scrub) of
/// the registers and stack it used, also when it failed.
pub fn secret_step<T>(policy: Policy, f: impl FnOnce() -> T) -> T {
    let out = with_policy(policy, f);
    super::scrub();
    out
}
