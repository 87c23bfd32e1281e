//! The Realtime actor: owns one realtime connection (Azure/OpenAI), forwards its events to the
//! Consultation, and fails when the socket fails so that the Consultation restarts it (with
//! the dialogue replayed by the new connection).

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

use crate::consultation::ConsultationMsg;
use crate::ports::{RealtimeCommand, RealtimeConnector, RealtimeEvent, RealtimeFailure, RealtimeSetup};
use crate::tasks::OwnedTasks;

/// How the Realtime actor connects: attempts, per-attempt timeout and backoff.
#[derive(Clone, Copy, Debug)]
pub struct ConnectPolicy {
    pub attempts: u32,
    pub timeout: Duration,
    pub first_retry: Duration,
    pub retry_delay: Duration,
}

impl Default for ConnectPolicy {
    /// As the best clients do it: 3 attempts, 10 s each, first retry after 0.1 s, then 2 s.
    fn default() -> Self {
        Self {
            attempts: 3,
            timeout: Duration::from_secs(10),
            first_retry: Duration::from_millis(100),
            retry_delay: Duration::from_secs(2),
        }
    }
}

impl ConnectPolicy {
    fn delay_before(&self, attempt: u32) -> Duration {
        if attempt <= 2 {
            self.first_retry
        } else {
            self.retry_delay
        }
    }
}

/// Queue depth of the socket writer; caller audio beyond it is dropped (and counted by the
/// Consultation) rather than buffered without bound.
pub const COMMAND_QUEUE: usize = 512;

/// How long a control command may wait for room in a full writer queue before the link is
/// treated as stalled and restarted.
pub const CONTROL_WAIT: Duration = Duration::from_secs(1);

pub struct RealtimeArgs {
    pub connector: Arc<dyn RealtimeConnector>,
    pub setup: RealtimeSetup,
    pub policy: ConnectPolicy,
    pub parent: ActorRef<ConsultationMsg>,
    pub generation: u64,
}

pub enum RealtimeMsg {
    Connect { attempt: u32 },
    Command(RealtimeCommand),
    Event(RealtimeEvent),
}

pub struct RealtimeState {
    args: RealtimeArgs,
    commands: Option<mpsc::Sender<RealtimeCommand>>,
    /// Forwards the connection's events; dropped with the state, so it ends with the actor
    /// even when the actor fails (ractor skips `post_stop` then).
    reader: OwnedTasks,
}

pub struct RealtimeActor;

#[ractor::async_trait]
impl Actor for RealtimeActor {
    type Msg = RealtimeMsg;
    type State = RealtimeState;
    type Arguments = RealtimeArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: RealtimeArgs) -> Result<RealtimeState, ActorProcessingErr> {
        // Connecting can take seconds: do it from the mailbox so the parent's spawn returns now.
        myself.send_message(RealtimeMsg::Connect { attempt: 1 })?;
        Ok(RealtimeState { args, commands: None, reader: OwnedTasks::default() })
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut RealtimeState) -> Result<(), ActorProcessingErr> {
        if let Some(tx) = state.commands.take() {
            if tx.try_send(RealtimeCommand::Close).is_err() {
                tracing::debug!("realtime writer full or gone at stop; the socket closes without a close frame");
            }
        }
        state.reader.abort_all();
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, message: RealtimeMsg, state: &mut RealtimeState) -> Result<(), ActorProcessingErr> {
        match message {
            RealtimeMsg::Connect { attempt } => {
                let generation = state.args.generation;
                state.args.parent.send_message(ConsultationMsg::RealtimeConnecting { generation, attempt })?;
                let policy = state.args.policy;
                let result = tokio::time::timeout(policy.timeout, state.args.connector.connect(state.args.setup.clone())).await;
                let failure = match result {
                    Ok(Ok(connection)) => {
                        let audio = connection.commands.clone();
                        state.commands = Some(connection.commands);
                        let mut events = connection.events;
                        let me = myself.clone();
                        state.reader.push(tokio::spawn(async move {
                            while let Some(event) = events.recv().await {
                                let last = matches!(event, RealtimeEvent::Disconnected { .. });
                                if me.send_message(RealtimeMsg::Event(event)).is_err() || last {
                                    return;
                                }
                            }
                            let ended = RealtimeEvent::Disconnected { cause: RealtimeFailure::Transient("event stream ended".into()) };
                            if me.send_message(RealtimeMsg::Event(ended)).is_err() {
                                tracing::debug!("realtime event stream ended after its actor stopped");
                            }
                        }));
                        state.args.parent.send_message(ConsultationMsg::RealtimeReady { generation, audio })?;
                        return Ok(());
                    }
                    Ok(Err(failure)) => failure,
                    Err(_) => RealtimeFailure::Transient(format!("connect timed out after {:?}", policy.timeout)),
                };
                if failure.is_fatal() {
                    return Err(Box::new(failure));
                }
                if attempt >= policy.attempts {
                    return Err(Box::new(RealtimeFailure::Transient(format!(
                        "connection failed after {attempt} attempts: {failure}"
                    ))));
                }
                tracing::warn!(attempt, cause = %failure, "realtime connect attempt failed; retrying");
                let next = attempt + 1;
                myself.send_after(policy.delay_before(next), move || RealtimeMsg::Connect { attempt: next });
            }
            RealtimeMsg::Command(command) => {
                // Control only: caller audio goes straight to the writer's queue (and only it is
                // ever shed). A command is delivered in order, or the link is failed and restarted.
                if let Some(tx) = &state.commands {
                    let delivered = match tx.try_send(command) {
                        Ok(()) => Ok(()),
                        Err(mpsc::error::TrySendError::Full(command)) => match tokio::time::timeout(CONTROL_WAIT, tx.send(command)).await {
                            Ok(sent) => sent.map_err(|_| "socket writer closed".to_owned()),
                            Err(_) => Err(format!("the socket writer took no command for {CONTROL_WAIT:?}")),
                        },
                        Err(mpsc::error::TrySendError::Closed(_)) => Err("socket writer closed".to_owned()),
                    };
                    if let Err(why) = delivered {
                        return Err(Box::new(RealtimeFailure::Transient(why)));
                    }
                }
            }
            RealtimeMsg::Event(RealtimeEvent::Disconnected { cause }) => {
                state.commands = None;
                return Err(Box::new(cause));
            }
            RealtimeMsg::Event(event) => {
                let generation = state.args.generation;
                state.args.parent.send_message(ConsultationMsg::Realtime { generation, event })?;
            }
        }
        Ok(())
    }
}
