//! Replays the minimised fuzz corpus and every crash input found so far (`tests/fuzz_regressions/`):
//! decode must not panic, and what it accepts must encode and decode again to the same position.

mod common;

use std::fs;
use std::path::Path;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_regressions");

#[test]
fn fuzz_regressions_stay_fixed() {
    let mut files: Vec<_> = fs::read_dir(DIR)
        .unwrap_or_else(|e| panic!("{DIR}: {e}"))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {DIR}");
    for path in &files {
        let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let outcome = std::panic::catch_unwind(|| common::check_stable(&bytes));
        assert!(outcome.is_ok(), "input {name} fails");
    }
}
