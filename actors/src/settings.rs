//! Consultation settings the actors need (filled from `config.toml` by the `consultant` crate).

use std::time::Duration;

use crate::anketa::AnketaField;

#[derive(Clone, Debug)]
pub struct ConsultationSettings {
    /// System prompt (instructions) for the realtime model.
    pub system_prompt: String,
    /// Instruction for the first response: the agent greets first.
    pub greeting_instruction: String,
    /// Instruction instead of the greeting when the consultation resumes from the store (its
    /// worker died; the caller stayed): the agent says the line dropped and goes on.
    pub resume_instruction: String,
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
    pub steering: Steering,
    pub ending: Ending,
}

/// What the anketa tells the dialogue: appended to the instructions after each extraction.
#[derive(Clone, Debug)]
pub struct Steering {
    /// Off: the instructions never change with the anketa.
    pub enabled: bool,
    /// Required fields still unknown; `{fields}` becomes their descriptions.
    pub missing_addendum: String,
    /// Every required field is known.
    pub complete_addendum: String,
    /// Appended to the wrap-up instruction while fields are missing; `{fields}` as above.
    pub wrapup_missing: String,
}

/// How a call comes to its end besides the time limit and the caller hanging up.
#[derive(Clone, Debug)]
pub struct Ending {
    /// Declare the `end_consultation` tool so that the model ends the call when the caller
    /// says goodbye.
    pub end_tool: bool,
    /// Given when the model ended the call without saying goodbye first.
    pub tool_goodbye_instruction: String,
    /// Caller silence (agent idle) before the agent asks whether they are still there; None: off.
    pub silence_prompt_after: Option<Duration>,
    pub silence_prompt_instruction: String,
    /// Further silence after that question before the agent says goodbye and ends the call.
    pub silence_end_after: Duration,
    pub silence_goodbye_instruction: String,
}

impl ConsultationSettings {
    /// Settings for tests and examples: short, Russian, the Python module's defaults.
    pub fn for_tests(fields: Vec<AnketaField>) -> Self {
        Self {
            system_prompt: "Ты — вежливый голосовой консультант.".into(),
            greeting_instruction: "Поздоровайся и спроси, как зовут клиента.".into(),
            resume_instruction: "Связь прервалась и восстановилась: коротко скажи об этом и продолжи разговор.".into(),
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
            steering: Steering {
                enabled: true,
                missing_addendum: "Ещё не выяснено: {fields}. Выясни это естественно, по одному вопросу за раз.".into(),
                complete_addendum: "Все нужные сведения собраны: кратко подведи итог и предложи завершить консультацию.".into(),
                wrapup_missing: "Если успеешь, уточни: {fields}.".into(),
            },
            ending: Ending {
                end_tool: true,
                tool_goodbye_instruction: "Клиент прощается: коротко поблагодари его и попрощайся.".into(),
                silence_prompt_after: None,
                silence_prompt_instruction: "Клиент давно молчит: спроси, слышит ли он тебя.".into(),
                silence_end_after: Duration::from_secs(15),
                silence_goodbye_instruction: "Клиент не отвечает: вежливо попрощайся.".into(),
            },
        }
    }
}
