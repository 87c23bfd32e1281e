//! `/metrics`: the telemetry board and its [`consultant_actors::telemetry::Metrics`] in the
//! Prometheus (OpenMetrics) text format. One collector reads everything at scrape time, so
//! nothing on the call path knows about Prometheus; `/worker` and the console read the same
//! snapshot.

use consultant_actors::telemetry::{HistogramSnapshot, Telemetry};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// The states `consultant_livekit_link_state` reports (one series each, the current one 1).
pub const LINK_STATES: [&str; 4] = ["connecting", "registered", "reconnecting", "down"];

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry holding the board's collector; built once per health server.
pub fn registry(telemetry: Telemetry) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BoardCollector { telemetry }));
    registry
}

/// Encodes `registry` as the text exposition format.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

struct BoardCollector {
    telemetry: Telemetry,
}

impl std::fmt::Debug for BoardCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoardCollector")
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, value: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, unit, MetricType::Counter)?.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(e: &mut DescriptorEncoder, name: &str, help: &str, value: V) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&value)
}

/// A counter with one label; `values` is the whole (bounded) label set.
fn labelled_counter(e: &mut DescriptorEncoder, name: &str, help: &str, label: &'static str, values: &[(String, u64)]) -> std::fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        let labels = [(label, value.as_str())];
        family.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(n, None)?;
    }
    Ok(())
}

fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, h: &HistogramSnapshot) -> std::fmt::Result {
    // The encoder sums per-bucket counts itself and writes `f64::MAX` as `+Inf`.
    let mut below = 0;
    let mut buckets: Vec<(f64, u64)> = h
        .buckets
        .iter()
        .map(|(bound, cumulative)| {
            let n = cumulative - below;
            below = *cumulative;
            (*bound, n)
        })
        .collect();
    buckets.push((f64::MAX, h.count - below));
    e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?.encode_histogram::<NoLabelSet>(h.sum_secs, h.count, &buckets, None)
}

