//! The hub: one task owns what the consoles have been told. Once a tick it diffs the
//! telemetry board against what it last published and sends one shared delta frame per
//! changed topic; telemetry events are batched and pushed at once. Frames go to each client
//! through a small bounded queue; a client whose queue is full is dropped and counted, so a
//! stuck console never grows memory and never slows an actor.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consultant_actors::telemetry::{Telemetry, TelemetryEvent, TelemetrySnapshot};
use serde::Serialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{mpsc, oneshot, watch};

use super::protocol::{ConsoleStats, PROTOCOL_VERSION};
pub use crate::process_stats::{cpu_ticks, rss_bytes, ProcessSampler};

/// A serialized server frame, shared by every client it goes to.
pub type Frame = Arc<str>;

/// Most events put in one `events` frame.
const EVENT_BATCH: usize = 64;

/// Topics one client follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topics {
    pub worker: bool,
    pub tree: bool,
    pub consultations: bool,
    pub events: bool,
}

impl Topics {
    pub const ALL: Topics = Topics { worker: true, tree: true, consultations: true, events: true };

    /// Parses topic names; an unknown one is an error naming the known ones.
    pub fn parse(names: Option<&[String]>) -> Result<Topics, String> {
        let Some(names) = names else { return Ok(Topics::ALL) };
        let mut t = Topics { worker: false, tree: false, consultations: false, events: false };
        for name in names {
            match name.as_str() {
                "worker" => t.worker = true,
                "tree" => t.tree = true,
                "consultations" => t.consultations = true,
                "events" => t.events = true,
                other => {
                    return Err(format!(
                        "unknown topic `{other}`; topics: {}",
                        super::protocol::TOPICS.join(", ")
                    ))
                }
            }
        }
        Ok(t)
    }
}

/// The console's counters (shared with connections and the server handle).
#[derive(Default)]
pub struct Counters {
    pub clients: AtomicUsize,
    pub max_clients: AtomicUsize,
    pub connections_total: AtomicU64,
    pub auth_failures: AtomicU64,
    pub rejected_full: AtomicU64,
    pub slow_clients_dropped: AtomicU64,
    pub bad_frames: AtomicU64,
    pub events_lost: AtomicU64,
    pub actions: AtomicU64,
    /// Time the hub spent building and sending frames (for the benchmark).
    pub publish_nanos: AtomicU64,
    pub deltas_sent: AtomicU64,
}

impl Counters {
    pub fn stats(&self) -> ConsoleStats {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConsoleStats {
            clients: self.clients.load(Ordering::Relaxed),
            max_clients: self.max_clients.load(Ordering::Relaxed),
            connections_total: n(&self.connections_total),
            auth_failures: n(&self.auth_failures),
            rejected_full: n(&self.rejected_full),
            slow_clients_dropped: n(&self.slow_clients_dropped),
            bad_frames: n(&self.bad_frames),
            events_lost: n(&self.events_lost),
            actions: n(&self.actions),
        }
    }
}

pub enum HubRequest {
    /// Live updates for a client: the hub queues a snapshot first, then deltas and events.
    Join { client: u64, topics: Topics, tx: mpsc::Sender<Frame>, dropped: Arc<AtomicBool> },
    Leave { client: u64 },
    /// One snapshot frame.
    Snapshot { reply: oneshot::Sender<Frame> },
}

struct Client {
    topics: Topics,
    tx: mpsc::Sender<Frame>,
    /// Set when the hub drops the client for falling behind.
    dropped: Arc<AtomicBool>,
}

/// What clients were last told, as serialized JSON per item. An empty string marks an item
/// whose value a late joiner saw and that must be re-sent on the next tick.
#[derive(Default)]
struct Published {
    worker: String,
    actors: HashMap<String, String>,
    consultations: HashMap<String, String>,
}

/// The board serialized item by item.
struct Serialized {
    worker: String,
    actors: Vec<(String, String)>,
    consultations: Vec<(String, String)>,
    events: String,
    events_dropped: u64,
}

pub struct Hub {
    telemetry: Telemetry,
    counters: Arc<Counters>,
    clients: HashMap<u64, Client>,
    published: Published,
    events_lost_pending: u64,
    process: ProcessSampler,
}

