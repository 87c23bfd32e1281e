//! Room audio benchmarks (prints numbers; `cargo bench -p consultant --bench room`).
//!
//! 1. Per 20 ms frame, on this machine:
//!    - caller path: Opus decode (to 24 kHz, in libopus) + the realtime append encoding
//!      (`input_audio_buffer.append` JSON with base64 PCM);
//!    - agent path: realtime delta decoding (JSON event + base64) + Opus encode (from 24 kHz)
//!      Target < 100 us each.
//! 2. Latency through the worker's audio paths, measured on real rooms through the loopback
//!    LiveKit server: one Room speaks (play() -> pacer -> Opus -> RTP), another Room hears it
//!    (RTP -> Opus decode -> 24 kHz PCM on the consultation channel). The time from play() to
//!    the first audible PCM frame is the sum of both added latencies plus the loopback SFU hop,
//!    so it bounds each of them from above (target p99 < 5 ms each).
//! 3. Concurrent pairs of rooms (one agent speaking to one listener each) with clean audio, and
//!    the process RSS per room.
//! 4. The caller's frame from RTP to the realtime socket's queue through a consultation whose
//!    Room is its child (speaker play() -> SFU -> Room decode -> Consultation -> the session's
//!    command queue): first-frame latency, and the process CPU time per delivered 20 ms frame
//!    with 16 calls at once (speakers, SFU and listeners all in this process).

use std::sync::Arc;
use std::time::{Duration, Instant};

use consultant::realtime::protocol::{decode_pcm, parse_server_event, write_audio_append, ServerEvent};
use consultant::room::codec::{AgentEncoder, CallerDecoder, FRAME_24K};
use consultant::room::{self, JoinedRoomAudio, RoomOptions};
use consultant::secret::Secret;
use consultant_actors::ports::AgentAudioOutput;
use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_loopback::{LoopbackConfig, LoopbackServer};

fn tone(n: usize, freq: f64, amp: f64, rate: f64) -> Vec<i16> {
    (0..n).map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / rate).sin()) as i16).collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut us: Vec<f64>) {
    us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    println!("{name:<58} mean {mean:8.1} us  p50 {:8.1} us  p99 {:8.1} us  (n={})", percentile(&us, 0.5), percentile(&us, 0.99), us.len());
}

