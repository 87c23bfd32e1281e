//! The interactive console (ratatui): supervision tree on the left, detail of the selected
//! actor or consultation on the right, event log below. Keys: arrows/j/k move, `/` filters,
//! `e` end, `r` reconnect, `x` extract, `d` drain, `l` log level (each asks y/n), `q` quits.
//!
//! This module holds the state, the input handling and the terminal loop; `views` draws.

mod views;

use std::time::Duration;

use consultant_actors::telemetry::ActorInfo;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::widgets::ListState;
use tokio::sync::mpsc;

use super::client::{ClientError, ConsoleClient};
use super::protocol::{Action, Command, ConsoleModel, ServerFrame};

/// One line of the tree.
#[derive(Clone, Debug)]
struct Row {
    path: String,
    depth: usize,
}

#[derive(Clone, Debug, PartialEq)]
enum Mode {
    Normal,
    /// Typing a filter.
    Filter(String),
    /// Typing a log filter for the log-level action.
    LevelInput(String),
    /// Waiting for y/n.
    Confirm(Action),
}

/// What the UI shows and does (no terminal code here, so tests can drive it).
pub struct App {
    pub url: String,
    pub scope: String,
    pub model: ConsoleModel,
    rows: Vec<Row>,
    list: ListState,
    filter: String,
    mode: Mode,
    status: String,
    next_id: u64,
    pub quit: bool,
    pub connected: bool,
}

impl App {
    pub fn new(url: String) -> Self {
        Self {
            url,
            scope: String::new(),
            model: ConsoleModel::default(),
            rows: Vec::new(),
            list: ListState::default(),
            filter: String::new(),
            mode: Mode::Normal,
            status: "connecting...".into(),
            next_id: 1,
            quit: false,
            connected: false,
        }
    }

    fn rebuild_rows(&mut self) {
        let selected = self.selected_path();
        let needle = self.filter.to_lowercase();
        self.rows = self
            .model
            .actors
            .values()
            .filter(|a| needle.is_empty() || self.matches(a, &needle))
            .map(|a| Row { path: a.path.clone(), depth: a.path.matches('/').count().saturating_sub(1).min(2) })
            .collect();
        let index = selected.and_then(|p| self.rows.iter().position(|r| r.path == p));
        self.list.select(match (index, self.rows.is_empty()) {
            (_, true) => None,
            (Some(i), _) => Some(i),
            (None, _) => Some(0),
        });
    }

    fn matches(&self, actor: &ActorInfo, needle: &str) -> bool {
        let c = consultation_of(&actor.path).and_then(|id| self.model.consultations.get(id));
        actor.path.to_lowercase().contains(needle)
            || actor.status.as_str().contains(needle)
            || c.is_some_and(|c| c.room.to_lowercase().contains(needle) || c.status.as_str().contains(needle))
    }

    fn selected_path(&self) -> Option<String> {
        self.list.selected().and_then(|i| self.rows.get(i)).map(|r| r.path.clone())
    }

    fn selected_consultation(&self) -> Option<String> {
        self.selected_path().and_then(|p| consultation_of(&p).map(str::to_owned))
    }

    /// Applies a frame from the server.
    pub fn on_frame(&mut self, frame: ServerFrame) {
        match &frame {
            ServerFrame::Hello { scope, .. } => self.scope = scope.clone(),
            ServerFrame::Result { ok, message, .. } => self.status = format!("{} {message}", if *ok { "OK:" } else { "FAILED:" }),
            ServerFrame::Ack { message, .. } => self.status = format!("accepted: {message}"),
            ServerFrame::Error { code, message, .. } => self.status = format!("error {code}: {message}"),
            _ => {}
        }
        if self.model.apply(&frame) {
            if matches!(frame, ServerFrame::Snapshot(_)) {
                self.connected = true;
                self.status = format!("connected ({} scope)", if self.scope.is_empty() { "?" } else { &self.scope });
            }
            self.rebuild_rows();
        }
    }

