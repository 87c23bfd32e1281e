//! Streaming rational resampler: polyphase windowed-sinc (Blackman-Harris window), with the
//! low-pass cut below the lower of the two Nyquist frequencies so downsampling does not alias.
//! Used for caller WAV files in `simulate` and for room audio (48 kHz -> 24 kHz).

/// Zero crossings of the sinc kept on each side, at the narrower of the two rates.
const HALF_ZEROS: usize = 16;
/// Fraction of the Nyquist band kept (the rest is the transition band).
const PASSBAND: f64 = 0.92;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-12 {
        1.0
    } else {
        (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
    }
}

/// Blackman-Harris window over [-1, 1].
fn window(t: f64) -> f64 {
    if t.abs() >= 1.0 {
        return 0.0;
    }
    let x = std::f64::consts::PI * (t + 1.0); // 0..2pi
    0.35875 - 0.48829 * x.cos() + 0.14128 * (2.0 * x).cos() - 0.01168 * (3.0 * x).cos()
}

/// Converts a mono stream from one rate to another, chunk by chunk (state is kept between
/// calls, so chunk boundaries leave no trace).
pub struct Resampler {
    up: u64,
    down: u64,
    half: usize,
    /// `up` phases of `2 * half` taps each.
    table: Vec<f32>,
    /// Input not yet fully used; `buf[0]` is input sample number `base`.
    buf: Vec<f32>,
    base: u64,
    /// Next output sample number.
    next_out: u64,
}

impl Resampler {
    pub fn new(from_rate: u32, to_rate: u32) -> Result<Self, String> {
        if from_rate == 0 || to_rate == 0 {
            return Err(format!("cannot resample {from_rate} Hz -> {to_rate} Hz: rates must be above 0"));
        }
        let g = gcd(from_rate as u64, to_rate as u64);
        let (up, down) = (to_rate as u64 / g, from_rate as u64 / g);
        // Cut-off in cycles per input sample (0.5 = input Nyquist).
        let scale = (to_rate as f64 / from_rate as f64).min(1.0);
        let cutoff = 0.5 * scale * PASSBAND;
        let half = (HALF_ZEROS as f64 / scale).ceil() as usize;
        let taps = 2 * half;
        let mut table = vec![0f32; up as usize * taps];
        for phase in 0..up as usize {
            let frac = phase as f64 / up as f64;
            let row = &mut table[phase * taps..(phase + 1) * taps];
            let mut sum = 0.0;
            for (k, tap) in row.iter_mut().enumerate() {
                // Distance (in input samples) of tap k from the output instant.
                let t = k as f64 - (half as f64 - 1.0) - frac;
                let v = 2.0 * cutoff * sinc(2.0 * cutoff * t) * window(t / half as f64);
                *tap = v as f32;
                sum += v;
            }
            // Unity gain at DC for every phase.
            for tap in row.iter_mut() {
                *tap = (*tap as f64 / sum) as f32;
            }
        }
        // Leading zeros stand for the silence before the stream.
        let buf = vec![0f32; half - 1];
        Ok(Self { up, down, half, table, buf, base: 0, next_out: 0 })
    }

    /// Feeds input samples (-1.0..1.0) and appends every output sample now computable.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.buf.extend_from_slice(input);
        let taps = 2 * self.half;
        loop {
            let pos = self.next_out * self.down;
            let i = pos / self.up; // input sample at or before the output instant (padded index)
            let phase = (pos % self.up) as usize;
            if i < self.base || (i - self.base) as usize + taps > self.buf.len() {
                break;
            }
            let start = (i - self.base) as usize;
            let window = &self.buf[start..start + taps];
            let coeffs = &self.table[phase * taps..(phase + 1) * taps];
            out.push(window.iter().zip(coeffs).map(|(x, h)| x * h).sum());
            self.next_out += 1;
        }
        // Drop input no future output needs.
        let needed_from = (self.next_out * self.down) / self.up;
        if needed_from > self.base {
            let drop = ((needed_from - self.base) as usize).min(self.buf.len());
            self.buf.drain(..drop);
            self.base += drop as u64;
        }
    }

    /// Flushes the tail (the filter's look-ahead) at the end of the stream.
    pub fn finish(&mut self, out: &mut Vec<f32>) {
        let pad = vec![0f32; self.half];
        self.process(&pad, out);
    }
}

/// Whole-buffer convenience: mono f32 at `from_rate` -> PCM16 at `to_rate`.
pub fn resample_to_pcm16(input: &[f32], from_rate: u32, to_rate: u32) -> Result<Vec<i16>, String> {
    let mut out = Vec::with_capacity((input.len() as u64 * to_rate as u64 / from_rate.max(1) as u64) as usize + 64);
    if from_rate == to_rate {
        out.extend_from_slice(input);
    } else {
        let mut r = Resampler::new(from_rate, to_rate)?;
        r.process(input, &mut out);
        r.finish(&mut out);
        // The padded tail may overshoot by a few samples.
        out.truncate((input.len() as u64 * to_rate as u64).div_ceil(from_rate as u64) as usize);
    }
    Ok(out.into_iter().map(|s| (s.clamp(-1.0, 1.0) * 32767.0).round() as i16).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, secs: f64) -> Vec<f32> {
        (0..(rate as f64 * secs) as usize).map(|i| (0.5 * (i as f64 * freq * std::f64::consts::TAU / rate as f64).sin()) as f32).collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|s| (*s as f64 / 32767.0).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn keeps_the_passband_and_the_length() {
        for rate in [8_000, 16_000, 22_050, 44_100, 48_000] {
            let out = resample_to_pcm16(&tone(1000.0, rate, 1.0), rate, 24_000).unwrap();
            assert!((out.len() as i64 - 24_000).abs() <= 1, "{rate}: {} samples", out.len());
            let steady = &out[2000..22000];
            // A 0.5-amplitude sine has RMS 0.354.
            assert!((rms(steady) - 0.3536).abs() < 0.01, "{rate}: rms {}", rms(steady));
            // Still 1 kHz: about 2 zero crossings per millisecond.
            let crossings = steady.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
            assert!((crossings as i64 - 1666).abs() <= 4, "{rate}: {crossings} crossings");
        }
    }

    #[test]
    fn removes_what_would_alias() {
        // 15 kHz cannot exist at 24 kHz; it must not fold down to 9 kHz.
        let out = resample_to_pcm16(&tone(15_000.0, 48_000, 1.0), 48_000, 24_000).unwrap();
        assert!(rms(&out[2000..22000]) < 0.3536 * 0.01, "leak {}", rms(&out[2000..22000]));
    }

    #[test]
    fn chunking_leaves_no_trace() {
        let input = tone(440.0, 44_100, 0.5);
        let mut whole = Vec::new();
        let mut r = Resampler::new(44_100, 24_000).unwrap();
        r.process(&input, &mut whole);
        let mut chunked = Vec::new();
        let mut r = Resampler::new(44_100, 24_000).unwrap();
        for c in input.chunks(441) {
            r.process(c, &mut chunked);
        }
        assert_eq!(whole, chunked);
    }
}
