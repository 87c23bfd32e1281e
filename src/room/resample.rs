//! Exact 2:1 rate conversion between the realtime rate (24 kHz) and WebRTC's Opus rate
//! (48 kHz): a windowed-sinc half-band low-pass, run polyphase, with state kept across frames
//! so 20 ms chunks join without clicks.
//!
//! The `realtime` side may grow a general resampler in `src/audio/`; this one stays because the
//! room only ever needs the fixed 2:1 ratio and it is cheap enough for the per-frame budget.

/// Filter length (taps). Even, so each polyphase branch has `TAPS / 2` taps.
const TAPS: usize = 32;

/// Low-pass taps for a 48 kHz stream, cut-off just under 12 kHz (the 24 kHz Nyquist).
fn lowpass() -> [f32; TAPS] {
    let cutoff = 0.45 * 0.5; // fraction of the 48 kHz rate: 10.8 kHz
    let mid = (TAPS - 1) as f32 / 2.0;
    let mut h = [0f32; TAPS];
    for (i, tap) in h.iter_mut().enumerate() {
        let x = i as f32 - mid;
        let sinc = if x == 0.0 { 2.0 * cutoff } else { (2.0 * std::f32::consts::PI * cutoff * x).sin() / (std::f32::consts::PI * x) };
        // Blackman window.
        let w = 0.42 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / (TAPS - 1) as f32).cos()
            + 0.08 * (4.0 * std::f32::consts::PI * i as f32 / (TAPS - 1) as f32).cos();
        *tap = sinc * w;
    }
    let sum: f32 = h.iter().sum();
    for tap in h.iter_mut() {
        *tap /= sum;
    }
    h
}

fn clamp_i16(v: f32) -> i16 {
    v.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

/// 24 kHz -> 48 kHz.
pub struct Upsampler {
    even: [f32; TAPS / 2],
    odd: [f32; TAPS / 2],
    /// The last `TAPS / 2` input samples, oldest first.
    history: Vec<f32>,
}

impl Default for Upsampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Upsampler {
    pub fn new() -> Self {
        let h = lowpass();
        let mut even = [0f32; TAPS / 2];
        let mut odd = [0f32; TAPS / 2];
        // Zero-stuffing halves the energy: each branch gets gain 2.
        for k in 0..TAPS / 2 {
            even[k] = 2.0 * h[2 * k];
            odd[k] = 2.0 * h[2 * k + 1];
        }
        Self { even, odd, history: vec![0.0; TAPS / 2] }
    }

    /// Appends `2 * input.len()` samples to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let n = TAPS / 2;
        self.history.extend(input.iter().map(|&s| s as f32));
        out.reserve(input.len() * 2);
        for i in 0..input.len() {
            // window = history[i + 1 ..= i + n], newest last
            let window = &self.history[i + 1..i + 1 + n];
            let mut a = 0f32;
            let mut b = 0f32;
            for k in 0..n {
                let x = window[n - 1 - k];
                a += self.even[k] * x;
                b += self.odd[k] * x;
            }
            out.push(clamp_i16(a));
            out.push(clamp_i16(b));
        }
        let keep = self.history.len() - n;
        self.history.drain(..keep);
    }

    pub fn reset(&mut self) {
        self.history.iter_mut().for_each(|s| *s = 0.0);
    }
}

/// 48 kHz -> 24 kHz. An odd trailing sample is kept for the next call.
pub struct Downsampler {
    taps: [f32; TAPS],
    /// Unconsumed input, with the `TAPS - 1` samples before it.
    history: Vec<f32>,
}

impl Default for Downsampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Downsampler {
    pub fn new() -> Self {
        Self { taps: lowpass(), history: vec![0.0; TAPS - 1] }
    }

    /// Appends `input.len() / 2` samples (plus one if a sample was left over) to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        self.history.extend(input.iter().map(|&s| s as f32));
        let mut start = 0;
        while start + TAPS <= self.history.len() {
            let window = &self.history[start..start + TAPS];
            let acc: f32 = window.iter().zip(self.taps.iter()).map(|(x, h)| x * h).sum();
            out.push(clamp_i16(acc));
            start += 2;
        }
        self.history.drain(..start);
    }

    pub fn reset(&mut self) {
        self.history.clear();
        self.history.resize(TAPS - 1, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: f32, freq: f32, n: usize, amp: f32) -> Vec<i16> {
        (0..n).map(|i| (amp * (2.0 * std::f32::consts::PI * freq * i as f32 / rate).sin()) as i16).collect()
    }

    fn rms(x: &[i16]) -> f32 {
        (x.iter().map(|&s| (s as f32).powi(2)).sum::<f32>() / x.len().max(1) as f32).sqrt()
    }

    #[test]
    fn upsampling_keeps_a_tone_and_doubles_the_length_across_chunks() {
        let input = tone(24_000.0, 440.0, 4800, 10_000.0);
        let mut up = Upsampler::new();
        let mut out = Vec::new();
        for chunk in input.chunks(480) {
            up.process(chunk, &mut out);
        }
        assert_eq!(out.len(), 9600);
        let want = tone(48_000.0, 440.0, 9600, 10_000.0);
        // After the filter delay the level matches the 48 kHz tone.
        let ratio = rms(&out[960..]) / rms(&want[960..]);
        assert!((ratio - 1.0).abs() < 0.05, "level ratio {ratio}");
        // No click where chunks join: the largest step stays a 440 Hz step.
        let max_step = out[64..].windows(2).map(|w| (w[1] as i32 - w[0] as i32).abs()).max().unwrap();
        assert!(max_step < 1000, "step {max_step}");
    }

    #[test]
    fn downsampling_keeps_speech_band_and_removes_what_24k_cannot_carry() {
        let mut down = Downsampler::new();
        let mut out = Vec::new();
        for chunk in tone(48_000.0, 1000.0, 9600, 10_000.0).chunks(960) {
            down.process(chunk, &mut out);
        }
        assert_eq!(out.len(), 4800);
        let ratio = rms(&out[480..]) / (10_000.0 / 2f32.sqrt());
        assert!((ratio - 1.0).abs() < 0.05, "1 kHz level ratio {ratio}");

        let mut down = Downsampler::new();
        let mut alias = Vec::new();
        down.process(&tone(48_000.0, 18_000.0, 9600, 10_000.0), &mut alias);
        assert!(rms(&alias[480..]) < 300.0, "18 kHz leaked as {}", rms(&alias[480..]));
    }

    #[test]
    fn odd_chunks_are_carried_over() {
        let mut down = Downsampler::new();
        let mut out = Vec::new();
        down.process(&[1; 961], &mut out);
        down.process(&[1; 959], &mut out);
        assert_eq!(out.len(), 960);
    }
}
