//! One module per CLI command.

pub mod config;
pub mod console;
pub mod doctor;
pub mod loadtest;
pub mod room;
pub mod sessions;
pub mod token;
pub mod web;
pub mod worker;
pub mod simulate;
