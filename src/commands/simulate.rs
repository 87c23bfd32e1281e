//! `consultant simulate --caller <wav>`: one whole consultation without LiveKit, against the
//! configured realtime and DeepSeek endpoints and the SQLite store. Operators use it to test
//! credentials; tests use it end to end against the fakes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use consultant_actors::consultation::{EndReason, Ports, SessionOutcome};
use consultant_actors::ports::AgentAudioOutput;
use consultant_actors::telemetry::Telemetry;
use consultant_actors::{AnketaField, SessionId, SessionStatus, VoiceHandler};
use serde_json::json;

use crate::audio::wav::{read_as_realtime_pcm, write_realtime_pcm};
use crate::audio::{PacedRecorder, RATE};
use crate::config::{Config, Service};
use crate::deepseek::{DeepSeekConfig, DeepSeekExtractor};
use crate::realtime::{AzureRealtimeClient, RealtimeConfig};
use crate::store::Store;
use crate::tls::ClientTls;

/// Caller audio goes out in 20 ms frames, like a LiveKit track.
const FRAME: usize = RATE as usize / 50;
/// The agent counts as done when it has been silent this long after the caller's audio.
const QUIET_AFTER: Duration = Duration::from_secs(3);
/// Give up waiting for a last answer after this long.
const LAST_ANSWER_LIMIT: Duration = Duration::from_secs(60);
const GREETING_LIMIT: Duration = Duration::from_secs(20);

pub struct SimulateArgs {
    pub caller: PathBuf,
    pub session_id: Option<SessionId>,
    pub out: Option<PathBuf>,
    pub json: bool,
}

