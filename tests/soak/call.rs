//! One consultation of the soak, end to end through the real adapters: the real realtime
//! client against the fake realtime service, the real DeepSeek client against the fake
//! DeepSeek, the real SQLite store (behind [`FlakyStore`]), the consultation core through
//! `VoiceHandler::create_session` with the caller's audio fed like a microphone's. Faults are
//! injected as the plan says; afterwards the stored dialogue is held against what was spoken.

use std::sync::Arc;
use std::time::{Duration, Instant};

use consultant::deepseek::{DeepSeekConfig, DeepSeekExtractor};
use consultant::realtime::{AzureRealtimeClient, RealtimeConfig, RealtimeFlavour};
use consultant::secret::Secret;
use consultant_actors::consultation::{EndReason, Ports};
use consultant_actors::handler::ConsultationHandle;
use consultant_actors::persistence::PersistenceMsg;
use consultant_actors::ports::{AgentAudioOutput, DialogueStore};
use consultant_actors::realtime::ConnectPolicy;
use consultant_actors::telemetry::Telemetry;
use consultant_actors::{AnketaField, ConsultationSettings, FieldKind, SessionId, SessionStatus, VoiceHandler};
use consultant_fakes::deepseek::{with_evidence, FakeDeepSeek, Prompt, TEST_API_KEY};
use consultant_fakes::realtime::{caller_turn, AgentVoice, Fault, FakeFlavour, FakeRealtime, FakeRealtimeOptions, HandshakeFault};
use serde_json::{json, Value};

use super::plan::{CallPlan, Injection};
use super::ports::{FlakyStore, HeardRecorder};
use super::truth::{self, Diff, Said};

const PREVIEW: &str = "2025-04-01-preview";
/// The caller's audio is fed this many times faster than real time (the fake's VAD counts
/// samples, not seconds); silence while waiting goes at real time, as a microphone sends it.
const FEED_SPEEDUP: u32 = 4;
const QUIET_WAIT: Duration = Duration::from_secs(10);

pub struct CallReport {
    pub plan: CallPlan,
    /// Every fault that took effect, named.
    pub faults: Vec<String>,
    pub expected: Vec<Said>,
    pub stored: Vec<Said>,
    pub diff: Diff,
    pub status: Option<SessionStatus>,
    pub final_anketas: usize,
    pub realtime_sessions: usize,
    /// Make-before-break switches to a standby session.
    pub rollovers: usize,
    pub quiet_timeouts: u32,
    /// What went wrong with the harness itself (a call that never started, never ended).
    pub trouble: Vec<String>,
    /// The fakes' view of each answer and cut, for the failure report.
    pub evidence: Vec<String>,
    pub took: Duration,
}

fn fields() -> Vec<AnketaField> {
    vec![
        AnketaField { name: "name".into(), description: "Имя клиента".into(), kind: FieldKind::Text, required: true },
        AnketaField { name: "topic".into(), description: "Что интересует клиента".into(), kind: FieldKind::Text, required: true },
    ]
}

/// The fake model's reading of the dialogue: the name after "Меня зовут", the last interest.
fn rule(prompt: &Prompt) -> Value {
    let mut anketa = serde_json::Map::new();
    let mut evidence = serde_json::Map::new();
    for m in prompt.messages.iter().filter(|m| m.client) {
        for (field, prefix) in [("name", "Меня зовут "), ("topic", "Меня интересует ")] {
            if let Some(value) = m.text.strip_prefix(prefix) {
                anketa.insert(field.into(), json!(value));
                evidence.insert(field.into(), json!(m.seq.into_iter().collect::<Vec<_>>()));
            }
        }
    }
    with_evidence(Value::Object(anketa), Value::Object(evidence))
}

fn fake_flavour(flavour: RealtimeFlavour) -> FakeFlavour {
    match flavour {
        RealtimeFlavour::AzurePreview => FakeFlavour::AzurePreview { api_version: PREVIEW.into() },
        RealtimeFlavour::AzureGa => FakeFlavour::AzureGa,
        _ => FakeFlavour::OpenAi,
    }
}

struct Call {
    plan: CallPlan,
    fake: Arc<FakeRealtime>,
    handler: VoiceHandler,
    handle: ConsultationHandle,
    out: Arc<HeardRecorder>,
    store: Arc<FlakyStore>,
    quiet_timeouts: u32,
    /// Faults the harness applied itself (kills, outages).
    applied: Vec<String>,
}

