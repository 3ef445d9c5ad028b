//! posed library.
