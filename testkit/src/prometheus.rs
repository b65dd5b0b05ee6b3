//! Reading the relay's `/metrics` (Prometheus text format): one sample by its exact name and labels, or the
//! sum of every label set of a name.

/// The value of one sample, written exactly as in the text (`name` or `name{label="value",…}`); `None`
/// when it is absent. A value that is not a number is an error, not a zero.
pub fn sample(text: &str, sample: &str) -> Result<Option<f64>, String> {
    match text.lines().find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' '))) {
        None => Ok(None),
        Some(value) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| format!("metric sample {sample}: {value:?} is not a number: {e}")),
    }
}

/// The sum of every sample of `name`, whatever its labels (`name` alone, or `name{…}` with the labels
/// given, counts that one sample). Lines that are not samples of `name` (`name_other`, comments) are
/// skipped.
pub fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str =
        "# HELP x\nx_count{a=\"1\"} 2\nx_count{a=\"2\"} 3\nx_count_other 9\nx_count 1\nbad{a=\"1\"} NaNx\n";

    #[test]
    fn sums_cover_every_label_set_and_nothing_else() {
        assert_eq!(sum(TEXT, "x_count"), 6.0);
        assert_eq!(sum(TEXT, "x_count{a=\"2\"}"), 3.0);
        assert_eq!(sum(TEXT, "absent"), 0.0);
    }

    #[test]
    fn a_sample_is_found_by_its_exact_labels() {
        assert_eq!(sample(TEXT, "x_count{a=\"1\"}"), Ok(Some(2.0)));
        assert_eq!(sample(TEXT, "x_count"), Ok(Some(1.0)));
        assert_eq!(sample(TEXT, "x_count{a=\"3\"}"), Ok(None));
        assert!(sample(TEXT, "bad{a=\"1\"}").is_err());
    }
}
