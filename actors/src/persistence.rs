//! The Persistence actor: makes every final dialogue message durable (then logs
//! `DIALOGUE_MESSAGE`), and stores status changes and anketa versions.
//!
//! Writes are processed in order. A failing write fails the actor; the Consultation restarts
//! it and re-sends every message not yet confirmed (appends are idempotent on seq).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::consultation::ConsultationMsg;
use crate::dialogue::{DialogueMessage, SessionId};
use crate::ports::{AnketaRecord, DialogueStore, SessionRecord};
use crate::session::SessionStatus;

pub struct PersistenceArgs {
    pub session_id: SessionId,
    pub store: Arc<dyn DialogueStore>,
    pub parent: ActorRef<ConsultationMsg>,
}

pub enum PersistenceMsg {
    OpenSession(SessionRecord),
    Append(DialogueMessage),
    SetStatus { status: SessionStatus, failure: Option<String>, ended_at: Option<DateTime<Utc>> },
    SaveAnketa(AnketaRecord),
    /// Replies once everything sent before it is durable.
    Flush(RpcReplyPort<()>),
}

pub struct PersistenceActor;

#[ractor::async_trait]
impl Actor for PersistenceActor {
    type Msg = PersistenceMsg;
    type State = PersistenceArgs;
    type Arguments = PersistenceArgs;

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, args: PersistenceArgs) -> Result<PersistenceArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(&self, _myself: ActorRef<Self::Msg>, message: PersistenceMsg, state: &mut PersistenceArgs) -> Result<(), ActorProcessingErr> {
        match message {
            PersistenceMsg::OpenSession(record) => state.store.open_session(&record).await?,
            PersistenceMsg::Append(message) => {
                state.store.append_message(&state.session_id, &message).await?;
                tracing::info!(
                    session_id = %state.session_id,
                    seq = message.seq,
                    role = %message.role,
                    interrupted = message.interrupted,
                    text = %message.text,
                    "DIALOGUE_MESSAGE"
                );
                state.parent.send_message(ConsultationMsg::Persisted { seq: message.seq })?;
            }
            PersistenceMsg::SetStatus { status, failure, ended_at } => {
                state.store.set_status(&state.session_id, status, failure.as_deref(), ended_at).await?
            }
            PersistenceMsg::SaveAnketa(record) => {
                state.store.save_anketa(&state.session_id, &record).await?;
                state.parent.send_message(ConsultationMsg::AnketaPersisted { message_count: record.message_count })?;
            }
            PersistenceMsg::Flush(reply) => {
                if reply.send(()).is_err() {
                    tracing::debug!(session_id = %state.session_id, "flush answered after its caller gave up");
                }
            }
        }
        Ok(())
    }
}
