//! WAV input and output: any PCM or float WAV in, PCM16 mono 24 kHz for the realtime side.

use std::path::Path;

use super::resample::resample_to_pcm16;
use super::RATE;

/// Reads a WAV of any rate, channel count and sample format, mixes to mono and resamples to
/// 24 kHz PCM16.
pub fn read_as_realtime_pcm(path: &Path) -> Result<Vec<i16>, String> {
    let mut reader = hound::WavReader::open(path).map_err(|e| format!("cannot read {} as a WAV file: {e}", path.display()))?;
    let spec = reader.spec();
    if spec.channels == 0 {
        return Err(format!("{} declares 0 channels", path.display()));
    }
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>(),
        hound::SampleFormat::Int => {
            let full = (1i64 << (spec.bits_per_sample - 1)) as f32;
            reader.samples::<i32>().map(|s| s.map(|v| v as f32 / full)).collect::<Result<_, _>>()
        }
    }
    .map_err(|e| format!("{} is damaged: {e}", path.display()))?;
    let channels = spec.channels as usize;
    let mono: Vec<f32> = samples.chunks(channels).map(|frame| frame.iter().sum::<f32>() / channels as f32).collect();
    resample_to_pcm16(&mono, spec.sample_rate, RATE as u32)
}

/// Writes PCM16 mono 24 kHz.
pub fn write_realtime_pcm(path: &Path, pcm: &[i16]) -> Result<(), String> {
    let spec = hound::WavSpec { channels: 1, sample_rate: RATE as u32, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut writer = hound::WavWriter::create(path, spec).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    for s in pcm {
        writer.write_sample(*s).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    writer.finalize().map_err(|e| format!("cannot finish {}: {e}", path.display()))
}
