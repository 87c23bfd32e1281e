//! Shared helpers of the loopback integration tests: the Python peers (official SDKs) as
//! subprocesses, a hand-written signalling client, and the audio checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use livekit_loopback::proto;
use prost::Message as _;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

/// Server logs in the test output when RUST_LOG is set (e.g. `RUST_LOG=livekit_loopback=debug`).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

// Not every test binary that includes this module uses the peers.
#[allow(unused_imports)]
pub use livekit_loopback::peers::{peers_lock, workspace_root, PythonPeer as Peer};

/// A fresh scratch directory `target/loopback-tests/<name>` (kept after the test for
/// post-mortems: peer logs and recorded WAVs).
pub fn scratch(name: &str) -> PathBuf {
    let d = workspace_root().join("target/loopback-tests").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Russian speech from espeak-ng as a WAV (22.05 kHz mono).
pub fn espeak(text: &str, out: &Path) {
    let st = std::process::Command::new("espeak-ng")
        .args(["-v", "ru", "-s", "150", "-w"])
        .arg(out)
        .arg(text)
        .status()
        .expect("espeak-ng runs (scripts/install-test-deps.sh installs it)");
    assert!(st.success(), "espeak-ng failed");
}

// ---------------- audio checks ----------------

pub fn read_wav(path: &Path) -> (u32, Vec<f32>) {
    let mut r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let spec = r.spec();
    assert_eq!(spec.bits_per_sample, 16, "{}: 16-bit PCM expected", path.display());
    let ch = spec.channels as usize;
    let s: Vec<i16> = r.samples::<i16>().map(|x| x.unwrap()).collect();
    let mono = s.chunks(ch).map(|c| c.iter().map(|&x| x as f32 / 32768.0).sum::<f32>() / ch as f32).collect();
    (spec.sample_rate, mono)
}

/// RMS per `win_ms` window.
pub fn envelope(rate: u32, x: &[f32], win_ms: u32) -> Vec<f32> {
    let w = (rate * win_ms / 1000) as usize;
    x.chunks(w).filter(|c| c.len() == w).map(|c| (c.iter().map(|v| v * v).sum::<f32>() / w as f32).sqrt()).collect()
}

fn pearson(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len() as f32;
    let (ma, mb) = (a.iter().sum::<f32>() / n, b.iter().sum::<f32>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa <= 0.0 || sbb <= 0.0 {
        return 0.0;
    }
    sab / (saa.sqrt() * sbb.sqrt())
}

#[derive(Debug)]
pub struct SpeechMatch {
    pub correlation: f32,
    pub lag_s: f32,
    pub source_active_s: f32,
    pub recorded_active_s: f32,
    pub recorded_s: f32,
    pub source_s: f32,
}

/// Compare the recorded audio with the source speech: best envelope correlation over all
/// alignments where at least 90% of the source overlaps the recording, and the duration
/// of activity (windows above 10% of the peak) on both sides.
pub fn match_speech(src: &Path, rec: &Path) -> SpeechMatch {
    const WIN: u32 = 20;
    let (sr, s) = read_wav(src);
    let (rr, r) = read_wav(rec);
    let es = envelope(sr, &s, WIN);
    let er = envelope(rr, &r, WIN);
    let min_overlap = es.len() * 9 / 10;
    let mut best = (0.0f32, 0isize);
    for lag in -(es.len() as isize)..(er.len() as isize) {
        // recorded index = source index + lag
        let s0 = (-lag).max(0) as usize;
        let r0 = lag.max(0) as usize;
        let n = (es.len() - s0).min(er.len().saturating_sub(r0));
        if n < min_overlap || n == 0 {
            continue;
        }
        let c = pearson(&es[s0..s0 + n], &er[r0..r0 + n]);
        if c > best.0 {
            best = (c, lag);
        }
    }
    let active = |e: &[f32]| {
        let peak = e.iter().cloned().fold(0.0f32, f32::max);
        e.iter().filter(|v| **v > peak * 0.1 && **v > 1e-3).count() as f32 * WIN as f32 / 1000.0
    };
    SpeechMatch {
        correlation: best.0,
        lag_s: best.1 as f32 * WIN as f32 / 1000.0,
        source_active_s: active(&es),
        recorded_active_s: active(&er),
        recorded_s: r.len() as f32 / rr as f32,
        source_s: s.len() as f32 / sr as f32,
    }
}

/// Like [`match_speech`], but tolerant of one timing discontinuity (audio lost or stretched
/// around a reconnect): the source is split at some point and each part gets its own
/// alignment, both within ±0.5 s of the global best one (splits every 0.2 s, no split
/// allowed too). Returns (best correlation of the two aligned parts together, the timing
/// shift between the parts in seconds).
pub fn match_speech_chunked(src: &Path, rec: &Path) -> (f32, f32) {
    const WIN: u32 = 20;
    let global = match_speech(src, rec);
    let (sr, s) = read_wav(src);
    let (rr, r) = read_wav(rec);
    let es = envelope(sr, &s, WIN);
    let er = envelope(rr, &r, WIN);
    let g = (global.lag_s * 1000.0 / WIN as f32).round() as isize;
    let slack = 25isize; // 0.5 s
    let fits = |start: usize, len: usize, lag: isize| {
        let r0 = start as isize + lag;
        r0 >= 0 && (r0 as usize + len) <= er.len()
    };
    let mut best = (global.correlation, 0.0f32);
    let mut a = Vec::with_capacity(es.len());
    let mut b = Vec::with_capacity(es.len());
    for k in (10..es.len().saturating_sub(10)).step_by(10) {
        for l1 in g - slack..=g + slack {
            if !fits(0, k, l1) {
                continue;
            }
            for l2 in g - slack..=g + slack {
                if !fits(k, es.len() - k, l2) {
                    continue;
                }
                a.clear();
                b.clear();
                a.extend_from_slice(&es);
                let r1 = l1 as usize;
                b.extend_from_slice(&er[r1..r1 + k]);
                let r2 = (k as isize + l2) as usize;
                b.extend_from_slice(&er[r2..r2 + es.len() - k]);
                let c = pearson(&a, &b);
                if c > best.0 {
                    best = (c, (l2 - l1) as f32 * WIN as f32 / 1000.0);
                }
            }
        }
    }
    best
}

/// Assert that `rec` carries the speech of `src`, allowing one discontinuity (see
/// [`match_speech_chunked`]).
pub fn assert_speech_heard_across_a_gap(src: &Path, rec: &Path) -> (f32, f32) {
    let m = match_speech(src, rec);
    let chunked = match_speech_chunked(src, rec);
    eprintln!("speech match: {m:?}, two-part (correlation, shift s): {chunked:?}");
    assert!(m.recorded_s >= m.source_s, "recording shorter than the speech: {m:?}");
    assert!(chunked.0 >= 0.8, "recorded envelope does not follow the speech, even in two parts: {chunked:?}");
    let ratio = m.recorded_active_s / m.source_active_s.max(1e-3);
    assert!((0.75..=1.25).contains(&ratio), "active speech duration differs: {m:?}");
    chunked
}

/// Assert that `rec` carries the speech of `src`.
pub fn assert_speech_heard(src: &Path, rec: &Path) -> SpeechMatch {
    let m = match_speech(src, rec);
    eprintln!("speech match: {m:?}");
    assert!(m.recorded_s >= m.source_s, "recording shorter than the speech: {m:?}");
    assert!(m.correlation >= 0.8, "recorded envelope does not follow the speech: {m:?}");
    let ratio = m.recorded_active_s / m.source_active_s.max(1e-3);
    assert!((0.8..=1.25).contains(&ratio), "active speech duration differs: {m:?}");
    m
}

/// The 20 ms envelope of a caller timeline: each phrase WAV placed at its offset (seconds),
/// silence elsewhere, `total_s` long.
pub fn timeline_envelope(phrases: &[(&Path, f32)], total_s: f32) -> Vec<f32> {
    let n = (total_s * 50.0) as usize;
    let mut env = vec![0.0f32; n];
    for (path, at) in phrases {
        let (rate, x) = read_wav(path);
        let e = envelope(rate, &x, 20);
        let start = (at * 50.0).round() as usize;
        for (i, v) in e.iter().enumerate() {
            if start + i < n {
                env[start + i] = *v;
            }
        }
    }
    env
}

/// Best correlation of `rec`'s envelope with `timeline` delayed by 0..`max_delay_s`
/// (the recording is on the same timeline, later by the round trip). Returns
/// (correlation, delay in s).
pub fn match_delayed(timeline: &[f32], rec: &Path, max_delay_s: f32) -> (f32, f32) {
    let (rate, x) = read_wav(rec);
    let er = envelope(rate, &x, 20);
    let mut best = (0.0f32, 0.0f32);
    for d in 0..=(max_delay_s * 50.0) as usize {
        let n = timeline.len().min(er.len().saturating_sub(d));
        if n < timeline.len() * 3 / 4 {
            break;
        }
        let c = pearson(&timeline[..n], &er[d..d + n]);
        if c > best.0 {
            best = (c, d as f32 / 50.0);
        }
    }
    best
}

/// Where speech is, not how loud: both envelopes are reduced to active/silent 20 ms windows
/// (above 10% of their own peak); for every delay 0..`max_delay_s` the F1 score of the
/// recording's activity against the timeline's (each side tolerant by ±60 ms) is computed.
/// Returns (best F1, its delay in s). Robust to level changes and small time warps (NetEq,
/// a loaded machine), strict about phrases being in the wrong place or of the wrong length.
pub fn match_activity(timeline: &[f32], rec: &Path, max_delay_s: f32) -> (f32, f32) {
    let (rate, x) = read_wav(rec);
    let er = envelope(rate, &x, 20);
    let active = |e: &[f32]| {
        let peak = e.iter().cloned().fold(0.0f32, f32::max);
        e.iter().map(|v| *v > peak * 0.1 && *v > 1e-3).collect::<Vec<bool>>()
    };
    let dilate = |a: &[bool], k: usize| {
        (0..a.len()).map(|i| a[i.saturating_sub(k)..(i + k + 1).min(a.len())].iter().any(|v| *v)).collect::<Vec<bool>>()
    };
    let (a_all, b_all) = (active(timeline), active(&er));
    let mut best = (0.0f32, 0.0f32);
    for d in 0..=(max_delay_s * 50.0) as usize {
        let n = a_all.len().min(b_all.len().saturating_sub(d));
        if n < a_all.len() * 3 / 4 {
            break;
        }
        let (a, b) = (&a_all[..n], &b_all[d..d + n]);
        let (da, db) = (dilate(a, 3), dilate(b, 3));
        let count = |x: &[bool]| x.iter().filter(|v| **v).count() as f32;
        let recall = a.iter().zip(&db).filter(|(x, y)| **x && **y).count() as f32 / count(a).max(1.0);
        let precision = b.iter().zip(&da).filter(|(x, y)| **x && **y).count() as f32 / count(b).max(1.0);
        let f1 = if recall + precision > 0.0 { 2.0 * recall * precision / (recall + precision) } else { 0.0 };
        if f1 > best.0 {
            best = (f1, d as f32 / 50.0);
        }
    }
    best
}

/// Seconds of audio in which `freq` clearly dominates (Goertzel, 100 ms blocks): power at
/// `freq` above 10x that at half and double the frequency, and level above -30 dBFS.
pub fn tone_seconds(path: &Path, freq: f32) -> f32 {
    let (rate, x) = read_wav(path);
    let block = (rate / 10) as usize;
    let goertzel = |c: &[f32], f: f32| {
        let w = 2.0 * std::f32::consts::PI * f / rate as f32;
        let k = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f32, 0.0f32);
        for &v in c {
            let s0 = v + k * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        s1 * s1 + s2 * s2 - k * s1 * s2
    };
    let mut n = 0;
    for c in x.chunks(block).filter(|c| c.len() == block) {
        let rms = (c.iter().map(|v| v * v).sum::<f32>() / block as f32).sqrt();
        let p = goertzel(c, freq);
        if rms > 0.0316 && p > 10.0 * goertzel(c, freq / 2.0) && p > 10.0 * goertzel(c, freq * 2.0) {
            n += 1;
        }
    }
    n as f32 / 10.0
}

/// Write a WAV (16-bit mono).
pub fn write_wav(path: &Path, rate: u32, x: &[f32]) {
    let spec = hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for v in x {
        w.write_sample((v.clamp(-1.0, 1.0) * 32767.0) as i16).unwrap();
    }
    w.finalize().unwrap();
}

// ---------------- hand-written signalling client ----------------

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn rtc_connect(ws_url: &str, token: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    rtc_connect_query(ws_url, token, "protocol=16&auto_subscribe=1").await
}

pub async fn rtc_connect_query(ws_url: &str, token: &str, query: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("{ws_url}/rtc?{query}").into_client_request().unwrap();
    req.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
}

pub async fn rtc_send(ws: &mut Ws, m: proto::signal_request::Message) {
    let req = proto::SignalRequest { message: Some(m) };
    ws.send(Message::Binary(req.encode_to_vec().into())).await.unwrap();
}

/// Next SignalResponse, `None` when the socket ended.
pub async fn rtc_recv(ws: &mut Ws, timeout: Duration) -> Option<proto::signal_response::Message> {
    loop {
        match tokio::time::timeout(timeout, ws.next()).await.expect("signal message in time") {
            Some(Ok(Message::Binary(b))) => {
                return Some(proto::SignalResponse::decode(b.as_ref()).unwrap().message.expect("set"))
            }
            Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(other)) => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Receive until `f` matches (other messages are dropped).
pub async fn rtc_until<T>(
    ws: &mut Ws,
    timeout: Duration,
    mut f: impl FnMut(&proto::signal_response::Message) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = rtc_recv(ws, left).await.expect("socket open");
        if let Some(t) = f(&m) {
            return t;
        }
    }
}
