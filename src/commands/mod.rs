//! One module per CLI command.

pub mod console;
pub mod sessions;
