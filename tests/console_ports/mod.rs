//! In-memory ports for the console test and benchmark: a realtime connector whose sessions
//! behave per session id (healthy, always failing, hanging), a memory store, an extractor
//! that fills one field, and a silent audio output.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use consultant_actors::anketa::{Anketa, AnketaField, FieldKind};
use consultant_actors::dialogue::DialogueMessage;
use consultant_actors::provenance::ExtractedAnketa;
use consultant_actors::ports::{
    AgentAudioOutput, AnketaExtractor, ExtractError, PlayedAudio, RealtimeCommand,
    RealtimeConnection, RealtimeConnector, RealtimeEvent, RealtimeFailure, RealtimeSetup, ResponseStatus, TokenUsage,
};
use tokio::sync::mpsc;

/// How a session's realtime connections behave, chosen by a prefix of its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Healthy,
    /// Every connect fails (transient): the Realtime actor keeps being restarted.
    Failing,
    /// Connect never returns.
    Hanging,
}

impl Behaviour {
    pub fn of(session_id: &str) -> Self {
        if session_id.starts_with("failing") {
            Behaviour::Failing
        } else if session_id.starts_with("hanging") {
            Behaviour::Hanging
        } else {
            Behaviour::Healthy
        }
    }
}

/// The process-wide epoch audio timestamps are relative to.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A 20 ms caller frame (24 kHz) stamped with the time it was sent, in µs since [`epoch`].
pub fn stamped_frame() -> Arc<[i16]> {
    let micros = epoch().elapsed().as_micros() as u32;
    let mut pcm = vec![0i16; 480];
    pcm[0] = (micros >> 16) as u16 as i16;
    pcm[1] = (micros & 0xffff) as u16 as i16;
    pcm.into()
}

fn stamp_of(pcm: &[i16]) -> u32 {
    ((pcm[0] as u16 as u32) << 16) | pcm[1] as u16 as u32
}

#[derive(Default)]
pub struct TestConnector {
    inner: Arc<ConnectorState>,
}

impl std::ops::Deref for TestConnector {
    type Target = ConnectorState;
    fn deref(&self) -> &ConnectorState {
        &self.inner
    }
}

#[derive(Default)]
pub struct ConnectorState {
    /// The live event sender of each session's latest connection.
    sessions: Mutex<HashMap<String, mpsc::Sender<RealtimeEvent>>>,
    pub connects: AtomicU64,
    /// Caller frames that reached a connection, and their latency from being sent (µs).
    pub audio_latency_us: Mutex<Vec<u32>>,
    /// Emit a caller turn and an agent answer every this many caller frames (0: never).
    pub chatter_every: AtomicU64,
}

impl TestConnector {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Pushes an event into a session's current connection.
    pub async fn emit(&self, session_id: &str, event: RealtimeEvent) {
        let tx = self.sessions.lock().unwrap().get(session_id).cloned();
        if let Some(tx) = tx {
            let _ = tx.send(event).await;
        }
    }

    /// A full exchange: the caller says something, the agent answers.
    pub async fn exchange(&self, session_id: &str, turn: u64, user: &str, agent: &str) {
        for event in exchange_events(turn, user, agent) {
            self.emit(session_id, event).await;
        }
    }

    pub fn take_latencies(&self) -> Vec<u32> {
        std::mem::take(&mut *self.audio_latency_us.lock().unwrap())
    }
}