/// Runs `plan` as the soak's `run`-th consultation (its session id).
pub async fn run(plan: CallPlan, run: usize, store: Arc<FlakyStore>) -> CallReport {
    let began = Instant::now();
    let mut options = FakeRealtimeOptions::new(fake_flavour(plan.flavour));
    options.speed = Some(20.0);
    options.voice = AgentVoice::Tone { ms_per_char: 6 };
    options.delta_ms = 40;
    options.greeting = plan.greeting.clone();
    options.turns = plan.turns.iter().map(|t| t.script.clone()).chain(plan.spare.iter().cloned()).collect();
    let fake = Arc::new(FakeRealtime::start(options).await.expect("fake realtime starts"));
    let deepseek = FakeDeepSeek::start().await;
    deepseek.set_answer_rule(rule);
    deepseek.push_all(plan.deepseek.iter().cloned());

    let mut rt = RealtimeConfig::new(plan.flavour, fake.endpoint(), Secret::new(fake.options().api_key.clone()));
    rt.deployment = fake.options().deployment.clone();
    rt.model = fake.options().deployment.clone();
    rt.api_version = PREVIEW.into();
    let mut ds = DeepSeekConfig::new(Secret::new(TEST_API_KEY));
    ds.base_url = deepseek.base_url();
    ds.attempts = 3;
    ds.backoff_initial = Duration::from_millis(20);
    ds.timeout = Duration::from_secs(2);
    let ports = Ports {
        connector: Arc::new(AzureRealtimeClient::new(rt, consultant::tls::ClientTls::default()).expect("valid realtime config")),
        store: store.clone(),
        extractor: Arc::new(DeepSeekExtractor::new(ds, fields(), &consultant::tls::ClientTls::default()).expect("valid DeepSeek config")),
    };
    let mut settings = ConsultationSettings::for_tests(fields());
    settings.transcript_wait = Duration::from_millis(1500);
    settings.final_extraction_timeout = Duration::from_secs(3);
    settings.connect = ConnectPolicy { attempts: 3, timeout: Duration::from_secs(5), first_retry: Duration::from_millis(100), retry_delay: Duration::from_millis(300) };
    settings.realtime_recycle_after = plan.rollover.then(|| Duration::from_secs(2));
    let handler = VoiceHandler::start(Arc::new(settings), ports, Telemetry::new()).await.expect("handler starts");

    if let Some(fault) = &plan.greeting_fault {
        fake.inject(fault.clone());
    }
    let out = Arc::new(HeardRecorder::default());
    let audio_out: Arc<dyn AgentAudioOutput> = out.clone();
    let id = SessionId::parse(&format!("soak-{run}")).unwrap();
    let mut trouble = Vec::new();
    let room = format!("consultation-{id}");
    let handle = handler.create_session(id.clone(), room, audio_out).await.unwrap_or_else(|e| panic!("call {}: the consultation did not start: {e}", plan.index));
    match tokio::time::timeout(Duration::from_secs(20), handle.wait_ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => trouble.push(format!("ended before it was ready: {e}")),
        Err(_) => trouble.push("not ready within 20 s".into()),
    }
    let mut call = Call { plan, fake, handler, handle, out, store, quiet_timeouts: 0, applied: Vec::new() };
    if trouble.is_empty() {
        call.converse().await;
    }
    let refused_before = call.store.refused(&id);
    if let Some(ms) = call.plan.end_outage_ms {
        call.store.outage(&id, Instant::now() + Duration::from_millis(ms));
    }
    let outcome = tokio::time::timeout(Duration::from_secs(30), call.handler.end_session(&id, EndReason::CallerLeft)).await;
    let refused_at_end = call.store.refused(&id) - refused_before;
    if let (Some(ms), true) = (call.plan.end_outage_ms, refused_at_end > 0) {
        call.applied.push(format!("store unwritable at the end for {ms} ms ({refused_at_end} writes refused)"));
    }
    let status = match outcome {
        Ok(Ok(o)) => Some(o.status),
        Ok(Err(e)) => {
            trouble.push(format!("end_session: {e}"));
            None
        }
        Err(_) => {
            trouble.push("not finalized within 30 s".into());
            None
        }
    };
    let rollovers = call.handler.telemetry().snapshot().events.iter().filter(|e| e.kind == "rollover" && e.message.starts_with("switched")).count();
    call.handler.stop().await;

    let messages = call.store.inner.load_messages(&id).await.expect("stored messages");
    let detail = call.store.inner.session_detail(&id).await.expect("stored session");
    let final_anketas = detail.anketa_history.iter().filter(|a| a.is_final).count();
    if status.is_none() {
        // It ended on its own before the caller hung up: say how, as stored.
        trouble.push(format!("stored as {} ({})", detail.record.status, detail.record.failure.as_deref().unwrap_or("no failure")));
    }
    let (spoken, connections, cuts) = (call.fake.spoken(), call.fake.connections(), call.out.cuts());
    let expected = truth::expected(&spoken, &connections, &cuts);
    let evidence = truth::evidence(&spoken, &connections, &cuts);
    let stored = truth::stored(&messages);
    let diff = truth::compare(&expected, &stored);
    let mut faults = call.fake.faults_applied();
    faults.append(&mut call.applied);
    let extraction_faults = call.plan.deepseek.len() - deepseek.pending();
    faults.extend(call.plan.deepseek[..extraction_faults].iter().map(|b| format!("DeepSeek {b:?}")));
    CallReport {
        faults,
        expected,
        stored,
        diff,
        status: Some(detail.record.status),
        final_anketas,
        realtime_sessions: connections.iter().filter(|c| c.status == 101).count(),
        rollovers,
        quiet_timeouts: call.quiet_timeouts,
        trouble,
        evidence,
        took: began.elapsed(),
        plan: call.plan,
    }
}

