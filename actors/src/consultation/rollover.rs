//! Make-before-break rollover of the realtime session before the provider's session limit.
//!
//! A standby session is opened and configured (instructions, the dialogue replayed) while the
//! current one goes on; at a turn boundary, with nobody speaking, the caller's audio moves to
//! the standby from one frame to the next and the old session is closed. Nothing is said twice
//! and no caller frame is lost. If the standby fails, the current session stays and the standby
//! is retried later; a session that ends before a standby is ready falls back to
//! restart-and-replay (`children`).

use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ChildKind, ConsultationActor, ConsultationMsg, ConsultationState};
use crate::ports::{RealtimeCommand, RealtimeSetup};
use crate::realtime::{RealtimeActor, RealtimeArgs, RealtimeMsg};
use crate::telemetry::RealtimeLinkState;

/// A failed standby is tried again after this; the current session goes on meanwhile.
const STANDBY_RETRY: Duration = Duration::from_secs(5);

/// The session being prepared to take over.
pub(super) struct Standby {
    actor: ActorRef<RealtimeMsg>,
    generation: u64,
    /// Set once it is configured and the dialogue replayed.
    audio: Option<mpsc::Sender<RealtimeCommand>>,
    /// What it was configured with: it is only current while these still hold.
    dialogue_len: usize,
    instructions: String,
}

impl ConsultationState {
    /// Nobody is speaking and no turn is in flight: a safe moment to change sessions.
    pub(super) fn is_quiet(&self) -> bool {
        // Never while the caller speaks: what the old session buffered of the phrase would be lost.
        !self.response_active
            && !self.caller_speaking
            && self.turns.is_idle()
            && !self.audio_out.is_playing()
            && self.speech_stopped_at.is_none()
    }

    fn standby_path(&self) -> String {
        format!("{}/realtime-standby", self.path)
    }

    pub(super) fn is_standby(&self, cell: &ActorCell) -> bool {
        self.realtime.standby.as_ref().is_some_and(|s| s.actor.get_id() == cell.get_id())
    }

    pub(super) fn stop_standby(&mut self, why: &str) {
        if let Some(standby) = self.realtime.standby.take() {
            standby.actor.stop(Some(why.into()));
            self.args.telemetry.actor_removed(&self.standby_path());
        }
    }
}

impl ConsultationActor {
    /// Called every tick: prepares a standby once the session is old enough, and switches to it
    /// when it is ready, still current and the call is quiet.
    pub(super) async fn rollover_tick(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState) -> Result<(), ActorProcessingErr> {
        let (Some(after), Some(since)) = (state.args.settings.realtime_recycle_after, state.realtime.connected_at) else {
            return Ok(());
        };
        if since.elapsed() < after || state.finalizing {
            return Ok(());
        }
        let stale = state.realtime.standby.as_ref().is_some_and(|s| s.audio.is_some() && s.dialogue_len != state.session.dialogue.len());
        if stale {
            // The dialogue moved on since it was configured: prepare a fresh one.
            state.stop_standby("the dialogue moved on");
        }
        if state.realtime.standby.is_none() {
            if state.realtime.standby_retry_at.is_none_or(|t| Instant::now() >= t) {
                Self::spawn_standby(myself, state).await?;
            }
            return Ok(());
        }
        if state.realtime.standby.as_ref().is_some_and(|s| s.audio.is_some()) && state.is_quiet() {
            Self::switch_to_standby(state);
        }
        Ok(())
    }

    async fn spawn_standby(myself: &ActorRef<ConsultationMsg>, state: &mut ConsultationState) -> Result<(), ActorProcessingErr> {
        state.realtime.last_generation += 1;
        let generation = state.realtime.last_generation;
        let instructions = state.current_instructions();
        let setup = RealtimeSetup {
            session_id: state.session.session_id.clone(),
            instructions: instructions.clone(),
            history: state.session.dialogue.clone(),
            tools: state.tools(),
        };
        let args = RealtimeArgs { connector: state.args.ports.connector.clone(), setup, policy: state.args.settings.connect, parent: myself.clone(), generation };
        let (actor, _) = Actor::spawn_linked(None, RealtimeActor, args, myself.get_cell()).await?;
        tracing::info!(session_id = %state.session.session_id, generation, replay = state.session.dialogue.len(), "opening a standby realtime session before the limit");
        state.args.telemetry.actor_started(&state.standby_path(), "realtime");
        state.realtime.standby = Some(Standby { actor, generation, audio: None, dialogue_len: state.session.dialogue.len(), instructions });
        Ok(())
    }

    /// A `RealtimeReady` that is not the current session's: the standby's, if it is.
    pub(super) fn on_standby_ready(state: &mut ConsultationState, generation: u64, audio: mpsc::Sender<RealtimeCommand>) {
        if let Some(standby) = state.realtime.standby.as_mut().filter(|s| s.generation == generation) {
            standby.audio = Some(audio);
            tracing::info!(session_id = %state.session.session_id, generation, "standby realtime session ready; switching at the next quiet moment");
        }
    }

    /// The standby failed: the current session goes on; another standby is tried later.
    pub(super) fn on_standby_failed(state: &mut ConsultationState, reason: String) {
        state.realtime.standby = None;
        state.realtime.standby_retry_at = Some(Instant::now() + STANDBY_RETRY);
        tracing::warn!(session_id = %state.session.session_id, %reason, retry_in = ?STANDBY_RETRY, "standby realtime session failed; keeping the current one");
        state.args.telemetry.actor_removed(&state.standby_path());
        state.args.telemetry.event("rollover", state.standby_path(), format!("standby failed: {reason}"));
    }

    /// Promotes a ready standby that is still current. False if there is none.
    pub(super) fn switch_to_standby(state: &mut ConsultationState) -> bool {
        // An answer still being heard is not in the dialogue yet, so not in the standby's replay.
        let current = state.realtime.standby.as_ref().is_some_and(|s| s.audio.is_some() && s.dialogue_len == state.session.dialogue.len())
            && state.turns.playing_out().is_none();
        if !current {
            return false;
        }
        let Some(standby) = state.realtime.standby.take() else { return false };
        let old = state.realtime.actor.replace(standby.actor);
        state.realtime.generation = standby.generation;
        state.realtime.audio = standby.audio;
        state.realtime.connected_at = Some(Instant::now());
        state.realtime.standby_retry_at = None;
        // Caller audio held while a failed session was being replaced goes out first.
        for pcm in state.caller_gap.drain() {
            state.caller_audio(pcm, None);
        }
        if let Some(old) = old {
            // Not a child any more: its end is neither a failure nor a planned restart.
            old.stop(Some("rolled over to the standby session".into()));
        }
        // Configured a while ago: anything that changed since goes out now (between answers).
        state.instructions_sent = Some(standby.instructions);
        state.instructions_changed();
        state.args.telemetry.actor_removed(&state.standby_path());
        state.set_link(RealtimeLinkState::Connected);
        state.args.telemetry.event("rollover", state.child_path(ChildKind::Realtime), format!("switched to generation {}, {} messages replayed", standby.generation, standby.dialogue_len));
        state.args.telemetry.consultation_update(&state.session.session_id, |v| v.realtime.reconnects += 1);
        tracing::info!(session_id = %state.session.session_id, generation = standby.generation, "realtime session rolled over (make-before-break)");
        true
    }
}