impl Hub {
    /// `process` is the worker's shared sampler, so the console shows what LiveKit is told.
    pub fn new(telemetry: Telemetry, counters: Arc<Counters>, process: ProcessSampler) -> Self {
        Self { telemetry, counters, clients: HashMap::new(), published: Published::default(), events_lost_pending: 0, process }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut requests: mpsc::Receiver<HubRequest>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut events = self.telemetry.subscribe();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { return; }
                }
                _ = tick.tick() => self.publish(),
                received = events.recv() => match received {
                    Ok(first) => {
                        let mut batch = vec![first];
                        while batch.len() < EVENT_BATCH {
                            match events.try_recv() {
                                Ok(e) => batch.push(e),
                                Err(TryRecvError::Lagged(n)) => self.events_lost_pending += n,
                                Err(_) => break,
                            }
                        }
                        self.push_events(&batch);
                    }
                    Err(RecvError::Lagged(n)) => self.events_lost_pending += n,
                    Err(RecvError::Closed) => return,
                },
                Some(request) = requests.recv() => self.on_request(request),
            }
        }
    }

    fn on_request(&mut self, request: HubRequest) {
        match request {
            HubRequest::Join { client, topics, tx, dropped } => {
                let started = Instant::now();
                let snapshot = self.snapshot_frame();
                if tx.try_send(snapshot).is_ok() {
                    self.clients.insert(client, Client { topics, tx, dropped });
                }
                self.account(started);
            }
            HubRequest::Leave { client } => {
                self.clients.remove(&client);
            }
            HubRequest::Snapshot { reply } => {
                let started = Instant::now();
                let _ = reply.send(self.snapshot_frame());
                self.account(started);
            }
        }
    }

    fn account(&self, started: Instant) {
        self.counters.publish_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn serialize(&mut self) -> Serialized {
        let stats = self.process.sample();
        self.telemetry.worker_update(|w| stats.show(w));
        let TelemetrySnapshot { worker, actors, consultations, events, events_dropped } = self.telemetry.snapshot();
        let worker = to_json(&WorkerTopic { worker: &worker, console: self.counters.stats() });
        Serialized {
            worker,
            actors: actors.iter().map(|a| (a.path.clone(), to_json(a))).collect(),
            consultations: consultations.iter().map(|c| (c.session_id.to_string(), to_json(c))).collect(),
            events: to_json(&events),
            events_dropped,
        }
    }

    /// A full snapshot frame. Items the published state does not match are marked so the
    /// next tick re-sends them: a late joiner's snapshot and the shared deltas then agree.
    fn snapshot_frame(&mut self) -> Frame {
        let s = self.serialize();
        if self.clients.is_empty() {
            // Nobody holds older state: what this client sees is what is published.
            self.published.worker = s.worker.clone();
            self.published.actors = s.actors.iter().cloned().collect();
            self.published.consultations = s.consultations.iter().cloned().collect();
        } else {
            if self.published.worker != s.worker {
                self.published.worker.clear();
            }
            mark_stale(&mut self.published.actors, &s.actors);
            mark_stale(&mut self.published.consultations, &s.consultations);
        }
        let mut out = String::with_capacity(s.worker.len() + 64 + s.events.len() + 512 * (s.actors.len() + s.consultations.len()));
        // `worker` holds {"worker":..,"console":..}: splice its fields in.
        let _ = write!(out, "{{\"v\":{PROTOCOL_VERSION},\"type\":\"snapshot\",{}", &s.worker[1..s.worker.len() - 1]);
        out.push_str(",\"actors\":");
        join_array(&mut out, s.actors.iter().map(|(_, j)| j.as_str()));
        out.push_str(",\"consultations\":");
        join_array(&mut out, s.consultations.iter().map(|(_, j)| j.as_str()));
        let _ = write!(out, ",\"events\":{},\"events_dropped\":{}}}", s.events, s.events_dropped);
        out.into()
    }

    /// Once a tick: one delta frame per changed topic, shared by every subscriber.
    fn publish(&mut self) {
        if self.clients.is_empty() {
            // Nothing to tell; the next joiner gets a fresh snapshot anyway.
            return;
        }
        let started = Instant::now();
        let s = self.serialize();
        if s.worker != self.published.worker {
            let body = &s.worker[1..s.worker.len() - 1];
            let frame: Frame = format!("{{\"v\":{PROTOCOL_VERSION},\"type\":\"delta\",\"topic\":\"worker\",{body}}}").into();
            self.published.worker = s.worker;
            self.fan_out(|t| t.worker, &frame);
        }
        if let Some(frame) = diff_topic("tree", &mut self.published.actors, s.actors) {
            self.fan_out(|t| t.tree, &frame);
        }
        if let Some(frame) = diff_topic("consultations", &mut self.published.consultations, s.consultations) {
            self.fan_out(|t| t.consultations, &frame);
        }
        self.account(started);
    }

    fn push_events(&mut self, batch: &[TelemetryEvent]) {
        if self.clients.is_empty() {
            self.events_lost_pending = 0;
            return;
        }
        let started = Instant::now();
        let lost = std::mem::take(&mut self.events_lost_pending);
        if lost > 0 {
            self.counters.events_lost.fetch_add(lost, Ordering::Relaxed);
        }
        let frame: Frame =
            format!("{{\"v\":{PROTOCOL_VERSION},\"type\":\"events\",\"events\":{},\"lost\":{lost}}}", to_json(&batch)).into();
        self.fan_out(|t| t.events, &frame);
        self.account(started);
    }

    fn fan_out(&mut self, wants: impl Fn(&Topics) -> bool, frame: &Frame) {
        let mut gone = Vec::new();
        for (id, client) in &self.clients {
            if !wants(&client.topics) {
                continue;
            }
            match client.tx.try_send(frame.clone()) {
                Ok(()) => {
                    self.counters.deltas_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    client.dropped.store(true, Ordering::Relaxed);
                    self.counters.slow_clients_dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(client = id, "console client fell behind; dropping it");
                    gone.push(*id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(*id),
            }
        }
        for id in gone {
            // Dropping the sender closes the client's queue: its connection ends.
            self.clients.remove(&id);
        }
    }
}

#[derive(Serialize)]
struct WorkerTopic<'a> {
    worker: &'a consultant_actors::telemetry::WorkerView,
    console: ConsoleStats,
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("telemetry views serialize")
}

fn join_array<'a>(out: &mut String, items: impl Iterator<Item = &'a str>) {
    out.push('[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
}

fn mark_stale(published: &mut HashMap<String, String>, current: &[(String, String)]) {
    for (key, json) in current {
        match published.get_mut(key) {
            Some(old) if old == json => {}
            Some(old) => old.clear(),
            None => {
                published.insert(key.clone(), String::new());
            }
        }
    }
}

/// Diffs one keyed topic against what was published; None when nothing changed.
fn diff_topic(topic: &str, published: &mut HashMap<String, String>, current: Vec<(String, String)>) -> Option<Frame> {
    let mut upserts: Vec<&str> = Vec::new();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::with_capacity(current.len());
    for (key, json) in &current {
        seen.insert(key);
        if published.get(key) != Some(json) {
            upserts.push(json);
        }
    }
    let removed: Vec<String> = published.keys().filter(|k| !seen.contains(k.as_str())).cloned().collect();
    if upserts.is_empty() && removed.is_empty() {
        return None;
    }
    let mut out = format!("{{\"v\":{PROTOCOL_VERSION},\"type\":\"delta\",\"topic\":\"{topic}\",\"upsert\":");
    join_array(&mut out, upserts.into_iter());
    let _ = write!(out, ",\"remove\":{}}}", to_json(&removed));
    for key in &removed {
        published.remove(key);
    }
    for (key, json) in current {
        published.insert(key, json);
    }
    Some(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::protocol::{ConsoleModel, ServerFrame};
    use crate::realtime::RealtimeStats;
    use chrono::Utc;
    use consultant_actors::ports::TokenUsage;
    use consultant_actors::telemetry::{ConsultationView, JobView, RealtimeLinkState, RealtimeView};
    use consultant_actors::{Role, SessionId, SessionStatus};

    /// A board with every kind of value the console shows.
    fn busy_board() -> Telemetry {
        let telemetry = Telemetry::new();
        telemetry.actor_started("worker", "supervisor");
        telemetry.actor_started("worker/consultation/abc", "consultation");
        telemetry.actor_started("worker/consultation/abc/realtime", "realtime");
        telemetry.actor_failed("worker/consultation/abc/realtime", "upstream refused (503)", 2, true);
        let started = Utc::now();
        let mut view = ConsultationView {
            session_id: SessionId::parse("abc").unwrap(),
            room: "consultation-abc".into(),
            status: SessionStatus::Active,
            started_at: started,
            max_duration_secs: 1800,
            messages: 0,
            transcript_tail: Default::default(),
            turn_latency_ms: Default::default(),
            usage: TokenUsage { input_tokens: 1200, output_tokens: 45, ..Default::default() },
            realtime: RealtimeView {
                link: RealtimeLinkState::Reconnecting { attempt: 2 },
                connected_at: Some(started),
                recycle_after_secs: Some(1500),
                last_close_cause: Some("server closed the socket (1011)".into()),
                reconnects: 3,
                unknown_events: 1,
            },
            anketa_filled: 1,
            anketa_fields: 2,
            last_extraction_at_message: Some(2),
            extractions: 1,
            extraction_failures: 1,
            anketa: Vec::new(),
            evidence_dropped: 0,
            persistence_backlog: 1,
            caller_buffer_ms: 240,
            caller_dropped_ms: 20,
            failure: Some("extraction timed out".into()),
            caller_backlog_frames: 0,
            agent_queue_ms: 0,
            resumed_from: None,
        };
        view.push_line(1, Role::User, "Здравствуйте, меня зовут Иван");
        view.push_line(2, Role::Assistant, "Добрый день, Иван");
        view.push_latency(420);
        view.push_latency(380);
        telemetry.consultation_upsert(view);
        let stats = RealtimeStats::default();
        RealtimeStats::add(&stats.connects, 4);
        RealtimeStats::add(&stats.events_parsed, 120);
        stats.unknown("response.mystery");
        telemetry.worker_update(|w| {
            w.mode = "dev".into();
            w.agent_name = "consultant".into();
            w.registration = "registered".into();
            w.worker_id = Some("AW_1".into());
            w.reconnect_attempt = 1;
            w.status = "available".into();
            w.load = 0.25;
            w.capacity = 4;
            w.jobs = vec![JobView {
                job_id: "AJ_1".into(),
                room: "consultation-abc".into(),
                session_id: Some(SessionId::parse("abc").unwrap()),
                state: "running".into(),
                started_at: started,
            }];
            w.started_at = Some(started);
            w.realtime = stats.snapshot().into();
        });
        telemetry
    }

    fn counters() -> Arc<Counters> {
        let counters = Arc::new(Counters::default());
        counters.max_clients.store(8, Ordering::Relaxed);
        counters.connections_total.store(5, Ordering::Relaxed);
        counters.auth_failures.store(2, Ordering::Relaxed);
        counters
    }

    fn assert_model_shows(model: &ConsoleModel, board: &TelemetrySnapshot) {
        assert_eq!(model.worker, board.worker);
        assert_eq!(model.actors.values().cloned().collect::<Vec<_>>(), board.actors);
        assert_eq!(model.consultations.values().cloned().collect::<Vec<_>>(), board.consultations);
        assert_eq!(model.events.iter().cloned().collect::<Vec<_>>(), board.events);
        assert_eq!(model.events_dropped, board.events_dropped);
    }

    #[test]
    fn a_snapshot_round_trips_into_the_clients_model() {
        let telemetry = busy_board();
        let counters = counters();
        let mut hub = Hub::new(telemetry.clone(), counters.clone(), ProcessSampler::new());
        let text = hub.snapshot_frame();
        let frame: ServerFrame = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let mut model = ConsoleModel::default();
        assert!(model.apply(&frame));
        // Read after the frame: the hub put the process figures on the board as it sent them.
        let board = telemetry.snapshot();
        assert!(!board.consultations[0].transcript_tail.is_empty() && board.actors.iter().any(|a| a.last_failure.is_some()));
        assert_model_shows(&model, &board);
        assert_eq!(model.console, counters.stats());
        // What the client reads serializes back to what the server sent.
        let ServerFrame::Snapshot(snapshot) = &frame else { panic!("not a snapshot: {frame:?}") };
        assert_eq!(to_json(&snapshot.board.consultations[0]), to_json(&board.consultations[0]));
        assert_eq!(to_json(&snapshot.board.worker), to_json(&board.worker));
    }

    #[test]
    fn deltas_bring_the_model_to_the_board() {
        let telemetry = busy_board();
        let mut hub = Hub::new(telemetry.clone(), counters(), ProcessSampler::new());
        let (tx, mut rx) = mpsc::channel(16);
        hub.on_request(HubRequest::Join { client: 1, topics: Topics::ALL, tx, dropped: Arc::new(AtomicBool::new(false)) });
        let id = SessionId::parse("abc").unwrap();
        telemetry.consultation_update(&id, |c| {
            c.push_line(3, Role::User, "Я хочу открыть вклад");
            c.realtime.link = RealtimeLinkState::Connected;
        });
        telemetry.actor_failed("worker/consultation/abc/realtime", "gave up", 3, false);
        telemetry.actor_removed("worker/consultation/abc");
        telemetry.worker_update(|w| w.load = 0.5);
        hub.publish();
        let mut model = ConsoleModel::default();
        let mut frames = 0;
        while let Ok(text) = rx.try_recv() {
            let frame: ServerFrame = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(model.apply(&frame), "{frame:?}");
            frames += 1;
        }
        assert_eq!(frames, 4, "a snapshot, then worker, tree and consultations deltas");
        let mut board = telemetry.snapshot();
        // The CPU average is a float parsed back from JSON: equal to within rounding.
        assert!((model.worker.cpu_percent - board.worker.cpu_percent).abs() < 1e-9);
        board.worker.cpu_percent = model.worker.cpu_percent;
        // Events come in their own frames, pushed by the run loop.
        model.events = board.events.iter().cloned().collect();
        assert_model_shows(&model, &board);
        assert_eq!(model.actors.keys().collect::<Vec<_>>(), vec!["worker"]);
        assert_eq!(model.consultations["abc"].realtime.link, RealtimeLinkState::Connected);
    }

    #[test]
    fn diff_sends_changes_and_removals_only() {
        let mut published = HashMap::new();
        let first = vec![("a".to_owned(), "{\"x\":1}".to_owned()), ("b".to_owned(), "{\"x\":2}".to_owned())];
        let f = diff_topic("tree", &mut published, first.clone()).unwrap();
        assert!(f.contains("\"upsert\":[{\"x\":1},{\"x\":2}]") && f.contains("\"remove\":[]"), "{f}");
        assert!(diff_topic("tree", &mut published, first).is_none());
        let second = vec![("a".to_owned(), "{\"x\":3}".to_owned())];
        let f = diff_topic("tree", &mut published, second).unwrap();
        assert!(f.contains("\"upsert\":[{\"x\":3}]") && f.contains("\"remove\":[\"b\"]"), "{f}");
    }

    #[test]
    fn a_late_joiners_view_is_resent() {
        let mut published: HashMap<String, String> = [("a".to_owned(), "1".to_owned())].into();
        mark_stale(&mut published, &[("a".to_owned(), "2".to_owned()), ("c".to_owned(), "3".to_owned())]);
        // The value went back to what was published before the tick: still re-sent.
        let f = diff_topic("tree", &mut published, vec![("a".to_owned(), "1".to_owned())]).unwrap();
        assert!(f.contains("\"upsert\":[1]") && f.contains("\"remove\":[\"c\"]"), "{f}");
    }

    #[test]
    fn process_sampler_reads_proc() {
        let s = ProcessSampler::new();
        assert!(s.sample().rss_bytes > 1_000_000);
        assert!(cpu_ticks().is_some());
    }
}
