//! kiln-tuner: search, validation, timing and tuned artifacts.
