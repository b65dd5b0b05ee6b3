//! Latency percentiles, goal verdicts and the printed tables of the `live` benchmark.

/// Percentiles of a set of latencies, in milliseconds (nearest rank).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of `micros` (sorted in place); `None` when empty.
    pub fn of_micros(micros: &mut [u32]) -> Option<Percentiles> {
        if micros.is_empty() {
            return None;
        }
        micros.sort_unstable();
        let ms = |us: u32| f64::from(us) / 1000.0;
        Some(Percentiles {
            count: micros.len(),
            p50: ms(nearest_rank(micros, 50.0)),
            p95: ms(nearest_rank(micros, 95.0)),
            p99: ms(nearest_rank(micros, 99.0)),
            max: ms(micros[micros.len() - 1]),
        })
    }
}

/// The nearest-rank percentile `p` (0–100] of sorted, non-empty `sorted`: the smallest value with at least
/// p % of the values at or below it.
pub fn nearest_rank(sorted: &[u32], p: f64) -> u32 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// One goal: a figure, its limit, and which side of the limit is good.
pub struct Goal {
    pub name: String,
    pub value: f64,
    pub limit: f64,
    /// `true`: the value must be at most the limit; `false`: at least.
    pub at_most: bool,
    pub unit: &'static str,
}

impl Goal {
    pub fn at_most(name: impl Into<String>, value: f64, limit: f64, unit: &'static str) -> Goal {
        Goal { name: name.into(), value, limit, at_most: true, unit }
    }

    pub fn at_least(name: impl Into<String>, value: f64, limit: f64, unit: &'static str) -> Goal {
        Goal { name: name.into(), value, limit, at_most: false, unit }
    }

    pub fn met(&self) -> bool {
        if self.value.is_nan() {
            return false;
        }
        if self.at_most {
            self.value <= self.limit
        } else {
            self.value >= self.limit
        }
    }

    /// `met (margin …)` or `MISSED by …`.
    pub fn verdict(&self) -> String {
        if self.value.is_nan() {
            return "MISSED (no measurement)".to_owned();
        }
        let gap = (self.value - self.limit).abs();
        let relative =
            if self.limit != 0.0 { format!(", {:.0} %", 100.0 * gap / self.limit.abs()) } else { String::new() };
        if self.met() {
            format!("met (margin {} {}{relative})", trim(gap), self.unit)
        } else {
            format!("MISSED by {} {}{relative}", trim(gap), self.unit)
        }
    }

    pub fn line(&self) -> String {
        let sign = if self.at_most { "<=" } else { ">=" };
        format!(
            "  {:<40} {:>10} {:<3} goal {sign} {:<8} {}",
            self.name,
            trim(self.value),
            self.unit,
            trim(self.limit),
            self.verdict()
        )
    }
}

/// A number with as many decimals as its size needs.
pub fn trim(x: f64) -> String {
    if x.is_nan() {
        "n/a".to_owned()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The header of a latency table.
pub fn latency_header() -> String {
    format!("  {:<34} {:>9} {:>8} {:>8} {:>8} {:>8}", "latency (ms)", "samples", "p50", "p95", "p99", "max")
}

/// One latency row; `-` when there was nothing to measure.
pub fn latency_row(name: &str, p: Option<Percentiles>) -> String {
    match p {
        Some(p) => format!("  {:<34} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.2}", name, p.count, p.p50, p.p95, p.p99, p.max),
        None => format!("  {name:<34} {:>9} {:>8} {:>8} {:>8} {:>8}", 0, "-", "-", "-", "-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut values: Vec<u32> = (1..=100).rev().map(|ms| ms * 1000).collect();
        let p = Percentiles::of_micros(&mut values).unwrap();
        assert_eq!(p, Percentiles { count: 100, p50: 50.0, p95: 95.0, p99: 99.0, max: 100.0 });
        let mut one = vec![7_500];
        let p = Percentiles::of_micros(&mut one).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (7.5, 7.5, 7.5));
        assert!(Percentiles::of_micros(&mut []).is_none());
        // 1,000 values: p99 is the 990th, not the largest.
        let sorted: Vec<u32> = (1..=1000).collect();
        assert_eq!(nearest_rank(&sorted, 99.0), 990);
        assert_eq!(nearest_rank(&sorted, 100.0), 1000);
        assert_eq!(nearest_rank(&sorted, 0.0), 1);
    }

    #[test]
    fn goals_say_met_or_by_how_much_they_were_missed() {
        let p99 = Goal::at_most("commit->receipt p99", 25.0, 20.0, "ms");
        assert!(!p99.met());
        assert_eq!(p99.verdict(), "MISSED by 5.00 ms, 25 %");
        let rss = Goal::at_most("RSS", 120.0, 150.0, "MB");
        assert_eq!(rss.verdict(), "met (margin 30.0 MB, 20 %)");
        let delivered = Goal::at_least("delivered", 100.0, 100.0, "%");
        assert!(delivered.met());
        assert!(!Goal::at_least("delivered", 99.5, 100.0, "%").met());
        assert!(!Goal::at_most("none", f64::NAN, 1.0, "ms").met());
        assert!(p99.line().contains("goal <= 20.0"), "{}", p99.line());
    }
}
