//! Audio helpers: a real-time paced agent-audio recorder, resampling to the realtime rate,
//! and WAV input/output.

pub mod player;
pub mod resample;
pub mod wav;

pub use player::PacedRecorder;

/// The realtime audio rate: PCM16 mono 24 kHz.
pub const RATE: u64 = 24_000;
