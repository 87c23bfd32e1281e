//! The Extraction actor: asks the extractor (DeepSeek) for the anketa every N messages without
//! ever blocking the dialogue. One extraction runs at a time; requests that arrive meanwhile
//! are coalesced into the latest one, never queued without bound.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::anketa::Anketa;
use crate::consultation::ConsultationMsg;
use crate::dialogue::DialogueMessage;
use crate::ports::AnketaExtractor;
use crate::provenance::ExtractedAnketa;
use crate::tasks::OwnedTasks;

pub struct ExtractionArgs {
    pub extractor: Arc<dyn AnketaExtractor>,
    pub parent: ActorRef<ConsultationMsg>,
}

#[derive(Clone)]
pub struct ExtractionRequest {
    pub dialogue: Arc<[DialogueMessage]>,
    pub previous: Anketa,
}

pub enum ExtractionMsg {
    Extract(ExtractionRequest),
    Finished { message_count: usize, result: Result<ExtractedAnketa, String> },
}

pub struct ExtractionState {
    args: ExtractionArgs,
    running: bool,
    pending: Option<ExtractionRequest>,
    pub coalesced: u64,
    /// The request in flight: stopping the actor (at finalize) abandons it.
    request: OwnedTasks,
}

pub struct ExtractionActor;

impl ExtractionActor {
    fn start(myself: &ActorRef<ExtractionMsg>, state: &mut ExtractionState, request: ExtractionRequest) {
        state.running = true;
        let extractor = state.args.extractor.clone();
        let me = myself.clone();
        state.request.push(tokio::spawn(async move {
            let message_count = request.dialogue.len();
            let result = extractor.extract(&request.dialogue, &request.previous).await.map_err(|e| e.to_string());
            if me.send_message(ExtractionMsg::Finished { message_count, result }).is_err() {
                tracing::debug!(message_count, "extraction finished after its actor stopped; result dropped");
            }
        }));
    }
}

#[ractor::async_trait]
impl Actor for ExtractionActor {
    type Msg = ExtractionMsg;
    type State = ExtractionState;
    type Arguments = ExtractionArgs;

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, args: ExtractionArgs) -> Result<ExtractionState, ActorProcessingErr> {
        Ok(ExtractionState { args, running: false, pending: None, coalesced: 0, request: OwnedTasks::default() })
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, message: ExtractionMsg, state: &mut ExtractionState) -> Result<(), ActorProcessingErr> {
        match message {
            ExtractionMsg::Extract(request) => {
                if state.running {
                    if state.pending.replace(request).is_some() {
                        state.coalesced += 1;
                    }
                } else {
                    Self::start(&myself, state, request);
                }
            }
            ExtractionMsg::Finished { message_count, result } => {
                state.running = false;
                let notice = match result {
                    Ok(extracted) => ConsultationMsg::AnketaExtracted { extracted, message_count },
                    Err(error) => ConsultationMsg::ExtractionFailed { error, message_count },
                };
                state.args.parent.send_message(notice)?;
                if let Some(next) = state.pending.take() {
                    Self::start(&myself, state, next);
                }
            }
        }
        Ok(())
    }
}
