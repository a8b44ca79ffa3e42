//! kiln-tuner: search, validation, timing and tuned artifacts.

pub mod search;
