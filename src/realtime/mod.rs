//! The realtime adapter: Azure OpenAI Realtime (preview and GA) and OpenAI Realtime over
//! WebSocket, implementing `consultant_actors::ports::RealtimeConnector`.

pub mod client;
pub mod config;
pub mod protocol;
mod session_tasks;
pub mod stats;

pub use client::{AzureRealtimeClient, ProbeFailure};
pub use config::{Eagerness, NoiseReduction, Protocol, RealtimeConfig, RealtimeFlavour, TurnDetection, UnknownFlavour, UnknownName, VadSettings};
pub use stats::{RealtimeStats, RealtimeStatsSnapshot};
