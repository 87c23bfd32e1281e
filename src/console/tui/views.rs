//! Drawing the console: header, supervision tree, detail pane, event log and footer.

use chrono::{DateTime, Utc};
use consultant_actors::telemetry::{ActorStatus, AnketaFieldView, ConsultationView, HistogramSnapshot, MetricsSnapshot};
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, List, ListItem, Paragraph, Wrap};
use ratatui::Frame;

use super::{consultation_of, App, Mode};

impl App {
    pub fn draw(&mut self, frame: &mut Frame) {
        let outer = Layout::default()
            .direction(Direction::Vertical)
            .constraints([Constraint::Length(4), Constraint::Min(8), Constraint::Length(9), Constraint::Length(1)])
            .split(frame.area());
        frame.render_widget(Paragraph::new(self.header()), outer[0]);
        let middle = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Percentage(42), Constraint::Percentage(58)])
            .split(outer[1]);
        self.draw_tree(frame, middle[0]);
        let detail = Paragraph::new(self.detail())
            .block(Block::default().borders(Borders::ALL).title(" Detail "))
            .wrap(Wrap { trim: false });
        frame.render_widget(detail, middle[1]);
        self.draw_events(frame, outer[2]);
        frame.render_widget(Paragraph::new(self.footer()), outer[3]);
    }

    fn header(&self) -> Vec<Line<'static>> {
        let w = &self.model.worker;
        let c = &self.model.console;
        vec![
            Line::from(vec![
                Span::styled("consultant console ", Style::default().add_modifier(Modifier::BOLD)),
                Span::raw(format!("{}  scope: {}  ", self.url, if self.scope.is_empty() { "-" } else { &self.scope })),
                Span::raw(format!("consoles: {}/{}  dropped slow: {}", c.clients, c.max_clients, c.slow_clients_dropped)),
            ]),
            Line::from(format!(
                "worker [{}] {} registration: {}  status: {}  load: {:.2}  jobs: {}  draining: {}  rss: {} MB  cpu: {:.1}% ({:.2}% per call)  consultations: {}",
                or_dash(&w.mode),
                or_dash(&w.agent_name),
                or_dash(&w.registration),
                or_dash(&w.status),
                w.load,
                w.jobs.len(),
                if w.draining { "YES" } else { "no" },
                w.rss_bytes / 1_000_000,
                w.cpu_percent,
                w.cpu_percent_per_call,
                self.model.consultations.len()
            )),
            Line::from(format!(
                "realtime: {} connects, {} failed, {} drops, {} events ({} unknown{}, {} malformed, {} errors)",
                w.realtime.connects,
                w.realtime.connect_failures,
                w.realtime.disconnects,
                w.realtime.events_parsed,
                w.realtime.unknown_events,
                if w.realtime.unknown_event_types.is_empty() {
                    String::new()
                } else {
                    format!(": {}", w.realtime.unknown_event_types.iter().map(|(t, n)| format!("{t} x{n}")).collect::<Vec<_>>().join(", "))
                },
                w.realtime.malformed_events,
                w.realtime.error_events
            )),
            metrics_line(&w.metrics),
        ]
    }

    fn draw_tree(&mut self, frame: &mut Frame, area: Rect) {
        let items: Vec<ListItem> = self
            .rows
            .iter()
            .filter_map(|r| self.model.actors.get(&r.path).map(|a| (r, a)))
            .map(|(r, a)| {
                let name = a.path.rsplit('/').next().unwrap_or(&a.path);
                let name = if a.kind == "consultation" { format!("consultation {name}") } else { name.to_owned() };
                let failure = a.last_failure.as_deref().map(|f| format!("  last: {f}")).unwrap_or_default();
                let text = format!(
                    "{}{} [{}] restarts {}/{}{}",
                    "  ".repeat(r.depth),
                    name,
                    a.status,
                    a.restarts_in_window,
                    a.total_restarts,
                    failure
                );
                ListItem::new(text).style(Style::default().fg(status_color(a.status)))
            })
            .collect();
        let title = if self.filter.is_empty() { " Supervision tree ".to_owned() } else { format!(" Supervision tree (filter: {}) ", self.filter) };
        let list = List::new(items)
            .block(Block::default().borders(Borders::ALL).title(title))
            .highlight_style(Style::default().add_modifier(Modifier::REVERSED))
            .highlight_symbol("> ");
        frame.render_stateful_widget(list, area, &mut self.list);
    }

    fn draw_events(&self, frame: &mut Frame, area: Rect) {
        let rows = area.height.saturating_sub(2) as usize;
        let start = self.model.events.len().saturating_sub(rows);
        let items: Vec<ListItem> = self
            .model
            .events
            .iter()
            .skip(start)
            .map(|e| {
                let at = short_time(&e.at);
                let color = match e.kind.as_ref() {
                    "failure" => Color::Red,
                    "restart" | "realtime_error" => Color::Yellow,
                    "audit" => Color::Cyan,
                    _ => Color::Reset,
                };
                ListItem::new(format!("{at} {:<10} {} {}", e.kind, e.path, e.message)).style(Style::default().fg(color))
            })
            .collect();
        let title = format!(" Events ({} lost) ", self.model.events_dropped);
        frame.render_widget(List::new(items).block(Block::default().borders(Borders::ALL).title(title)), area);
    }

    fn footer(&self) -> Line<'static> {
        match &self.mode {
            Mode::Filter(text) => Line::from(format!("filter: {text}_   (Enter apply, Esc cancel)")),
            Mode::LevelInput(text) => Line::from(format!("log filter (e.g. debug, consultant=debug,info): {text}_   (Enter, Esc)")),
            Mode::Confirm(action) => Line::from(Span::styled(
                format!("{}? press y to confirm, any other key to cancel", action.describe()),
                Style::default().fg(Color::Yellow).add_modifier(Modifier::BOLD),
            )),
            Mode::Normal => Line::from(format!(
                "q quit  j/k move  / filter  e end  r reconnect  x extract  d drain  l log level | {}",
                self.status
            )),
        }
    }

    fn detail(&self) -> Vec<Line<'static>> {
        let Some(path) = self.selected_path() else { return vec![Line::from("nothing selected")] };
        let actor = self.model.actors.get(&path);
        let mut lines = Vec::new();
        if let Some(c) = consultation_of(&path).and_then(|id| self.model.consultations.get(id)) {
            lines.extend(consultation_lines(c));
            lines.push(Line::from(""));
            lines.push(Line::from("actors:"));
            let prefix = format!("worker/consultation/{}", c.session_id);
            for a in self.model.actors.values().filter(|a| a.path.starts_with(&prefix)) {
                lines.push(Line::from(format!(
                    "  {:<12} {:<10} restarts {}/{}  up since {}  last failure: {}",
                    a.kind,
                    a.status,
                    a.restarts_in_window,
                    a.total_restarts,
                    short_time(&a.started_at),
                    a.last_failure.as_deref().unwrap_or("-")
                )));
            }
        } else if let Some(a) = actor {
            lines.push(Line::from(Span::styled(a.path.clone(), Style::default().add_modifier(Modifier::BOLD))));
            lines.push(Line::from(format!("kind: {}  status: {}", a.kind, a.status)));
            lines.push(Line::from(format!("up: {}", since(a.started_at))));
            lines.push(Line::from(format!("restarts: {} in window, {} total", a.restarts_in_window, a.total_restarts)));
            lines.push(Line::from(format!("last failure: {}", a.last_failure.as_deref().unwrap_or("-"))));
            if a.kind == "supervisor" {
                let w = &self.model.worker;
                lines.push(Line::from(""));
                lines.push(Line::from(format!("worker id: {}  reconnect attempt: {}", w.worker_id.as_deref().unwrap_or("-"), w.reconnect_attempt)));
                lines.push(Line::from(format!("capacity: {}  jobs: {}", w.capacity, w.jobs.len())));
                lines.push(Line::from(format!(
                    "resumed from a dead worker: {}  dispatched again for a dead worker: {}",
                    w.resumed_consultations, w.redispatched_sessions
                )));
                for job in &w.jobs {
                    // The job as JSON, the way it arrived.
                    lines.push(Line::from(format!("  job {}", serde_json::json!(job))));
                }
            }
            if a.kind == "console" {
                let c = &self.model.console;
                lines.push(Line::from(format!(
                    "clients {}/{}  connections {}  auth failures {}  refused (full) {}  slow dropped {}  bad frames {}  actions {}",
                    c.clients, c.max_clients, c.connections_total, c.auth_failures, c.rejected_full, c.slow_clients_dropped, c.bad_frames, c.actions
                )));
            }
        }
        lines
    }
}