fn per_frame() {
    use base64::Engine;
    let frames = 3000;
    let speech24 = tone(FRAME_24K * frames, 220.0, 8000.0, 24_000.0);

    // Opus packets as a caller would send them.
    let mut enc = AgentEncoder::new().unwrap();
    let packets: Vec<Vec<u8>> = speech24.chunks(FRAME_24K).map(|f| enc.encode(f).unwrap().to_vec()).collect();
    let mut dec = CallerDecoder::new().unwrap();
    let (mut pcm, mut json, mut scratch) = (Vec::new(), String::new(), Vec::new());
    let mut caller = Vec::with_capacity(frames);
    for p in &packets {
        let t = Instant::now();
        pcm.clear();
        dec.decode(p, &mut pcm).unwrap();
        json.clear();
        write_audio_append(&mut json, &pcm, &mut scratch);
        std::hint::black_box(&json);
        caller.push(t.elapsed().as_secs_f64() * 1e6);
    }
    report("caller path (Opus decode at 24 kHz + append JSON)", caller[100..].to_vec());

    // Realtime deltas of 20 ms, as JSON text events.
    let deltas: Vec<String> = speech24
        .chunks(FRAME_24K)
        .map(|f| {
            let bytes: Vec<u8> = f.iter().flat_map(|s| s.to_le_bytes()).collect();
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            format!(r#"{{"type":"response.audio.delta","event_id":"ev","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"{b64}"}}"#)
        })
        .collect();
    let mut enc = AgentEncoder::new().unwrap();
    let mut agent = Vec::with_capacity(frames);
    for d in &deltas {
        let t = Instant::now();
        let ServerEvent::AudioDelta { delta, .. } = parse_server_event(d).unwrap() else { panic!("not a delta") };
        let pcm = decode_pcm(&delta, &mut scratch).unwrap();
        let packet = enc.encode(&pcm).unwrap();
        std::hint::black_box(packet);
        agent.push(t.elapsed().as_secs_f64() * 1e6);
    }
    report("agent path (delta JSON + base64 + Opus encode at 24 kHz)", agent[100..].to_vec());
}

fn token(server: &LoopbackServer, room: &str, identity: &str, agent: bool) -> Secret {
    let mut t = AccessToken::with_api_key(server.api_key(), server.api_secret()).with_identity(identity).with_grants(VideoGrants {
        room_join: true,
        room: room.into(),
        agent,
        can_publish: Some(true),
        can_subscribe: Some(true),
        can_publish_data: Some(true),
        ..Default::default()
    });
    if agent {
        t = t.with_kind("agent");
    }
    Secret::new(t.to_jwt().unwrap())
}

/// A speaker (standard participant) and a listener (agent) in one room: the listener treats the
/// speaker as its caller.
async fn pair(server: &LoopbackServer, n: usize) -> (JoinedRoomAudio, JoinedRoomAudio) {
    let room = format!("consultation-bench-{n}");
    let listener = room::join(&server.url(), &token(server, &room, &format!("agent-{n}"), true), RoomOptions::default()).await.unwrap();
    let speaker = room::join(&server.url(), &token(server, &room, &format!("speaker-{n}"), false), RoomOptions::default()).await.unwrap();
    speaker.audio_out.release(); // no caller-kind participant on its side: speak anyway
    (speaker, listener)
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

async fn latency(server: &LoopbackServer) {
    let (speaker, mut listener) = pair(server, 0).await;
    let burst: Arc<[i16]> = tone(2400, 440.0, 8000.0, 24_000.0).into(); // 100 ms
    let mut samples = Vec::new();
    // Warm-up: the listener's subscription settles.
    for i in 0..110 {
        while listener.caller_audio.try_recv().is_ok() {}
        let t0 = Instant::now();
        speaker.audio_out.play("bench", burst.clone());
        let heard = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(pcm) = listener.caller_audio.recv().await {
                if rms(&pcm) > 500.0 {
                    return Some(Instant::now());
                }
            }
            None
        })
        .await;
        if let Ok(Some(t1)) = heard {
            if i >= 10 {
                samples.push((t1 - t0).as_secs_f64() * 1e3);
            }
        }
        // Back to idle, so every burst measures the first-frame path.
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "play() -> audible PCM at the other room (both paths + SFU): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={}, {} lost)",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().unwrap(),
        samples.len(),
        100 - samples.len()
    );
    speaker.room.leave();
    listener.room.leave();
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

async fn concurrent(server: &LoopbackServer, pairs: usize) {
    let before = rss_kb();
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let mut speakers = Vec::new();
    let mut rooms = Vec::new();
    let mut tasks = Vec::new();
    for n in 1..=pairs {
        let (speaker, listener) = pair(server, 1000 * pairs + n).await;
        let JoinedRoomAudio { mut caller_audio, room, .. } = listener;
        let mut go = go_rx.clone();
        // Each listener should get 5 s of audio: count the audible 20 ms frames it receives.
        tasks.push(tokio::spawn(async move {
            let _ = go.wait_for(|g| *g).await;
            while caller_audio.try_recv().is_ok() {}
            let mut loud = 0usize;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(7);
            while let Ok(Some(pcm)) = tokio::time::timeout_at(deadline, caller_audio.recv()).await {
                loud += pcm.chunks(480).filter(|c| c.len() == 480 && rms(c) > 1000.0).count();
            }
            loud
        }));
        rooms.push(room);
        rooms.push(speaker.room.clone());
        speakers.push(speaker);
    }
    let speech: Arc<[i16]> = tone(24_000 * 5, 300.0, 8000.0, 24_000.0).into();
    let _ = go_tx.send(true);
    for s in &speakers {
        s.audio_out.play("bench", speech.clone());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kb();
    let mut clean = 0;
    let mut worst = usize::MAX;
    for t in tasks {
        let loud = t.await.unwrap();
        worst = worst.min(loud);
        if loud >= 245 {
            clean += 1; // >= 98% of the 250 frames
        }
    }
    let grown = rss.saturating_sub(before) as f64 / 1024.0;
    println!(
        "{pairs} rooms speaking to {pairs} rooms for 5 s: {clean}/{pairs} clean (worst {worst}/250 audible frames); RSS +{grown:.1} MB for {} rooms = {:.2} MB per room",
        pairs * 2,
        grown / (pairs * 2) as f64
    );
    for r in rooms {
        r.leave();
    }
}

/// One consultation listening to one speaker, with an in-memory realtime session and store.
struct Call {
    speaker: JoinedRoomAudio,
    session: Arc<consultant_fakes::memory::ScriptedSession>,
    _handle: consultant_actors::handler::ConsultationHandle,
}

async fn call(server: &LoopbackServer, handler: &consultant_actors::VoiceHandler, realtime: &consultant_fakes::memory::ScriptedRealtime, n: usize) -> Call {
    let room_name = format!("consultation-rt-{n}");
    let id = consultant_actors::SessionId::parse(&format!("rt-{n}")).unwrap();
    let media = room::LiveKitRooms::default().room(&server.url(), token(server, &room_name, &format!("agent-rt-{n}"), true));
    let handle = handler.create_room_session(id, room_name.clone(), Arc::new(media)).await.unwrap();
    handle.wait_ready().await.unwrap();
    let session = realtime.session(n).await;
    let speaker = room::join(&server.url(), &token(server, &room_name, &format!("caller-{n}"), false), RoomOptions::default()).await.unwrap();
    speaker.audio_out.release();
    Call { speaker, session, _handle: handle }
}

/// The next loud caller frame the realtime session receives.
async fn loud_append(session: &consultant_fakes::memory::ScriptedSession) -> Option<Instant> {
    while let Some(c) = session.next_command().await {
        if let consultant_actors::ports::RealtimeCommand::AppendAudio(pcm) = c {
            if rms(&pcm) > 500.0 {
                return Some(Instant::now());
            }
        }
    }
    None
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command name: state, ppid, ..., utime (11th) and stime (12th), in clock ticks.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) as f64 / 100.0
}

async fn to_realtime(server: &LoopbackServer) {
    use consultant_actors::consultation::Ports;
    use consultant_fakes::memory::{CountingExtractor, MemoryStore, ScriptedRealtime};
    let realtime = ScriptedRealtime::new();
    let ports = Ports { connector: realtime.clone(), store: Arc::new(MemoryStore::default()), extractor: CountingExtractor::new() };
    let settings = Arc::new(consultant_actors::ConsultationSettings::for_tests(Vec::new()));
    let handler = consultant_actors::VoiceHandler::start(settings, ports, consultant_actors::telemetry::Telemetry::new()).await.unwrap();

    let first = call(server, &handler, &realtime, 1).await;
    let burst: Arc<[i16]> = tone(2400, 440.0, 8000.0, 24_000.0).into();
    let mut samples = Vec::new();
    for i in 0..110 {
        first.session.commands();
        let t0 = Instant::now();
        first.speaker.audio_out.play("bench", burst.clone());
        if let Ok(Some(t1)) = tokio::time::timeout(Duration::from_secs(2), loud_append(&first.session)).await {
            if i >= 10 {
                samples.push((t1 - t0).as_secs_f64() * 1e3);
            }
        }
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "play() -> caller frame in the realtime session's queue (through the consultation): p50 {:.2} ms  p99 {:.2} ms  (n={}, {} lost)",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.len(),
        100 - samples.len()
    );

    let mut calls = vec![first];
    for n in 2..=16 {
        calls.push(call(server, &handler, &realtime, n).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let speech: Arc<[i16]> = tone(24_000 * 5, 300.0, 8000.0, 24_000.0).into();
    for c in &calls {
        c.session.commands();
    }
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    for c in &calls {
        c.speaker.audio_out.play("bench", speech.clone());
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
    let frames: usize = calls
        .iter()
        .map(|c| c.session.commands().iter().filter(|c| matches!(c, consultant_actors::ports::RealtimeCommand::AppendAudio(p) if rms(p) > 1000.0)).count())
        .sum();
    println!(
        "16 calls, 5 s of caller speech each: {frames} loud frames reached realtime (of {}); process CPU {:.0}% of a core, {:.1} us CPU per delivered frame (speaker, SFU and listener included)",
        16 * 250,
        cpu / wall * 100.0,
        cpu * 1e6 / frames.max(1) as f64
    );
    for c in calls {
        c.speaker.room.leave();
    }
    handler.stop().await;
}

fn main() {
    per_frame();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
        latency(&server).await;
        to_realtime(&server).await;
        for pairs in [4, 8, 16] {
            concurrent(&server, pairs).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        server.shutdown().await;
    });
}
