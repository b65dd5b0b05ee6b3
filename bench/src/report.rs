//! Medians of repeated runs and the printed result table.

use std::time::Duration;

/// All timed runs of one route.
pub struct Measurement {
    pub route: String,
    pub rows: u64,
    pub runs: Vec<Duration>,
}

impl Measurement {
    pub fn new(route: impl Into<String>, rows: u64) -> Measurement {
        Measurement { route: route.into(), rows, runs: Vec::new() }
    }

    /// The median run time in seconds.
    pub fn seconds(&self) -> f64 {
        median(&self.runs.iter().map(Duration::as_secs_f64).collect::<Vec<_>>())
    }

    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds()
    }
}

/// A throughput ratio with the goal it must reach.
pub struct Ratio {
    pub name: String,
    /// Ratio of the routes' median rows/s: the figure judged against the goal.
    pub value: f64,
    pub goal: f64,
    /// The same ratio within each repetition (see [`paired_ratios`]).
    pub per_run: Vec<f64>,
}

/// Rows/s of `route` over rows/s of the fastest of `baselines`, repetition by repetition. All routes of one
/// repetition run back to back, so a slow phase of a shared machine slows both sides of each ratio; the
/// spread of these ratios says how much the ratio of medians can be trusted.
pub fn paired_ratios(route: &Measurement, baselines: &[&Measurement]) -> Vec<f64> {
    (0..route.runs.len())
        .filter_map(|rep| {
            let own = route.rows as f64 / route.runs[rep].as_secs_f64();
            let best = baselines
                .iter()
                .filter_map(|b| b.runs.get(rep).map(|d| b.rows as f64 / d.as_secs_f64()))
                .max_by(f64::total_cmp)?;
            Some(own / best)
        })
        .collect()
}

/// The median of `values` (the mean of the middle two for an even count); NaN when there are none.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn print_table(measurements: &[&Measurement]) {
    let width = measurements.iter().map(|m| m.route.len()).max().unwrap_or(5).max(5);
    println!("{:<width$}  {:>8}  {:>9}  {:>10}  runs (s)", "route", "rows", "seconds", "rows/s");
    println!("{}", "-".repeat(width + 56));
    for m in measurements {
        let runs: Vec<String> = m.runs.iter().map(|d| format!("{:.3}", d.as_secs_f64())).collect();
        println!(
            "{:<width$}  {:>8}  {:>9.3}  {:>10.0}  {}",
            m.route,
            m.rows,
            m.seconds(),
            m.rows_per_second(),
            runs.join(" / ")
        );
    }
}

pub fn print_ratios(ratios: &[Ratio]) {
    for r in ratios {
        let verdict = if r.value >= r.goal { "met" } else { "NOT met" };
        println!("{:<36} {:>6.3}   goal >= {:.1}   {verdict}", r.name, r.value, r.goal);
        if let (Some(low), Some(high)) =
            (r.per_run.iter().copied().min_by(f64::total_cmp), r.per_run.iter().copied().max_by(f64::total_cmp))
        {
            println!(
                "{:<36} {:>6.3}   (median of {} per-repetition ratios, {low:.3}..{high:.3})",
                "",
                median(&r.per_run),
                r.per_run.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_ratios_compare_within_each_repetition_against_the_fastest_baseline() {
        let mut route = Measurement::new("route", 100);
        route.runs = [1.0, 2.0].map(Duration::from_secs_f64).to_vec();
        let mut slow = Measurement::new("slow", 100);
        slow.runs = [4.0, 4.0].map(Duration::from_secs_f64).to_vec();
        let mut fast = Measurement::new("fast", 100);
        fast.runs = [0.5, 8.0].map(Duration::from_secs_f64).to_vec();
        let ratios = paired_ratios(&route, &[&slow, &fast]);
        assert_eq!(ratios.len(), 2);
        assert!((ratios[0] - 0.5).abs() < 1e-9, "{ratios:?}"); // fast won repetition 1
        assert!((ratios[1] - 2.0).abs() < 1e-9, "{ratios:?}"); // slow won repetition 2
        assert!((median(&ratios) - 1.25).abs() < 1e-9);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        let mut m = Measurement::new("x", 10);
        m.runs = [3.0, 1.0, 2.0].map(Duration::from_secs_f64).to_vec();
        assert!((m.seconds() - 2.0).abs() < 1e-9);
        m.runs.push(Duration::from_secs(4));
        assert!((m.seconds() - 2.5).abs() < 1e-9);
        assert!((m.rows_per_second() - 4.0).abs() < 1e-9);
    }
}