fn consultation_lines(c: &ConsultationView) -> Vec<Line<'static>> {
    let elapsed = (Utc::now() - c.started_at).num_seconds().max(0) as u64;
    let rt = &c.realtime;
    let age = rt.connected_at.map(since).unwrap_or_else(|| "-".into());
    let recycle = rt.recycle_after_secs.map(|s| mmss(s).to_string()).unwrap_or_else(|| "off".into());
    let latency = if c.turn_latency_ms.is_empty() {
        "-".to_owned()
    } else {
        let mut sorted: Vec<u64> = c.turn_latency_ms.iter().copied().collect();
        sorted.sort_unstable();
        let recent: Vec<String> = c.turn_latency_ms.iter().rev().take(6).map(|v| v.to_string()).collect();
        format!("p50 {} ms, max {} ms; recent {}", sorted[sorted.len() / 2], sorted[sorted.len() - 1], recent.join(" "))
    };
    let mut lines = vec![
        Line::from(Span::styled(format!("Consultation {}", c.session_id), Style::default().add_modifier(Modifier::BOLD))),
        Line::from(format!("room: {}  status: {}", c.room, c.status)),
        Line::from(format!(
            "timer: {} / {} (remaining {})",
            mmss(elapsed),
            mmss(c.max_duration_secs),
            mmss(c.max_duration_secs.saturating_sub(elapsed))
        )),
        Line::from(format!("realtime: {}  session age {} (recycle after {})", rt.link_state(), age, recycle)),
        Line::from(format!("  reconnects {}  last close: {}", rt.reconnects, rt.last_close_cause.as_deref().unwrap_or("-"))),
        Line::from(format!("turn latency: {latency}")),
        Line::from(format!(
            "tokens: in {} ({} audio, {} text, {} cached)  out {} ({} audio, {} text)",
            c.usage.input_tokens,
            c.usage.input_audio_tokens,
            c.usage.input_text_tokens,
            c.usage.input_cached_tokens,
            c.usage.output_tokens,
            c.usage.output_audio_tokens,
            c.usage.output_text_tokens
        )),
        Line::from(format!(
            "anketa: {}/{} fields, last extraction at message {} ({} runs, {} failed, {} citations dropped)",
            c.anketa_filled,
            c.anketa_fields,
            c.last_extraction_at_message.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            c.extractions,
            c.extraction_failures,
            c.evidence_dropped
        )),
    ];
    lines.extend(c.anketa.iter().map(anketa_line));
    lines.extend([
        Line::from(format!("messages: {}  persistence backlog: {}", c.messages, c.persistence_backlog)),
        Line::from(format!("audio: caller buffer {} ms, dropped {} ms", c.caller_buffer_ms, c.caller_dropped_ms)),
        Line::from(format!("queues: caller backlog {} frames, agent audio {} ms", c.caller_backlog_frames, c.agent_queue_ms)),
    ]);
    if let Some(from) = &c.resumed_from {
        lines.push(Line::from(Span::styled(format!("resumed from worker {from} (it died mid-call)"), Style::default().fg(Color::Yellow))));
    }
    if let Some(f) = &c.failure {
        lines.push(Line::from(Span::styled(format!("failure: {f}"), Style::default().fg(Color::Red))));
    }
    lines.push(Line::from("transcript:"));
    for line in &c.transcript_tail {
        lines.push(Line::from(format!("  [{}] {}: {}", line.seq, line.role, line.text)));
    }
    lines
}