pub async fn run(config: &Config, args: SimulateArgs) -> anyhow::Result<()> {
    config.require(&[Service::Realtime, Service::DeepSeek])?;
    let caller = read_as_realtime_pcm(&args.caller).map_err(anyhow::Error::msg)?;
    if caller.is_empty() {
        anyhow::bail!("{} holds no audio", args.caller.display());
    }
    let _log = crate::logging::init(&config.logging, false).context("cannot start logging")?;

    let tls = ClientTls::from_config(&config.tls)?;
    let realtime = AzureRealtimeClient::new(RealtimeConfig::from_section(&config.realtime, &config.consultation.language), tls.clone())
        .map_err(|e| anyhow::anyhow!("realtime configuration: {e}"))?;
    let stats = realtime.stats();
    let extractor = DeepSeekExtractor::new(DeepSeekConfig::from_section(&config.deepseek), config.consultation.anketa_fields.clone(), &tls)?;
    // Owned, like a worker's: its session is never taken for an orphan while it runs.
    let store = Store::from_config(&config.storage, Some(&crate::store::default_worker_id())).await?;
    let ports = Ports { connector: Arc::new(realtime), store: Arc::new(store), extractor: Arc::new(extractor) };
    let handler = VoiceHandler::start(Arc::new(config.consultation_settings()), ports, Telemetry::new()).await?;

    let session_id = match args.session_id {
        Some(id) => id,
        None => SessionId::parse(&uuid::Uuid::new_v4().to_string())?,
    };
    let room = format!("consultation-{session_id}");
    let recorder = Arc::new(PacedRecorder::new());
    let audio_out: Arc<dyn AgentAudioOutput> = recorder.clone();
    let handle = handler.create_session(session_id.clone(), room, audio_out).await?;
    let connect_budget = config.consultation_settings().connect.timeout * (config.realtime.connect_attempts + 1) + Duration::from_secs(5);
    match tokio::time::timeout(connect_budget, handle.wait_ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => anyhow::bail!("the consultation could not start: {why}"),
        Err(_) => anyhow::bail!("the realtime session was not ready within {connect_budget:?}"),
    }

    let mut mic = Microphone::new(&handler, &handle);
    // The agent greets first; the caller listens (an open, silent microphone) until it is done.
    let greeting_deadline = Instant::now() + GREETING_LIMIT;
    while !recorder.is_playing() && Instant::now() < greeting_deadline {
        mic.silence().await;
    }
    while recorder.is_playing() {
        mic.silence().await;
    }
    for frame in caller.chunks(FRAME) {
        mic.send(frame).await;
    }
    // Then the caller waits for the last answer.
    let limit = Instant::now() + LAST_ANSWER_LIMIT;
    let mut quiet_since = Instant::now();
    while Instant::now() < limit {
        if recorder.is_playing() {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= QUIET_AFTER {
            break;
        }
        mic.silence().await;
    }

    let outcome = handler.end_session(&session_id, EndReason::CallerLeft).await?;
    let agent_pcm = recorder.timeline_pcm();
    if let Some(out) = &args.out {
        write_realtime_pcm(out, &agent_pcm).map_err(anyhow::Error::msg)?;
    }
    let caller_ms = caller.len() as u64 * 1000 / RATE;
    let agent_ms = recorder.played_ms();
    let stats = stats.snapshot();
    if args.json {
        let summary = json!({
            "session_id": outcome.session_id,
            "room": outcome.room,
            "status": outcome.status,
            "failure": outcome.failure,
            "dialogue": outcome.dialogue,
            "anketa": outcome.anketa,
            "provenance": outcome.provenance,
            "turn_latency_ms": outcome.turn_latency_ms,
            "caller_audio_ms": caller_ms,
            "agent_audio_ms": agent_ms,
            "agent_wav": args.out,
            "realtime": stats,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", text_summary(&outcome, &config.consultation.anketa_fields, caller_ms, agent_ms, args.out.as_deref(), &stats));
    }
    handler.shutdown().await;
    if outcome.status == SessionStatus::Failed {
        anyhow::bail!("the consultation failed: {}", outcome.failure.unwrap_or_default());
    }
    Ok(())
}

/// Feeds the consultation at real-time pace from one clock, so pauses never accumulate drift.
struct Microphone<'a> {
    handler: &'a VoiceHandler,
    handle: &'a consultant_actors::handler::ConsultationHandle,
    tick: tokio::time::Interval,
    silence: Arc<[i16]>,
}

impl<'a> Microphone<'a> {
    fn new(handler: &'a VoiceHandler, handle: &'a consultant_actors::handler::ConsultationHandle) -> Self {
        Self { handler, handle, tick: tokio::time::interval(Duration::from_millis(20)), silence: vec![0i16; FRAME].into() }
    }

    async fn send(&mut self, frame: &[i16]) {
        self.tick.tick().await;
        self.handler.process_user_audio(self.handle, frame.into());
    }

    async fn silence(&mut self) {
        self.tick.tick().await;
        self.handler.process_user_audio(self.handle, self.silence.clone());
    }
}

fn text_summary(outcome: &SessionOutcome, fields: &[AnketaField], caller_ms: u64, agent_ms: u64, out: Option<&Path>, stats: &crate::realtime::RealtimeStatsSnapshot) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "session {} (room {}): {}", outcome.session_id, outcome.room, outcome.status);
    if let Some(failure) = &outcome.failure {
        let _ = writeln!(s, "failure: {failure}");
    }
    let written = out.map(|p| format!(", written to {}", p.display())).unwrap_or_default();
    let _ = writeln!(s, "caller audio: {:.1} s streamed; agent audio heard: {:.1} s{written}", caller_ms as f64 / 1000.0, agent_ms as f64 / 1000.0);
    let _ = writeln!(s, "\ndialogue ({} messages):", outcome.dialogue.len());
    for m in &outcome.dialogue {
        let cut = if m.interrupted { " (interrupted)" } else { "" };
        let _ = writeln!(s, "  {:>3}. [{}]{cut} {}", m.seq, m.role, m.text);
    }
    let _ = writeln!(s, "\nanketa (each value with the messages it was read from):");
    if outcome.anketa.0.is_empty() {
        let _ = writeln!(s, "  (empty)");
    }
    for (field, value) in &outcome.anketa.0 {
        let description = fields.iter().find(|f| &f.name == field).map(|f| format!(" ({})", f.description.trim())).unwrap_or_default();
        let _ = writeln!(s, "  {field}{description}: {value}");
        let origin = outcome.provenance.get(field).cloned().unwrap_or_default();
        if origin.evidence.is_empty() {
            let _ = writeln!(s, "      no evidence cited");
        }
        for seq in &origin.evidence {
            let text = outcome.dialogue.iter().find(|m| m.seq == *seq).map(|m| format!(" {}: {}", m.role, m.text)).unwrap_or_default();
            let _ = writeln!(s, "      [{seq}]{text}");
        }
        let _ = writeln!(s, "      set by the extraction over messages 1-{}", origin.set_at);
        for past in &origin.history {
            let _ = writeln!(s, "      earlier {} (messages 1-{}, evidence {:?})", past.value, past.set_at, past.evidence);
        }
    }
    let latencies: Vec<String> = outcome.turn_latency_ms.iter().map(|ms| format!("{ms} ms")).collect();
    let _ = writeln!(s, "\nturn latency (caller speech end -> first agent audio): {}", if latencies.is_empty() { "no turns".to_owned() } else { latencies.join(", ") });
    let _ = writeln!(
        s,
        "realtime: {} connection(s), {} failed connect(s), {} unknown event(s), {} malformed frame(s)",
        stats.connects, stats.connect_failures, stats.unknown_events, stats.malformed_events
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use consultant_actors::provenance::{FieldProvenance, PastValue, Provenance};
    use consultant_actors::{Anketa, DialogueMessage, FieldKind, Role};
    use serde_json::json;

    #[test]
    fn the_summary_shows_each_value_with_its_evidence() {
        let at = chrono::Utc::now();
        let message = |seq, role, text: &str| DialogueMessage { seq, role, text: text.into(), at, interrupted: false };
        let mut anketa = Anketa::default();
        anketa.0.insert("client_name".into(), json!("Иван"));
        anketa.0.insert("task".into(), json!("вклад"));
        let mut provenance = Provenance::default();
        let history = vec![PastValue { value: json!("Ваня"), evidence: vec![2], set_at: 2 }];
        provenance.fields.insert("client_name".into(), FieldProvenance { evidence: vec![4], set_at: 5, history });
        provenance.fields.insert("task".into(), FieldProvenance { evidence: Vec::new(), set_at: 5, history: Vec::new() });
        let outcome = SessionOutcome {
            session_id: SessionId::parse("sim").unwrap(),
            room: "consultation-sim".into(),
            status: SessionStatus::Completed,
            failure: None,
            reason: "caller left".into(),
            dialogue: vec![message(1, Role::Assistant, "Как вас зовут?"), message(2, Role::User, "Ваня"), message(3, Role::Assistant, "Полное имя?"), message(4, Role::User, "Иван")],
            anketa,
            provenance,
            started_at: at,
            ended_at: at,
            turn_latency_ms: Vec::new(),
        };
        let fields = [AnketaField { name: "client_name".into(), description: "Имя клиента".into(), kind: FieldKind::Text, required: true }];
        let stats = crate::realtime::RealtimeStatsSnapshot::default();
        let text = text_summary(&outcome, &fields, 1000, 1000, None, &stats);
        let anketa = text.split("\nanketa").nth(1).unwrap();
        let expected = " (each value with the messages it was read from):
  client_name (Имя клиента): \"Иван\"
      [4] user: Иван
      set by the extraction over messages 1-5
      earlier \"Ваня\" (messages 1-2, evidence [2])
  task: \"вклад\"
      no evidence cited
      set by the extraction over messages 1-5
";
        assert!(anketa.starts_with(expected), "{text}");
    }
}
