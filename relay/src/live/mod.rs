//! (placeholder)

pub mod directus;