impl Collector for BoardCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.telemetry.snapshot();
        let (w, m) = (&snapshot.worker, &snapshot.worker.metrics);
        gauge(&mut e, "consultant_consultations_active", "Consultations on the board (starting to finalizing).", snapshot.consultations.len() as i64)?;
        labelled_counter(&mut e, "consultant_consultations_finished", "Consultations stored with a final status.", "status", &m.consultations_finished)?;
        histogram(&mut e, "consultant_voice_to_voice_latency", "Caller speech end to the first agent audio, per turn.", &m.voice_latency)?;
        labelled_counter(&mut e, "consultant_realtime_reconnects", "Realtime sessions replaced during a call, by cause.", "cause", &m.reconnects)?;
        counter(&mut e, "consultant_barge_ins", "Agent answers cut short by the caller (or by the call ending mid-answer).", None, m.barge_ins)?;
        let dropped = (m.caller_dropped_ms as f64) / 1000.0;
        e.encode_descriptor("consultant_caller_audio_dropped", "Caller audio dropped while the realtime link was down.", Some(&Unit::Seconds), MetricType::Counter)?
            .encode_counter::<NoLabelSet, _, u64>(&dropped, None)?;
        let outcomes = [("ok".to_owned(), m.extractions_ok), ("failed".to_owned(), m.extractions_failed)];
        labelled_counter(&mut e, "consultant_extractions", "DeepSeek anketa extractions, by outcome.", "outcome", &outcomes)?;
        counter(&mut e, "consultant_anketa_evidence_dropped", "Citations of the anketa extractor dropped by validation (unknown message, unknown field, field without a value).", None, m.evidence_dropped)?;
        histogram(&mut e, "consultant_extraction_duration", "Duration of a DeepSeek anketa extraction (retries included).", &m.extraction_duration)?;
        histogram(&mut e, "consultant_store_commit_duration", "Duration of a store write (message, status, anketa, session).", &m.store_commit)?;
        let backlog: usize = snapshot.consultations.iter().map(|c| c.persistence_backlog).sum();
        gauge(&mut e, "consultant_persistence_backlog_messages", "Dialogue messages handed to persistence and not yet durable.", backlog as i64)?;
        histogram(&mut e, "consultant_worker_added_latency", "Time the worker adds to an agent answer: its first audio off the realtime socket to its first packet written to the room.", &m.worker_added_latency)?;
        histogram(&mut e, "consultant_caller_added_latency", "Time the worker adds to the caller's audio: a packet off the room's socket to its PCM queued for the realtime socket.", &m.caller_added_latency)?;
        histogram(&mut e, "consultant_agent_frame_lateness", "How long after its slot on the agent voice's 20 ms clock each agent frame is written to the room (over 40 ms: a late frame for the caller).", &m.agent_frame_lateness)?;
        // Two labels; summed over `kind` it is the older by-direction series.
        let mut tokens = e.encode_descriptor("consultant_realtime_tokens", "Realtime model tokens, by direction and kind (other: not itemised by the provider).", None, MetricType::Counter)?;
        for (direction, kind, n) in &m.tokens {
            let labels = [("direction", direction.as_str()), ("kind", kind.as_str())];
            tokens.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
        counter(&mut e, "consultant_realtime_cached_input_tokens", "Realtime input tokens served from the prompt cache (part of the input tokens).", None, m.cached_input_tokens)?;
        let mut link = e.encode_descriptor("consultant_livekit_link_state", "The LiveKit worker link: 1 for the current state.", None, MetricType::Gauge)?;
        for state in LINK_STATES {
            let labels = [("state", state)];
            link.encode_family(&labels)?.encode_gauge(&i64::from(w.registration == state))?;
        }
        gauge(&mut e, "consultant_worker_load", "Load last reported to LiveKit (0 to 1).", w.load)?;
        gauge(&mut e, "consultant_worker_capacity_jobs", "Consultations this worker accepts at once.", w.capacity as i64)?;
        gauge(&mut e, "consultant_worker_draining", "1 while the worker drains (no new jobs).", i64::from(w.draining))?;
        gauge(&mut e, "consultant_process_resident_memory_bytes", "Resident memory of the worker process.", w.rss_bytes as i64)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_board_renders_every_family_with_zeroes() {
        let telemetry = Telemetry::new();
        telemetry.metrics().voice_latency.observe_secs(0.4);
        telemetry.metrics().evidence_dropped.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        let text = render(&registry(telemetry)).unwrap();
        assert!(text.contains("# TYPE consultant_anketa_evidence_dropped counter\n"), "{text}");
        assert!(text.contains("consultant_anketa_evidence_dropped_total 2\n"), "{text}");
        assert!(text.contains("# TYPE consultant_realtime_reconnects counter\n"), "{text}");
        assert!(text.contains("consultant_realtime_reconnects_total{cause=\"planned\"} 0\n"), "{text}");
        assert!(text.contains("consultant_voice_to_voice_latency_seconds_bucket{le=\"0.3\"} 0\n"), "{text}");
        assert!(text.contains("consultant_voice_to_voice_latency_seconds_bucket{le=\"0.5\"} 1\n"), "{text}");
        assert!(text.contains("consultant_voice_to_voice_latency_seconds_bucket{le=\"+Inf\"} 1\n"), "{text}");
        assert!(text.contains("consultant_livekit_link_state{state=\"registered\"} 0\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn tokens_by_kind_and_the_added_latency_render() {
        let telemetry = Telemetry::new();
        let usage = consultant_actors::ports::TokenUsage {
            input_tokens: 120,
            output_tokens: 60,
            input_audio_tokens: 20,
            input_text_tokens: 90,
            input_cached_tokens: 64,
            output_audio_tokens: 40,
            output_text_tokens: 20,
        };
        telemetry.metrics().tokens(&usage);
        telemetry.metrics().worker_added_latency.observe_secs(0.000_3);
        telemetry.metrics().caller_added_latency.observe_secs(0.002);
        telemetry.metrics().agent_frame_lateness.observe_secs(0.000_2);
        telemetry.metrics().agent_frame_lateness.observe_secs(0.06);
        let text = render(&registry(telemetry)).unwrap();
        for line in [
            "consultant_realtime_tokens_total{direction=\"input\",kind=\"audio\"} 20\n",
            "consultant_realtime_tokens_total{direction=\"input\",kind=\"text\"} 90\n",
            // Ten input tokens the details did not itemise (e.g. an image).
            "consultant_realtime_tokens_total{direction=\"input\",kind=\"other\"} 10\n",
            "consultant_realtime_tokens_total{direction=\"output\",kind=\"audio\"} 40\n",
            "consultant_realtime_tokens_total{direction=\"output\",kind=\"other\"} 0\n",
            "consultant_realtime_cached_input_tokens_total 64\n",
            "consultant_worker_added_latency_seconds_bucket{le=\"0.00025\"} 0\n",
            "consultant_worker_added_latency_seconds_bucket{le=\"0.0005\"} 1\n",
            "consultant_worker_added_latency_seconds_count 1\n",
            "consultant_caller_added_latency_seconds_bucket{le=\"0.001\"} 0\n",
            "consultant_caller_added_latency_seconds_bucket{le=\"0.0025\"} 1\n",
            "consultant_agent_frame_lateness_seconds_bucket{le=\"0.001\"} 1\n",
            "consultant_agent_frame_lateness_seconds_bucket{le=\"0.04\"} 1\n",
            "consultant_agent_frame_lateness_seconds_bucket{le=\"0.1\"} 2\n",
            "consultant_agent_frame_lateness_seconds_count 2\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
