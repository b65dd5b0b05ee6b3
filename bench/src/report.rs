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
        let mut secs: Vec<f64> = self.runs.iter().map(Duration::as_secs_f64).collect();
        secs.sort_by(f64::total_cmp);
        match secs.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => secs[n / 2],
            n => (secs[n / 2 - 1] + secs[n / 2]) / 2.0,
        }
    }

    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.seconds()
    }
}

/// A throughput ratio with the goal it must reach.
pub struct Ratio {
    pub name: String,
    pub value: f64,
    pub goal: f64,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