fn exchange_events(turn: u64, user: &str, agent: &str) -> Vec<RealtimeEvent> {
    let (u, a, r) = (format!("u{turn}"), format!("a{turn}"), format!("r{turn}"));
    vec![
        RealtimeEvent::SpeechStarted { item_id: Some(u.clone()), audio_start_ms: 0 },
        RealtimeEvent::SpeechStopped { item_id: Some(u.clone()), audio_end_ms: 800 },
        RealtimeEvent::UserItemCommitted { item_id: u.clone() },
        RealtimeEvent::UserTranscript { item_id: u, text: user.into() },
        RealtimeEvent::ResponseStarted { response_id: r.clone() },
        RealtimeEvent::AgentItemStarted { response_id: Some(r.clone()), item_id: a.clone() },
        RealtimeEvent::AgentAudio { item_id: a.clone(), pcm: vec![0i16; 2400].into(), received: std::time::Instant::now() },
        RealtimeEvent::AgentTranscriptDone { item_id: a, text: agent.into() },
        RealtimeEvent::ResponseDone {
            response_id: Some(r),
            status: ResponseStatus::Completed,
            reason: None,
            usage: Some(TokenUsage { input_tokens: 120, output_tokens: 45, ..Default::default() }),
        },
    ]
}

#[async_trait]
impl RealtimeConnector for TestConnector {
    async fn connect(&self, setup: RealtimeSetup) -> Result<RealtimeConnection, RealtimeFailure> {
        self.connects.fetch_add(1, Ordering::Relaxed);
        match Behaviour::of(&setup.session_id.to_string()) {
            Behaviour::Failing => return Err(RealtimeFailure::Transient("test upstream refused the connection".into())),
            Behaviour::Hanging => std::future::pending::<()>().await,
            Behaviour::Healthy => {}
        }
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<RealtimeCommand>(1024);
        let (ev_tx, ev_rx) = mpsc::channel::<RealtimeEvent>(1024);
        self.sessions.lock().unwrap().insert(setup.session_id.to_string(), ev_tx.clone());
        let this = self.inner.clone();
        // Sessions chatter at staggered moments, as real calls do.
        let mut frames = self.connects.load(Ordering::Relaxed).wrapping_mul(37);
        tokio::spawn(async move {
            let mut turns = 0u64;
            while let Some(command) = cmd_rx.recv().await {
                match command {
                    RealtimeCommand::AppendAudio(pcm) => {
                        let now = epoch().elapsed().as_micros() as u32;
                        let latency = now.wrapping_sub(stamp_of(&pcm));
                        {
                            let mut l = this.audio_latency_us.lock().unwrap();
                            if l.len() < 1_000_000 {
                                l.push(latency);
                            }
                        }
                        frames += 1;
                        let every = this.chatter_every.load(Ordering::Relaxed);
                        if every > 0 && frames % every == 0 {
                            turns += 1;
                            for event in exchange_events(turns, "Меня зовут Иван", "Приятно познакомиться, Иван") {
                                if ev_tx.send(event).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    RealtimeCommand::Close => return,
                    _ => {}
                }
            }
        });
        Ok(RealtimeConnection { commands: cmd_tx, events: ev_rx })
    }
}


/// Fills `name` once the caller said it.
#[derive(Default)]
pub struct NameExtractor {
    pub calls: AtomicU64,
}

#[async_trait]
impl AnketaExtractor for NameExtractor {
    async fn extract(&self, dialogue: &[DialogueMessage], _previous: &Anketa) -> Result<ExtractedAnketa, ExtractError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut anketa = Anketa::default();
        if dialogue.iter().any(|m| m.text.contains("Иван")) {
            anketa.0.insert("name".into(), serde_json::Value::from("Иван"));
        }
        Ok(ExtractedAnketa::without_evidence(anketa))
    }
}

pub fn fields() -> Vec<AnketaField> {
    vec![
        AnketaField { name: "name".into(), description: "Имя клиента".into(), kind: FieldKind::Text, required: true },
        AnketaField { name: "goal".into(), description: "Цель обращения".into(), kind: FieldKind::Text, required: true },
    ]
}

/// Agent audio goes nowhere.
pub struct SilentAudio;

impl AgentAudioOutput for SilentAudio {
    fn play(&self, _item_id: &str, _pcm: Arc<[i16]>) {}
    fn interrupt(&self) -> Option<PlayedAudio> {
        None
    }
    fn is_playing(&self) -> bool {
        false
    }
}
