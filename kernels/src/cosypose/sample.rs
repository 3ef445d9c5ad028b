//! CosyPose's deterministic point selection for crops and auto-depth:
//! `np.random.RandomState(0).choice(n, 2000, replace=False)` (spec A.6), reproduced
//! exactly: numpy's legacy `RandomState` is MT19937 seeded with `init_genrand(seed)`, and
//! `choice` without replacement is the first `k` entries of `permutation(n)`, numpy's
//! legacy Fisher-Yates shuffle drawing with masked rejection (`random_interval`).

use crate::KernelError;

/// Points CosyPose projects for the crop box and auto-depth.
pub const CROP_POINTS: usize = 2000;

/// The Mersenne Twister MT19937 (32-bit), as numpy's legacy `RandomState` runs it.
pub struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    /// `init_genrand(seed)`: what `RandomState(seed)` does for an integer seed.
    pub fn new(seed: u32) -> Mt19937 {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let previous = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(previous ^ (previous >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, index: 624 }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..624 {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % 624] & LOWER);
            let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 == 1 {
                next ^= MATRIX_A;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    /// The next 32-bit output (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// numpy's legacy `random_interval(max)`: uniform in `0..=max` by masked rejection.
    /// Only 32-bit draws are needed: posed never shuffles more than 2^32 points.
    pub fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        mask |= mask >> 1;
        mask |= mask >> 2;
        mask |= mask >> 4;
        mask |= mask >> 8;
        mask |= mask >> 16;
        loop {
            let value = self.next_u32() & mask;
            if value <= max {
                return value;
            }
        }
    }
}

/// `np.random.RandomState(seed).choice(n, k, replace=False)`: `k` distinct indices of
/// `0..n`, written to `out[..k]`. `scratch` must hold `n` entries (the permutation).
pub fn choice_without_replacement(
    seed: u32,
    n: usize,
    scratch: &mut [u32],
    out: &mut [u32],
) -> Result<(), KernelError> {
    let k = out.len();
    if k > n {
        return Err(KernelError::LimitExceeded {
            what: "points to choose",
            limit: n,
            found: k,
        });
    }
    let n_u32 = u32::try_from(n).map_err(|_| KernelError::LimitExceeded {
        what: "points to shuffle",
        limit: u32::MAX as usize,
        found: n,
    })?;
    if scratch.len() < n {
        return Err(KernelError::SizeMismatch {
            what: "permutation scratch",
            expected: n,
            found: scratch.len(),
        });
    }
    let permutation = &mut scratch[..n];
    for (slot, i) in permutation.iter_mut().zip(0..n_u32) {
        *slot = i;
    }
    numpy_shuffle(&mut Mt19937::new(seed), permutation);
    out.copy_from_slice(&permutation[..k]);
    Ok(())
}

/// numpy's legacy `RandomState.shuffle` continuing on `rng`: Fisher-Yates from the end,
/// each swap partner drawn with `random_interval`. `permutation(n)` is this applied to
/// `0..n`. Slices longer than 2^32 are shuffled only in their first 2^32 entries (numpy
/// would draw 64-bit values there; posed never shuffles that many).
pub fn numpy_shuffle<T>(rng: &mut Mt19937, values: &mut [T]) {
    let n = u32::try_from(values.len()).unwrap_or(u32::MAX);
    for i in (1..n).rev() {
        let j = rng.interval(i);
        values.swap(i as usize, j as usize);
    }
}

/// `rng.choice(np.arange(n), size = out.len())` (with replacement) on a legacy
/// `RandomState`: numpy draws each index with `randint(0, n)`, i.e. `random_interval(n -
/// 1)` on 32-bit outputs for any `n` up to 2^32. CosyPose pads shorter meshes with such
/// indices (`pad_stack_tensors`, one `RandomState(0)` across all objects).
pub fn choice_with_replacement(
    rng: &mut Mt19937,
    n: usize,
    out: &mut [u32],
) -> Result<(), KernelError> {
    if n == 0 {
        return Err(KernelError::Empty {
            what: "population to choose from",
        });
    }
    let max = u32::try_from(n - 1).map_err(|_| KernelError::LimitExceeded {
        what: "population to choose from",
        limit: u32::MAX as usize,
        found: n,
    })?;
    for slot in out {
        *slot = rng.interval(max);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by numpy 2.4.6 (`tools/requirements-onnx.txt`'s venv).
    #[test]
    fn matches_numpy_legacy_random_state() {
        assert_eq!(Mt19937::new(0).next_u32(), 2_357_136_044);

        let choose = |n: usize, k: usize| {
            let mut scratch = vec![0u32; n];
            let mut out = vec![0u32; k];
            choice_without_replacement(0, n, &mut scratch, &mut out).expect("choice");
            out
        };
        // np.random.RandomState(0).choice(10, 5, replace=False)
        assert_eq!(choose(10, 5), [2, 8, 4, 9, 1]);
        // np.random.RandomState(0).permutation(7)
        assert_eq!(choose(7, 7), [6, 2, 1, 3, 0, 5, 4]);
        // np.random.RandomState(0).choice(3000, 8, replace=False)
        assert_eq!(
            choose(3000, 8),
            [311, 1025, 1587, 2941, 2980, 2078, 2281, 720]
        );
        // choice(5000, 2000) and choice(70000, 2000): first five, last five, sum.
        for (n, first, last, sum) in [
            (
                5000,
                [398, 3833, 4836, 4572, 636],
                [3138, 191, 3294, 3073, 361],
                5_018_606u64,
            ),
            (
                70_000,
                [10840, 56267, 14849, 62726, 47180],
                [68335, 39665, 21457, 40810, 68394],
                69_811_567,
            ),
        ] {
            let chosen = choose(n, CROP_POINTS);
            assert_eq!(chosen[..5], first);
            assert_eq!(chosen[CROP_POINTS - 5..], last);
            assert_eq!(chosen.iter().map(|&i| u64::from(i)).sum::<u64>(), sum);
        }
    }

    /// `np.random.RandomState(0).choice(np.arange(n), size=6)`, numpy 2.4.6.
    const NUMPY_CHOICE_10_6: [u32; 6] = [5, 0, 3, 3, 7, 9];
    const NUMPY_CHOICE_3785_6: [u32; 6] = [2732, 2607, 1653, 3264, 835, 763];

    #[test]
    fn choice_with_replacement_matches_numpy() {
        let draw = |n: usize, k: usize| {
            let mut rng = Mt19937::new(0);
            let mut out = vec![0u32; k];
            choice_with_replacement(&mut rng, n, &mut out).expect("choice");
            out
        };
        assert_eq!(draw(10, 6), NUMPY_CHOICE_10_6);
        assert_eq!(draw(3785, 6), NUMPY_CHOICE_3785_6);
        let mut rng = Mt19937::new(0);
        assert!(choice_with_replacement(&mut rng, 0, &mut [0; 2]).is_err());
    }

    #[test]
    fn bad_sizes_are_errors() {
        let mut scratch = vec![0u32; 4];
        let mut out = vec![0u32; 5];
        assert!(choice_without_replacement(0, 4, &mut scratch, &mut out).is_err());
        let mut out = vec![0u32; 2];
        assert!(choice_without_replacement(0, 8, &mut scratch, &mut out).is_err());
        assert!(choice_without_replacement(0, 4, &mut scratch, &mut out).is_ok());
    }
}