    /// Handles a key; returns a command to send, if any.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Command> {
        if key.kind != KeyEventKind::Press {
            return None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return None;
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Filter(mut text) => {
                match key.code {
                    KeyCode::Enter => {
                        self.filter = text;
                        self.rebuild_rows();
                    }
                    KeyCode::Esc => {}
                    KeyCode::Backspace => {
                        text.pop();
                        self.mode = Mode::Filter(text);
                    }
                    KeyCode::Char(c) => {
                        text.push(c);
                        self.mode = Mode::Filter(text);
                    }
                    _ => self.mode = Mode::Filter(text),
                }
                None
            }
            Mode::LevelInput(mut text) => {
                match key.code {
                    KeyCode::Enter if !text.trim().is_empty() => self.mode = Mode::Confirm(Action::LogLevel { filter: text.trim().to_owned() }),
                    KeyCode::Esc | KeyCode::Enter => {}
                    KeyCode::Backspace => {
                        text.pop();
                        self.mode = Mode::LevelInput(text);
                    }
                    KeyCode::Char(c) => {
                        text.push(c);
                        self.mode = Mode::LevelInput(text);
                    }
                    _ => self.mode = Mode::LevelInput(text),
                }
                None
            }
            Mode::Confirm(action) => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.status = format!("sent: {}", action.describe());
                    Some(Command::Action { id: Some(id), action })
                }
                _ => {
                    self.status = "cancelled".into();
                    None
                }
            },
            Mode::Normal => {
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => self.quit = true,
                    KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
                    KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
                    KeyCode::PageDown => self.move_by(10),
                    KeyCode::PageUp => self.move_by(-10),
                    KeyCode::Home => self.move_by(i64::MIN / 2),
                    KeyCode::End => self.move_by(i64::MAX / 2),
                    KeyCode::Char('/') => self.mode = Mode::Filter(self.filter.clone()),
                    KeyCode::Char('d') => self.mode = Mode::Confirm(Action::Drain),
                    KeyCode::Char('l') => self.mode = Mode::LevelInput(String::new()),
                    KeyCode::Char(c @ ('e' | 'r' | 'x')) => match self.selected_consultation() {
                        Some(session_id) => {
                            self.mode = Mode::Confirm(match c {
                                'e' => Action::EndConsultation { session_id },
                                'r' => Action::ForceReconnect { session_id },
                                _ => Action::ExtractNow { session_id },
                            })
                        }
                        None => self.status = "select a consultation (or one of its actors) first".into(),
                    },
                    _ => {}
                }
                None
            }
        }
    }

    fn move_by(&mut self, delta: i64) {
        if self.rows.is_empty() {
            return;
        }
        let current = self.list.selected().unwrap_or(0) as i64;
        let next = current.saturating_add(delta).clamp(0, self.rows.len() as i64 - 1);
        self.list.select(Some(next as usize));
    }
}

/// The session id when `path` is a consultation or one of its children.
fn consultation_of(path: &str) -> Option<&str> {
    path.strip_prefix("worker/consultation/").map(|rest| rest.split('/').next().unwrap_or(rest))
}

/// What the UI loop waits on.
enum Input {
    Key(KeyEvent),
    Resize,
    Frame(Result<ServerFrame, ClientError>),
}

