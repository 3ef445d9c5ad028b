//! Image sequences.
