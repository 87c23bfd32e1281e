//! Shared by tests/room.rs and tests/e2e.rs: the Python caller (official `livekit` SDK) as a
//! subprocess, espeak-ng phrases, and audio envelope checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};


pub use livekit_loopback::peers::PythonPeer;

pub fn wall_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}

/// Writes `text` spoken by espeak-ng (Russian voice) to `path`; returns its duration.
pub fn espeak(text: &str, path: &Path) -> f64 {
    let out = std::process::Command::new("espeak-ng")
        .args(["-v", "ru", "-s", "150", "-w"])
        .arg(path)
        .arg(text)
        .output()
        .expect("espeak-ng runs (scripts/install-test-deps.sh installs it)");
    assert!(out.status.success(), "espeak-ng failed: {}", String::from_utf8_lossy(&out.stderr));
    let r = hound::WavReader::open(path).expect("espeak wav");
    r.duration() as f64 / r.spec().sample_rate as f64
}

/// RMS per `hop_s` window of a WAV file.
pub fn wav_envelope(path: &Path, hop_s: f64) -> Vec<f64> {
    let mut r = hound::WavReader::open(path).expect("wav");
    let rate = r.spec().sample_rate as f64;
    let samples: Vec<i16> = r.samples::<i16>().map(|s| s.expect("sample")).collect();
    rms_windows(&samples, (rate * hop_s).round() as usize)
}

pub fn rms_windows(samples: &[i16], hop: usize) -> Vec<f64> {
    samples.chunks(hop).map(|c| (c.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / c.len() as f64).sqrt()).collect()
}

/// Pearson correlation of two equally long series.
pub fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().sum::<f64>() / n as f64;
    let mb = b.iter().sum::<f64>() / n as f64;
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va.sqrt() * vb.sqrt())
    }
}

/// Best correlation of `heard` (sampled at `hop`) against `source`, shifting `heard` by up to
/// `max_lag` windows; returns (correlation, lag in windows).
pub fn best_alignment(source: &[f64], heard: &[f64], max_lag: usize) -> (f64, usize) {
    (0..=max_lag.min(heard.len()))
        .map(|lag| (correlation(source, &heard[lag..]), lag))
        .fold((f64::MIN, 0), |best, x| if x.0 > best.0 { x } else { best })
}

/// The caller's recording envelope: (wall time, rms) per 10 ms frame.
pub fn read_envelope(path: &Path) -> Vec<(f64, f64)> {
    let v: Vec<(f64, f64)> = serde_json::from_str(&std::fs::read_to_string(path).expect("envelope file")).expect("envelope json");
    v
}

/// Frames of `env` louder than `level` between `from` and `to` (wall time).
pub fn loud_frames(env: &[(f64, f64)], from: f64, to: f64, level: f64) -> usize {
    env.iter().filter(|(t, r)| *t >= from && *t < to && *r > level).count()
}

/// Wall time of the last frame louder than `level`, if any.
pub fn last_loud(env: &[(f64, f64)], from: f64, to: f64, level: f64) -> Option<f64> {
    env.iter().filter(|(t, r)| *t >= from && *t < to && *r > level).map(|(t, _)| *t).fold(None, |a, t| Some(a.map_or(t, |a: f64| a.max(t))))
}

pub fn first_loud(env: &[(f64, f64)], from: f64, to: f64, level: f64) -> Option<f64> {
    env.iter().find(|(t, r)| *t >= from && *t < to && *r > level).map(|(t, _)| *t)
}

/// One caller WAV: each phrase (espeak-ng) after 1.5 s of silence, then 1 s of silence (the
/// load test's and the capacity bench's microphone).
pub fn caller_wav(dir: &Path, phrases: &[&str]) -> PathBuf {
    let mut pcm: Vec<i16> = Vec::new();
    let mut rate = 22_050;
    for (i, p) in phrases.iter().enumerate() {
        let path = dir.join(format!("phrase{i}.wav"));
        espeak(p, &path);
        let mut r = hound::WavReader::open(&path).unwrap();
        rate = r.spec().sample_rate;
        pcm.extend(std::iter::repeat_n(0, rate as usize * 3 / 2));
        pcm.extend(r.samples::<i16>().map(Result::unwrap));
    }
    pcm.extend(std::iter::repeat_n(0, rate as usize));
    let path = dir.join("caller.wav");
    let spec = hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    pcm.iter().for_each(|s| w.write_sample(*s).unwrap());
    w.finalize().unwrap();
    path
}

/// One plain-HTTP GET (a worker's health listener): (head, body); the status must be 200.
pub async fn http_get(addr: impl tokio::net::ToSocketAddrs, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (head.to_owned(), body.to_owned())
}
