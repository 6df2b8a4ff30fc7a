//! Steward's timeouts (docs/STEWARD.md TM1–TM3): how long a replica waits for progress
//! before it changes its site's representative (`Local_T`) or the leader site
//! (`Global_T`), and why their ratios are what they are.
//!
//! With `K` the base and `gv` the global view, `T3 = K · 2^⌈gv/S⌉` is `Global_T`,
//! `T2 = T3 / (f + 3)` is `Local_T` at the leader site and `T1 = T2 / (f + 2)` is `Local_T`
//! at every other site (TM3). So `T2 ≥ (f + 2) · T1`: a leader-site representative's term
//! covers `f + 1` full terms at every other site, one of them correct; and
//! `T3 ≥ (f + 3) · T2`: each global view holds at least two correct leader-site terms
//! (TM2). Timeouts double every `S` global views, so that after a stretch of asynchrony
//! they outgrow the network's delays. Both timers restart when the replica executes a new
//! update (TM1); the roles that use them apply that.

use crate::config::ConfigError;
use crate::steward::payload::GlobalView;

/// The shortest `T1` accepted: a local view must outlast a few LAN round trips and a
/// threshold signature.
pub const LOCAL_TIMEOUT_MIN_US: u64 = 10_000;

/// The timeouts of a system of `sites` sites whose largest has `f` faulty replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    base_us: u64,
    f: u64,
    sites: u64,
}

impl Timeouts {
    /// TM3 with base `K = base_us`; refused when `T1` in global view 0 would be shorter
    /// than [`LOCAL_TIMEOUT_MIN_US`] or there are no sites.
    pub fn new(base_us: u64, f: usize, sites: usize) -> Result<Self, ConfigError> {
        if sites == 0 {
            return Err(ConfigError::Invalid { field: "sites", reason: "at least one site is needed".into() });
        }
        let timeouts = Timeouts { base_us, f: f as u64, sites: sites as u64 };
        let local_us = timeouts.local_us(0);
        if local_us < LOCAL_TIMEOUT_MIN_US {
            let divisor = (timeouts.f + 3) * (timeouts.f + 2);
            return Err(ConfigError::Invalid {
                field: "global_timeout_base_us",
                reason: format!(
                    "{base_us} µs gives a local timeout T1 = K / ((f + 3)(f + 2)) = K / {divisor} of {local_us} µs, \
                     below the {LOCAL_TIMEOUT_MIN_US} µs minimum (TM3): use at least {} µs",
                    LOCAL_TIMEOUT_MIN_US * divisor
                ),
            });
        }
        Ok(timeouts)
    }

    /// `Global_T` (T3) in global view `gv`: `K · 2^⌈gv/S⌉`, saturating.
    pub fn global_us(&self, gv: GlobalView) -> u64 {
        let doublings = gv.div_ceil(self.sites).min(63) as u32;
        self.base_us.saturating_mul(1u64 << doublings)
    }

    /// `Local_T` at the leader site (T2): `T3 / (f + 3)`.
    pub fn leader_local_us(&self, gv: GlobalView) -> u64 {
        self.global_us(gv) / (self.f + 3)
    }

    /// `Local_T` at a non-leader site (T1): `T2 / (f + 2)`.
    pub fn local_us(&self, gv: GlobalView) -> u64 {
        self.leader_local_us(gv) / (self.f + 2)
    }

    /// `Local_T` of a replica in global view `gv`, at the leader site or not.
    pub fn local_timeout_us(&self, gv: GlobalView, at_leader_site: bool) -> u64 {
        if at_leader_site {
            self.leader_local_us(gv)
        } else {
            self.local_us(gv)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TM2: `T2 ≥ (f + 2) · T1` and `T3 ≥ (f + 3) · T2` for every `f`, `S` and global view.
    #[test]
    fn tm2_each_timeout_covers_the_terms_below_it() {
        for f in 1..=5 {
            for sites in 1..=7 {
                let timeouts = Timeouts::new(2_000_000_000, f, sites).expect("valid");
                for gv in 0..40 {
                    let (t1, t2, t3) = (timeouts.local_us(gv), timeouts.leader_local_us(gv), timeouts.global_us(gv));
                    assert!(t2 >= (f as u64 + 2) * t1, "f {f}, S {sites}, gv {gv}: T2 {t2} < (f+2) T1 {t1}");
                    assert!(t3 >= (f as u64 + 3) * t2, "f {f}, S {sites}, gv {gv}: T3 {t3} < (f+3) T2 {t2}");
                    assert_eq!(timeouts.local_timeout_us(gv, true), t2);
                    assert_eq!(timeouts.local_timeout_us(gv, false), t1);
                }
            }
        }
    }

    /// TM3: the timeouts double every `S` global views, and `T3 = K` in global view 0.
    #[test]
    fn tm3_timeouts_double_every_s_global_views() {
        let timeouts = Timeouts::new(1_000_000, 1, 5).expect("valid");
        assert_eq!(timeouts.global_us(0), 1_000_000);
        assert_eq!((1..=5).map(|gv| timeouts.global_us(gv)).collect::<Vec<_>>(), [2_000_000; 5]);
        assert_eq!((6..=10).map(|gv| timeouts.global_us(gv)).collect::<Vec<_>>(), [4_000_000; 5]);
        assert_eq!(timeouts.leader_local_us(0), 250_000);
        assert_eq!(timeouts.local_us(0), 83_333);
        assert_eq!(timeouts.global_us(u64::MAX), u64::MAX, "saturates, never wraps");
    }

    /// A base that makes `T1` too short is refused at configuration load, naming the field
    /// and the smallest base that works.
    #[test]
    fn a_base_too_short_for_the_local_timeout_is_refused_with_the_field_named() {
        let error = Timeouts::new(100_000, 1, 5).expect_err("T1 would be 8 ms");
        let text = error.to_string();
        assert!(text.contains("global_timeout_base_us") && text.contains("120000"), "{text}");
        assert!(Timeouts::new(120_000, 1, 5).is_ok());
        assert!(Timeouts::new(1_000_000, 1, 0).is_err());
    }
}
