//! Consultation settings the actors need (filled from `config.toml` by the `consultant` crate).

use std::time::Duration;

use crate::anketa::AnketaField;

#[derive(Clone, Debug)]
pub struct ConsultationSettings {
    /// System prompt (instructions) for the realtime model.
    pub system_prompt: String,
    /// Instruction for the first response: the agent greets first.
    pub greeting_instruction: String,
    /// Instruction sent `wrapup_before` the limit so the agent starts to wrap up.
    pub wrapup_instruction: String,
    /// Instruction for the polite goodbye at the limit.
    pub goodbye_instruction: String,
    pub language: String,
    pub max_duration: Duration,
    pub wrapup_before: Duration,
    /// Extract the anketa every this many dialogue messages.
    pub extraction_interval: usize,
    pub anketa_fields: Vec<AnketaField>,
    /// How long to wait for the goodbye response before ending anyway.
    pub goodbye_grace: Duration,
    /// How long finalize waits for the final extraction.
    pub final_extraction_timeout: Duration,
    /// How long a user message may wait for its (asynchronous) transcript before the
    /// dialogue moves on without it.
    pub transcript_wait: Duration,
    pub restart: crate::restart::RestartPolicy,
    pub connect: crate::realtime::ConnectPolicy,
    /// Caller audio held while the realtime link is down (24 kHz mono samples).
    pub caller_gap_buffer: Duration,
    /// Proactively reconnect the realtime session after this long (before the provider's
    /// session limit), at a moment when no response is playing.
    pub realtime_recycle_after: Option<Duration>,
}

impl ConsultationSettings {
    /// Settings for tests and examples: short, Russian, the Python module's defaults.
    pub fn for_tests(fields: Vec<AnketaField>) -> Self {
        Self {
            system_prompt: "Ты — вежливый голосовой консультант.".into(),
            greeting_instruction: "Поздоровайся и спроси, как зовут клиента.".into(),
            wrapup_instruction: "Время консультации подходит к концу: подведи итог.".into(),
            goodbye_instruction: "Вежливо попрощайся: время консультации истекло.".into(),
            language: "ru".into(),
            max_duration: Duration::from_secs(1800),
            wrapup_before: Duration::from_secs(120),
            extraction_interval: 6,
            anketa_fields: fields,
            goodbye_grace: Duration::from_secs(15),
            final_extraction_timeout: Duration::from_secs(60),
            transcript_wait: Duration::from_secs(5),
            restart: crate::restart::RestartPolicy::default(),
            connect: crate::realtime::ConnectPolicy::default(),
            caller_gap_buffer: Duration::from_secs(2),
            realtime_recycle_after: None,
        }
    }
}