/// `  Имя клиента = Иван  <- messages 2, 4 (set at 6; was "Ваня")`
fn anketa_line(field: &AnketaFieldView) -> Line<'static> {
    let name = if field.description.trim().is_empty() { field.name.as_str() } else { field.description.trim() };
    let value = match &field.value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let cited = if field.evidence.is_empty() {
        "no evidence".to_owned()
    } else {
        format!("messages {}", field.evidence.iter().map(u32::to_string).collect::<Vec<_>>().join(", "))
    };
    let was: String = field.history.iter().map(|p| format!("; was {}", p.value)).collect();
    Line::from(format!("  {name} = {value}  <- {cited} (set at {}{was})", field.set_at))
}

fn status_color(status: ActorStatus) -> Color {
    match status {
        ActorStatus::Running => Color::Green,
        ActorStatus::Restarting | ActorStatus::Starting => Color::Yellow,
        ActorStatus::Failed => Color::Red,
        ActorStatus::Stopped => Color::Reset,
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn since(t: DateTime<Utc>) -> String {
    mmss((Utc::now() - t).num_seconds().max(0) as u64)
}

/// HH:MM:SS (UTC).
fn short_time(t: &DateTime<Utc>) -> String {
    t.format("%H:%M:%S").to_string()
}

fn mmss(secs: u64) -> String {
    if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        format!("{:02}:{:02}", secs / 60, secs % 60)
    }
}

/// The figures `/metrics` exports, in one line (the same snapshot `/worker` serves).
fn metrics_line(m: &MetricsSnapshot) -> Line<'static> {
    let pairs = |v: &[(String, u64)]| v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
    let mean_ms = |h: &HistogramSnapshot| h.mean_secs().map_or_else(|| "-".to_owned(), |s| format!("{:.0} ms", s * 1000.0));
    // The worker's own share is microseconds: milliseconds would read 0.
    let mean_us = |h: &HistogramSnapshot| h.mean_secs().map_or_else(|| "-".to_owned(), |s| format!("{:.0} us", s * 1e6));
    let kinds = |d: &str| format!("{} audio, {} text", m.tokens_of(d, "audio"), m.tokens_of(d, "text"));
    Line::from(format!(
        "metrics: finished ({})  voice-to-voice {} over {} turns  barge-ins {}  reconnects {} ({})  extractions {} ok / {} failed ({}, {} citations dropped)  store commit {}  tokens {} in ({}) / {} out ({})  caller audio dropped {:.1} s  worker adds {} over {} answers, {} over {} caller frames  agent frames written >40 ms late {} of {}",
        pairs(&m.consultations_finished),
        mean_ms(&m.voice_latency),
        m.voice_latency.count,
        m.barge_ins,
        m.reconnects_total(),
        pairs(&m.reconnects),
        m.extractions_ok,
        m.extractions_failed,
        mean_ms(&m.extraction_duration),
        m.evidence_dropped,
        mean_ms(&m.store_commit),
        m.input_tokens,
        kinds("input"),
        m.output_tokens,
        kinds("output"),
        m.caller_dropped_ms as f64 / 1000.0,
        mean_us(&m.worker_added_latency),
        m.worker_added_latency.count,
        mean_us(&m.caller_added_latency),
        m.caller_added_latency.count,
        m.agent_frame_lateness.above(0.04),
        m.agent_frame_lateness.count,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use consultant_actors::ports::TokenUsage;
    use consultant_actors::telemetry::Metrics;

    #[test]
    fn the_metrics_line_shows_the_token_split_and_the_worker_share() {
        let metrics = Metrics::default();
        metrics.tokens(&TokenUsage { input_tokens: 120, input_audio_tokens: 20, input_text_tokens: 100, output_tokens: 45, output_audio_tokens: 30, output_text_tokens: 15, ..Default::default() });
        metrics.worker_added_latency.observe(std::time::Duration::from_micros(40));
        metrics.worker_added_latency.observe(std::time::Duration::from_micros(60));
        metrics.caller_added_latency.observe(std::time::Duration::from_micros(120));
        metrics.agent_frame_lateness.observe(std::time::Duration::from_millis(3));
        metrics.agent_frame_lateness.observe(std::time::Duration::from_millis(70));
        let line = metrics_line(&metrics.snapshot()).to_string();
        assert!(line.contains("tokens 120 in (20 audio, 100 text) / 45 out (30 audio, 15 text)"), "{line}");
        assert!(line.contains("worker adds 50 us over 2 answers, 120 us over 1 caller frames"), "{line}");
        assert!(line.contains("agent frames written >40 ms late 1 of 2"), "{line}");
    }
}
