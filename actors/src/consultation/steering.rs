//! The anketa steers the dialogue. After each extraction the session's instructions get an
//! addendum naming the required fields still unknown (by their descriptions), or saying that
//! everything is known so the consultant moves to a summary; the wrap-up names what is missing.
//!
//! Instructions go out as `session.update` with the instructions only, and only between
//! answers: an update that lands mid-answer waits for that answer's `response.done`.

use super::ConsultationState;
use crate::ports::RealtimeCommand;
use crate::session::TimerPhase;

impl ConsultationState {
    /// Descriptions of the required fields still unknown, in configured order.
    pub(super) fn missing_fields(&self) -> Vec<&str> {
        self.session.anketa.missing(&self.args.settings.anketa_fields).into_iter().map(|f| describe(&f.description, &f.name)).collect()
    }

    /// The addendum of the latest extraction (none before the first one, or when steering is off).
    fn steering_addendum(&self) -> Option<String> {
        let s = &self.args.settings.steering;
        if !s.enabled || self.session.anketa_at_message == 0 {
            return None;
        }
        let missing = self.missing_fields();
        Some(if missing.is_empty() { s.complete_addendum.clone() } else { s.missing_addendum.replace("{fields}", &missing.join("; ")) })
    }

    /// The session instructions now: the system prompt, what the anketa still lacks, and the
    /// wrap-up once the time is nearly up.
    pub(super) fn current_instructions(&self) -> String {
        let s = &self.args.settings;
        let mut text = s.system_prompt.clone();
        if let Some(addendum) = self.steering_addendum() {
            text.push_str("\n\n");
            text.push_str(&addendum);
        }
        if matches!(self.session.timer, TimerPhase::WrappingUp | TimerPhase::Expired) {
            text.push_str("\n\n");
            text.push_str(&s.wrapup_instruction);
            let missing = self.missing_fields();
            if s.steering.enabled && !missing.is_empty() {
                text.push(' ');
                text.push_str(&s.steering.wrapup_missing.replace("{fields}", &missing.join("; ")));
            }
        }
        text
    }

    /// The instructions may have changed (an extraction, the wrap-up): send them, now if the
    /// model is between answers, else once the current answer is done.
    pub(super) fn instructions_changed(&mut self) {
        if self.response_active {
            self.instructions_pending = true;
        } else {
            self.send_instructions();
        }
    }

    /// After `response.done`: an update held back during the answer goes out.
    pub(super) fn flush_instructions(&mut self) {
        if std::mem::take(&mut self.instructions_pending) {
            self.send_instructions();
        }
    }

    fn send_instructions(&mut self) {
        let instructions = self.current_instructions();
        if self.instructions_sent.as_deref() == Some(instructions.as_str()) {
            return;
        }
        tracing::info!(session_id = %self.session.session_id, missing = ?self.missing_fields(), "realtime instructions updated");
        self.send_realtime(RealtimeCommand::UpdateInstructions(instructions.clone()));
        self.instructions_sent = Some(instructions);
    }
}

/// A field's name for the model: its description, or its key when it has none.
fn describe<'a>(description: &'a str, name: &'a str) -> &'a str {
    let d = description.trim();
    if d.is_empty() {
        name
    } else {
        d
    }
}
