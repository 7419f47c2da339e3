//! Wall-clock measurement: run a closure several times, keep the median.

use std::time::Instant;

/// Runs `f` `repeat` times (at least once) and returns the median wall time in
/// seconds, with the last result of `f`.
pub(crate) fn median_secs<T>(repeat: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::with_capacity(repeat.max(1));
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let started = Instant::now();
        let out = std::hint::black_box(f());
        times.push(started.elapsed().as_secs_f64());
        last = Some(out);
    }
    (median(&mut times), last.expect("ran at least once"))
}

/// The median of `values` (the mean of the two middle values for an even count).
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        f64::midpoint(values[mid - 1], values[mid])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert!((median(&mut [3.0, 1.0, 2.0]) - 2.0).abs() < 1e-12);
        assert!((median(&mut [4.0, 1.0, 3.0, 2.0]) - 2.5).abs() < 1e-12);
    }

    #[test]
    fn runs_repeat_times() {
        let mut n = 0;
        let (secs, last) = median_secs(5, || {
            n += 1;
            n
        });
        assert_eq!((n, last), (5, 5));
        assert!(secs >= 0.0);
    }
}
