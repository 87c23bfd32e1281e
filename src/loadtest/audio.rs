//! The caller's voice, prepared once for every caller: the WAV as 24 kHz mono, encoded to Opus
//! 20 ms packets a single time (callers only replay them), and where its phrases are, from an
//! energy envelope of the same frames.

use std::path::Path;
use std::sync::Arc;

use crate::audio::wav::read_as_realtime_pcm;
use crate::room::codec::{AgentEncoder, FRAME_24K};

/// A frame is loud when its RMS is above this fraction of the loudest frame's, and above an
/// absolute floor (a near-silent WAV must not turn its noise into phrases).
const LOUD_OF_PEAK: f64 = 0.1;
const LOUD_FLOOR: f64 = 200.0;
/// Silence at least this long ends a phrase (a little above the realtime VAD's 500 ms, so a
/// phrase we count is a turn the model sees).
const PHRASE_GAP_FRAMES: usize = 35;
/// Loud runs shorter than this are clicks, not phrases.
const MIN_PHRASE_FRAMES: usize = 5;

/// One phrase of the caller WAV, in 20 ms frames: `start..=end` are loud.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phrase {
    pub start: usize,
    pub end: usize,
}

/// The WAV as Opus packets, its phrases, and one packet of silence (sent while a caller waits).
pub struct CallerAudio {
    pub packets: Vec<Arc<[u8]>>,
    pub phrases: Vec<Phrase>,
    pub silence: Arc<[u8]>,
}

impl CallerAudio {
    /// Reads and encodes `path`; Err names the file and says what is wrong with it.
    pub fn load(path: &Path) -> Result<Self, String> {
        let pcm = read_as_realtime_pcm(path)?;
        let audio = Self::from_pcm(&pcm).map_err(|e| format!("{}: {e}", path.display()))?;
        if audio.phrases.is_empty() {
            return Err(format!("{} holds no phrase: no speech louder than the silence around it (need phrases separated by silence)", path.display()));
        }
        Ok(audio)
    }

    pub fn from_pcm(pcm: &[i16]) -> Result<Self, String> {
        let mut encoder = AgentEncoder::new().map_err(|e| e.to_string())?;
        let mut packets = Vec::with_capacity(pcm.len() / FRAME_24K + 1);
        let mut rms = Vec::with_capacity(packets.capacity());
        for chunk in pcm.chunks(FRAME_24K) {
            let mut frame = [0i16; FRAME_24K];
            frame[..chunk.len()].copy_from_slice(chunk);
            packets.push(Arc::from(encoder.encode(&frame).map_err(|e| e.to_string())?));
            rms.push((frame.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / FRAME_24K as f64).sqrt());
        }
        let silence = Arc::from(AgentEncoder::new().map_err(|e| e.to_string())?.encode(&[0; FRAME_24K]).map_err(|e| e.to_string())?);
        Ok(Self { packets, phrases: phrases(&rms), silence })
    }

    pub fn seconds(&self) -> f64 {
        self.packets.len() as f64 * 0.02
    }
}

/// Loud runs joined across short pauses; clicks dropped.
fn phrases(rms: &[f64]) -> Vec<Phrase> {
    let peak = rms.iter().cloned().fold(0.0, f64::max);
    let level = (peak * LOUD_OF_PEAK).max(LOUD_FLOOR);
    let mut out: Vec<Phrase> = Vec::new();
    let mut current: Option<Phrase> = None;
    for (i, &r) in rms.iter().enumerate() {
        if r <= level {
            continue;
        }
        current = match current {
            Some(p) if i - p.end <= PHRASE_GAP_FRAMES => Some(Phrase { start: p.start, end: i }),
            Some(p) => {
                out.push(p);
                Some(Phrase { start: i, end: i })
            }
            None => Some(Phrase { start: i, end: i }),
        };
    }
    out.extend(current);
    out.retain(|p| p.end + 1 - p.start >= MIN_PHRASE_FRAMES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(ms: usize) -> Vec<i16> {
        (0..ms * 24).map(|i| (6000.0 * (2.0 * std::f32::consts::PI * 220.0 * i as f32 / 24_000.0).sin()) as i16).collect()
    }

    #[test]
    fn phrases_are_loud_runs_separated_by_silence() {
        let mut pcm = vec![0i16; 24 * 500];
        pcm.extend(tone(1000));
        pcm.extend(vec![0; 24 * 300]); // a pause inside the phrase
        pcm.extend(tone(400));
        pcm.extend(vec![0; 24 * 1500]);
        pcm.extend(tone(60)); // a click
        pcm.extend(vec![0; 24 * 1500]);
        pcm.extend(tone(800));
        pcm.extend(vec![0; 24 * 1000]);
        let audio = CallerAudio::from_pcm(&pcm).unwrap();
        assert_eq!(audio.phrases, vec![Phrase { start: 25, end: 109 }, Phrase { start: 263, end: 302 }]);
        assert_eq!(audio.packets.len(), pcm.len() / FRAME_24K);
    }

    #[test]
    fn silence_encodes_to_packets_far_smaller_than_speech() {
        let audio = CallerAudio::from_pcm(&[tone(1000), vec![0; 24 * 1000]].concat()).unwrap();
        let speech = audio.packets[10..40].iter().map(|p| p.len()).min().unwrap();
        let quiet = audio.packets[60..].iter().map(|p| p.len()).max().unwrap();
        assert!(quiet <= super::super::stats::SILENT_PACKET_BYTES && speech > 3 * super::super::stats::SILENT_PACKET_BYTES, "speech {speech}, silence {quiet}, silence packet {}", audio.silence.len());
    }
}