/// Runs the interactive console until `q`. The terminal is restored on every exit path.
pub async fn run(url: String, client: ConsoleClient) -> anyhow::Result<()> {
    let client_scope = client.scope().to_owned();
    let (input_tx, mut input_rx) = mpsc::channel::<Input>(256);
    let (command_tx, mut command_rx) = mpsc::channel::<Command>(16);
    // The network: frames in, commands out.
    let net_tx = input_tx.clone();
    let network = tokio::spawn(async move {
        let mut client = client;
        if client.send(&Command::Subscribe { topics: None }).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                frame = client.next_frame() => {
                    let end = frame.is_err();
                    if net_tx.send(Input::Frame(frame)).await.is_err() || end {
                        return;
                    }
                }
                Some(command) = command_rx.recv() => {
                    if client.send(&command).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    // The keyboard: crossterm reads block, so they live on their own thread.
    let key_tx = input_tx.clone();
    let keyboard = std::thread::spawn(move || loop {
        match event::poll(Duration::from_millis(200)) {
            Ok(true) => match event::read() {
                Ok(Event::Key(k)) => {
                    if key_tx.blocking_send(Input::Key(k)).is_err() {
                        return;
                    }
                }
                Ok(Event::Resize(..)) => {
                    if key_tx.blocking_send(Input::Resize).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            },
            Ok(false) => {
                if key_tx.is_closed() {
                    return;
                }
            }
            Err(_) => return,
        }
    });
    drop(input_tx);
    let mut terminal = ratatui::try_init()?;
    let mut app = App::new(url);
    app.scope = client_scope;
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    let result: anyhow::Result<()> = loop {
        if let Err(e) = terminal.draw(|f| app.draw(f)) {
            break Err(e.into());
        }
        if app.quit {
            break Ok(());
        }
        tokio::select! {
            _ = redraw.tick() => {}
            input = input_rx.recv() => match input {
                None => break Ok(()),
                Some(Input::Key(key)) => {
                    if let Some(command) = app.on_key(key) {
                        let _ = command_tx.try_send(command);
                    }
                }
                Some(Input::Resize) => {}
                Some(Input::Frame(Ok(frame))) => app.on_frame(frame),
                Some(Input::Frame(Err(e))) => {
                    app.connected = false;
                    app.status = format!("DISCONNECTED: {e} (q to quit)");
                }
            },
        }
    };
    ratatui::restore();
    network.abort();
    drop(input_rx);
    let _ = keyboard.join();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::protocol::Snapshot;
    use chrono::Utc;
    use consultant_actors::dialogue::SessionId;
    use consultant_actors::session::SessionStatus;
    use consultant_actors::telemetry::{ActorStatus, ConsultationView, TelemetrySnapshot, WorkerView};
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::KeyEventState;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent { code: c, modifiers: KeyModifiers::NONE, kind: KeyEventKind::Press, state: KeyEventState::NONE }
    }

    fn app() -> App {
        app_with(ConsultationView::starting(SessionId::parse("abc").unwrap(), "consultation-abc".into(), SessionStatus::Active, Utc::now(), 1800, 0))
    }

    fn app_with(consultation: ConsultationView) -> App {
        let mut app = App::new("ws://test".into());
        let actor = |path: &str, kind: &'static str, status: ActorStatus| ActorInfo {
            path: path.into(),
            kind: kind.into(),
            status,
            started_at: Utc::now(),
            restarts_in_window: 0,
            total_restarts: 0,
            last_failure: None,
        };
        let snap = Snapshot {
            board: TelemetrySnapshot {
                worker: WorkerView { mode: "dev".into(), ..Default::default() },
                actors: vec![
                    actor("worker", "supervisor", ActorStatus::Running),
                    actor("worker/consultation/abc", "consultation", ActorStatus::Running),
                    actor("worker/consultation/abc/realtime", "realtime", ActorStatus::Restarting),
                ],
                consultations: vec![consultation],
                ..Default::default()
            },
            ..Default::default()
        };
        app.on_frame(ServerFrame::Snapshot(Box::new(snap)));
        app
    }

    #[test]
    fn navigates_filters_and_confirms_actions() {
        let mut app = app();
        assert_eq!(app.selected_path().as_deref(), Some("worker"));
        assert!(app.on_key(key(KeyCode::Char('e'))).is_none());
        assert!(app.status.contains("select a consultation"));
        app.on_key(key(KeyCode::Down));
        assert!(app.on_key(key(KeyCode::Char('e'))).is_none());
        let cmd = app.on_key(key(KeyCode::Char('y'))).unwrap();
        assert!(matches!(cmd, Command::Action { action: Action::EndConsultation { ref session_id }, .. } if session_id == "abc"));
        app.on_key(key(KeyCode::Char('d')));
        assert!(app.on_key(key(KeyCode::Char('n'))).is_none());
        for c in "/realtime".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.rows.len(), 1);
        assert_eq!(app.selected_consultation().as_deref(), Some("abc"));
    }

    #[test]
    fn draws_tree_and_consultation_detail() {
        let mut app = app();
        app.on_key(key(KeyCode::Down));
        let mut terminal = ratatui::Terminal::new(TestBackend::new(160, 40)).unwrap();
        terminal.draw(|f| app.draw(f)).unwrap();
        let text: String = terminal.backend().buffer().content().iter().map(|c| c.symbol()).collect();
        assert!(text.contains("consultation abc [running]"), "{text}");
        assert!(text.contains("realtime [restarting]"));
        assert!(text.contains("room: consultation-abc"));
        assert!(text.contains("metrics: finished ()  voice-to-voice - over 0 turns  barge-ins 0"), "{text}");
    }

    #[test]
    fn the_consultation_detail_shows_the_anketa_with_its_evidence() {
        use consultant_actors::anketa::{Anketa, AnketaField, FieldKind};
        use consultant_actors::provenance::{FieldProvenance, PastValue, Provenance};
        use consultant_actors::telemetry::AnketaFieldView;
        let mut view = ConsultationView::starting(SessionId::parse("abc").unwrap(), "consultation-abc".into(), SessionStatus::Active, Utc::now(), 1800, 2);
        let mut anketa = Anketa::default();
        anketa.0.insert("client_name".into(), serde_json::json!("Иван"));
        anketa.0.insert("task".into(), serde_json::json!("вклад"));
        let mut provenance = Provenance::default();
        let history = vec![PastValue { value: serde_json::json!("Ваня"), evidence: vec![2], set_at: 6 }];
        provenance.fields.insert("client_name".into(), FieldProvenance { evidence: vec![2, 4], set_at: 12, history });
        let fields = [
            AnketaField { name: "client_name".into(), description: "Имя клиента".into(), kind: FieldKind::Text, required: true },
            AnketaField { name: "task".into(), description: "Задача".into(), kind: FieldKind::Text, required: true },
        ];
        view.anketa = AnketaFieldView::list(&anketa, &provenance, &fields);
        view.evidence_dropped = 3;
        let mut app = app_with(view);
        app.on_key(key(KeyCode::Down));
        let mut terminal = ratatui::Terminal::new(TestBackend::new(200, 40)).unwrap();
        terminal.draw(|f| app.draw(f)).unwrap();
        let buffer = terminal.backend().buffer();
        let rows: Vec<String> = (0..buffer.area.height)
            .map(|y| (0..buffer.area.width).map(|x| buffer[(x, y)].symbol()).collect::<String>())
            .collect();
        let has = |needle: &str| rows.iter().any(|r| r.contains(needle));
        assert!(has("Имя клиента = Иван  <- messages 2, 4 (set at 12; was \"Ваня\")"), "{rows:#?}");
        assert!(has("Задача = вклад  <- no evidence (set at 0)"), "{rows:#?}");
        assert!(has("(0 runs, 0 failed, 3 citations dropped)"), "{rows:#?}");
    }
}