impl Call {
    async fn converse(&mut self) {
        self.wait_quiet().await;
        let mut timed = Vec::new();
        for turn in self.plan.turns.clone() {
            match turn.barge_in_ms {
                Some(after) => {
                    // Talk over the answer to the previous turn once it is being heard.
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while !self.out.is_playing() && Instant::now() < deadline {
                        self.silence(1).await;
                    }
                    tokio::time::sleep(Duration::from_millis(after)).await;
                }
                None => self.wait_quiet().await,
            }
            if let Some(injection) = turn.injection.clone() {
                if let Some(task) = self.inject(injection) {
                    timed.push(task);
                }
            }
            self.speak(&caller_turn(turn.speech_ms, 700)).await;
            if let Some(pause) = turn.pause_ms {
                self.wait_quiet().await;
                self.silence(pause as usize / 20).await;
            }
        }
        for task in timed {
            if let Ok(Some(applied)) = task.await {
                self.applied.push(applied);
            }
        }
        self.wait_quiet().await;
    }

    /// Applies an injection now, or spawns the task that applies it later (its result names
    /// the fault if it took effect).
    fn inject(&self, injection: Injection) -> Option<tokio::task::JoinHandle<Option<String>>> {
        let fake = &self.fake;
        match injection {
            Injection::MidAnswer(after_deltas) => fake.inject(Fault::DropMidResponse { after_deltas }),
            Injection::MidTranscript => fake.inject(Fault::DropMidResponse { after_deltas: 1 }),
            Injection::DuringReplay { handshake_only } => {
                fake.inject(Fault::DropNow);
                if handshake_only {
                    fake.fail_next_handshakes([HandshakeFault::CloseAfterHandshake]);
                } else {
                    fake.inject(Fault::DropNow);
                }
            }
            Injection::HandshakeRefused(status) => {
                fake.fail_next_handshakes([HandshakeFault::Status(status)]);
                fake.inject(Fault::DropNow);
            }
            Injection::FailNextResponse => fake.inject(Fault::FailNextResponse { code: "inference_rate_limit_exceeded".into() }),
            Injection::Timed { fault, after_ms } => {
                let fake = self.fake.clone();
                return Some(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after_ms)).await;
                    fake.inject(fault);
                    None
                }));
            }
            Injection::DuringRollover => {
                let fake = self.fake.clone();
                return Some(tokio::spawn(async move {
                    // A standby is open beside the current session: one of the two drops.
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while open_sessions(&fake) < 2 && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    fake.inject(Fault::DropNow);
                    None
                }));
            }
            Injection::KillPersistence { after_ms } => {
                let actor = self.handle.actor.clone();
                return Some(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after_ms)).await;
                    let child = actor.get_cell().get_children().into_iter().find(|c| c.is_message_type_of::<PersistenceMsg>() == Some(true))?;
                    child.kill();
                    Some("Persistence killed".to_owned())
                }));
            }
            Injection::StoreOutage { after_ms, for_ms } => {
                let (store, id) = (self.store.clone(), self.handle.session_id.clone());
                return Some(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after_ms)).await;
                    let before = store.refused(&id);
                    store.outage(&id, Instant::now() + Duration::from_millis(for_ms));
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                    let refused = store.refused(&id) - before;
                    (refused > 0).then(|| format!("store unwritable for {for_ms} ms ({refused} writes refused)"))
                }));
            }
        }
        None
    }

    /// Feeds caller audio in 20 ms frames, `FEED_SPEEDUP` times faster than real time.
    async fn speak(&self, pcm: &[i16]) {
        let mut tick = tokio::time::interval(Duration::from_millis(20 / FEED_SPEEDUP as u64));
        for frame in pcm.chunks(480) {
            tick.tick().await;
            self.handler.process_user_audio(&self.handle, frame.into());
        }
    }

    /// `frames` frames of a quiet microphone, at real time.
    async fn silence(&self, frames: usize) {
        let quiet: Arc<[i16]> = vec![0i16; 480].into();
        for _ in 0..frames {
            self.handler.process_user_audio(&self.handle, quiet.clone());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Nobody is speaking: the agent is not heard, no answer is in progress on an open
    /// session, and a session is open and configured. Keeps the microphone's silence flowing.
    async fn wait_quiet(&mut self) {
        let deadline = Instant::now() + QUIET_WAIT;
        let mut calm = 0;
        while calm < 3 {
            if Instant::now() >= deadline {
                self.quiet_timeouts += 1;
                return;
            }
            let sessions = self.fake.connections();
            let open: Vec<_> = sessions.iter().filter(|c| c.status == 101 && c.ended.is_none()).collect();
            let answering = open.iter().any(|c| c.responses.iter().any(|r| r.status == "in_progress"));
            let configured = open.iter().any(|c| !c.session_updates.is_empty());
            calm = if !self.out.is_playing() && !answering && configured { calm + 1 } else { 0 };
            self.silence(2).await;
        }
    }
}

fn open_sessions(fake: &FakeRealtime) -> usize {
    fake.connections().iter().filter(|c| c.status == 101 && c.ended.is_none()).count()
}
