//! Probabilistic early refresh (XFetch; Vattani, Chierichetti and Lowenstein, "Optimal
//! Probabilistic Cache Stampede Prevention", VLDB 2015).
//!
//! A reader refreshes a value before it expires when `now − δ·β·ln(u) ≥ expiry`, with `u`
//! uniform in `(0, 1]` and δ the time the last load took. Far from expiry that almost never
//! happens; as expiry nears, and the more often the key is read, it becomes near certain that
//! some reader refreshes it first, so a hot key is reloaded once, by one reader, and never
//! expires under load. A slow load (large δ) starts earlier. β scales the whole thing: 1 is
//! the paper's optimum, 0 turns it off.

/// Whether a reader at `now_us` should refresh a value fresh until `fresh_until_ms` whose
/// load took `delta_us`, given the draw `unit` in `(0, 1]`.
pub(crate) fn refresh_early(
    now_us: u64,
    fresh_until_ms: u64,
    delta_us: u32,
    beta: f64,
    unit: f64,
) -> bool {
    let expiry_us = fresh_until_ms.saturating_mul(1_000);
    if now_us >= expiry_us {
        return true;
    }
    if beta <= 0.0 || !(unit > 0.0 && unit <= 1.0) {
        return false;
    }
    let head_start = f64::from(delta_us) * beta * -unit.ln();
    now_us as f64 + head_start >= expiry_us as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_early_with_beta_zero_or_a_draw_of_one() {
        assert!(!refresh_early(0, 1_000, 1_000_000, 0.0, 0.000_001));
        // ln(1) = 0: no head start at all.
        assert!(!refresh_early(999_999, 1_000, 1_000_000, 1.0, 1.0));
        assert!(refresh_early(1_000_000, 1_000, 1_000_000, 1.0, 1.0));
    }

    #[test]
    fn the_head_start_is_delta_times_beta_times_minus_ln_u() {
        // δ = 50 ms, β = 1, u = e^-2: a head start of 100 ms.
        let u = (-2.0_f64).exp();
        let expiry_ms = 10_000;
        assert!(refresh_early(9_900_001, expiry_ms, 50_000, 1.0, u));
        assert!(!refresh_early(9_899_000, expiry_ms, 50_000, 1.0, u));
        // β = 2 doubles it.
        assert!(refresh_early(9_800_001, expiry_ms, 50_000, 2.0, u));
    }

    #[test]
    fn the_chance_rises_as_expiry_nears() {
        // With u uniform, P(early) = exp(-gap / (δβ)).
        let delta_us = 10_000;
        let expiry_ms = 1_000;
        let draws: Vec<f64> = (1..=10_000).map(|i| f64::from(i) / 10_000.0).collect();
        let share = |now_us: u64| {
            draws
                .iter()
                .filter(|&&u| refresh_early(now_us, expiry_ms, delta_us, 1.0, u))
                .count() as f64
                / draws.len() as f64
        };
        let far = share(900_000); // 10 δ before expiry
        let near = share(990_000); // 1 δ before
        assert!(far < 0.001, "{far}");
        assert!((near - (-1.0_f64).exp()).abs() < 0.01, "{near}");
    }
}
