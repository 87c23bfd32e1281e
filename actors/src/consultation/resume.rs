//! A consultation whose worker died mid-call, resumed on this one: a new job for a session the
//! store still holds open picks it up where it was (the dialogue, its numbering, the anketa,
//! the timer), replays it to the realtime session, and has the agent say the line dropped
//! instead of greeting again.

use ractor::ActorProcessingErr;

use super::{ConsultationActor, ConsultationState};

impl ConsultationActor {
    pub(super) async fn resume_if_stored(state: &mut ConsultationState) -> Result<(), ActorProcessingErr> {
        let store = state.args.ports.store.clone();
        let id = state.session.session_id.clone();
        let Some(stored) = store.session(&id).await? else { return Ok(()) };
        if stored.record.status.is_terminal() {
            return Ok(());
        }
        let dialogue = store.load_messages(&id).await?;
        let anketa = store.latest_anketa(&id).await?;
        let previous = stored.owner.clone().unwrap_or_else(|| "an earlier process".into());
        tracing::warn!(
            session_id = %id, from = %previous, messages = dialogue.len(), anketa_at = anketa.as_ref().map_or(0, |a| a.message_count),
            "resuming a consultation its worker left open: the stored dialogue goes on"
        );
        state.persisted_upto = dialogue.last().map_or(0, |m| m.seq);
        state.session.resume(stored.record.started_at, dialogue, anketa);
        state.extraction_requested_at = state.session.anketa_at_message;
        state.resumed_from = Some(previous.clone());
        state.args.telemetry.event("resumed", state.path.clone(), format!("from {previous}, {} messages", state.session.dialogue.len()));
        state.args.telemetry.consultation_upsert(state.view());
        state.args.telemetry.worker_update(|w| w.resumed_consultations += 1);
        Ok(())
    }
}
