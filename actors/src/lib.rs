//! The supervised actor system of the consultant worker.
//!
//! This crate is the brain: it owns the consultation logic, the supervision tree and the
//! session state, and talks to the outside world only through the small port traits in
//! [`ports`]. It contains no network or disk code; `src/` of the `consultant` package
//! implements the ports over the real protocols (Azure/OpenAI Realtime, SQLite, DeepSeek,
//! LiveKit) and wires everything together.
//!
//! Supervision tree:
//! ```text
//! WorkerSupervisor
//!  '- Consultation <session_id>    one per job (VoiceHandler session)
//!      |- Room        (LiveKit media: caller audio in, agent voice out; rejoined on failure)
//!      |- Realtime    (restarted on failure, dialogue replayed)
//!      |- Persistence (every final dialogue message, status, anketa)
//!      '- Extraction  (anketa every N messages and at the end)
//! ```

pub mod anketa;
pub mod caller_audio;
pub mod consultation;
pub mod dialogue;
pub mod extraction;
pub mod finalize;
pub mod handler;
pub mod persistence;
pub mod ports;
pub mod provenance;
pub mod realtime;
pub mod restart;
pub mod session;
pub mod settings;
pub mod supervisor;
pub mod sweep;
pub mod tasks;
pub mod telemetry;
pub mod turns;

pub use anketa::{Anketa, AnketaField, FieldKind};
pub use dialogue::{DialogueMessage, Role, SessionId, SessionIdError};
pub use handler::{SessionOutcome, VoiceHandler};
pub use provenance::{Evidence, ExtractedAnketa, FieldProvenance, PastValue, Provenance};
pub use session::{SessionStatus, VoiceConsultationSession};
pub use settings::ConsultationSettings;
