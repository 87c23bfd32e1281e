//! The `consultant` worker: the edges of the system (adapters implementing the actors' ports
//! over real protocols), configuration, logging and the CLI. The brain lives in the
//! `consultant-actors` crate.

pub mod audio;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod deepseek;
pub mod dev_server;
pub mod doctor;
pub mod entrypoint;
pub mod health;
pub mod livekit;
pub mod loadtest;
pub mod logging;
pub mod metrics;
pub mod process_stats;
pub mod realtime;
pub mod room;
pub mod secret;
pub mod store;
pub mod tls;
pub mod web;
pub mod worker;
