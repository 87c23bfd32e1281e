//! Opus in 20 ms mono frames, wrapping libopus (the `opus` crate, built from bundled source):
//! agent PCM 24 kHz -> Opus packet, and Opus packet -> caller PCM 24 kHz. libopus encodes from
//! and decodes to 24 kHz itself, so no resampling is ours to do; the RTP clock stays 48 kHz
//! whatever the PCM rate (RFC 7587).

/// The realtime side's rate.
pub const PCM_RATE: u32 = 24_000;
/// One 20 ms frame at 24 kHz.
pub const FRAME_24K: usize = 480;
/// Largest Opus frame (120 ms at 24 kHz).
const MAX_DECODED: usize = 2880;
/// RFC 6716 caps a packet well below this.
const MAX_PACKET: usize = 1500;
/// libopus's complexity (0-10) for the agent's voice.
const COMPLEXITY: i32 = 5;

#[derive(Debug, thiserror::Error)]
#[error("opus {what}: {source}")]
pub struct CodecError {
    what: &'static str,
    #[source]
    source: opus::Error,
}

fn err(what: &'static str) -> impl FnOnce(opus::Error) -> CodecError {
    move |source| CodecError { what, source }
}

/// Agent speech: 24 kHz PCM in, one Opus packet per 20 ms out.
pub struct AgentEncoder {
    encoder: opus::Encoder,
    packet: Vec<u8>,
}

impl AgentEncoder {
    pub fn new() -> Result<Self, CodecError> {
        let mut encoder = opus::Encoder::new(PCM_RATE, opus::Channels::Mono, opus::Application::Voip).map_err(err("encoder"))?;
        encoder.set_bitrate(opus::Bitrate::Bits(32_000)).map_err(err("bitrate"))?;
        encoder.set_inband_fec(true).map_err(err("fec"))?;
        // The model speaks at 24 kHz, so nothing above wideband's 8 kHz is worth coding: SILK
        // alone, no CELT or hybrid layer. With signal voice and complexity 5 a 20 ms frame of
        // espeak speech costs ~233 us instead of libopus's default (10, fullband) ~355 us, and
        // decodes in 35 us instead of 54; silence after speech takes a few bytes instead of 32.
        encoder.set_complexity(COMPLEXITY).map_err(err("complexity"))?;
        encoder.set_signal(opus::Signal::Voice).map_err(err("signal"))?;
        encoder.set_max_bandwidth(opus::Bandwidth::Wideband).map_err(err("bandwidth"))?;
        Ok(Self { encoder, packet: vec![0; MAX_PACKET] })
    }

    /// Encodes exactly one 20 ms frame (`FRAME_24K` samples at 24 kHz). The returned packet
    /// borrows an internal buffer.
    pub fn encode(&mut self, frame_24k: &[i16]) -> Result<&[u8], CodecError> {
        debug_assert_eq!(frame_24k.len(), FRAME_24K);
        let n = self.encoder.encode(frame_24k, &mut self.packet).map_err(err("encode"))?;
        Ok(&self.packet[..n])
    }

    /// Forget the encoder's history (after a cut, so the next answer starts clean).
    pub fn reset(&mut self) -> Result<(), CodecError> {
        self.encoder.reset_state().map_err(err("reset"))
    }
}

/// Caller speech: Opus packets in, 24 kHz mono PCM out.
pub struct CallerDecoder {
    decoder: opus::Decoder,
    pcm: Vec<i16>,
}

impl CallerDecoder {
    pub fn new() -> Result<Self, CodecError> {
        let decoder = opus::Decoder::new(PCM_RATE, opus::Channels::Mono).map_err(err("decoder"))?;
        Ok(Self { decoder, pcm: vec![0; MAX_DECODED] })
    }

    /// Decodes one packet and appends its audio at 24 kHz to `out`; returns the samples added.
    pub fn decode(&mut self, packet: &[u8], out: &mut Vec<i16>) -> Result<usize, CodecError> {
        let n = self.decoder.decode(packet, &mut self.pcm, false).map_err(err("decode"))?;
        out.extend_from_slice(&self.pcm[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_survives_encode_and_decode_at_the_right_rate() {
        let mut enc = AgentEncoder::new().unwrap();
        let mut dec = CallerDecoder::new().unwrap();
        let tone: Vec<i16> =
            (0..FRAME_24K * 50).map(|i| (8000.0 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 24_000.0).sin()) as i16).collect();
        let mut out = Vec::new();
        for frame in tone.chunks(FRAME_24K) {
            let packet = enc.encode(frame).unwrap().to_vec();
            assert!(packet.len() > 2 && packet.len() < 400, "packet of {} bytes", packet.len());
            assert_eq!(dec.decode(&packet, &mut out).unwrap(), FRAME_24K);
        }
        assert_eq!(out.len(), tone.len());
        let rms = |x: &[i16]| (x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
        let ratio = rms(&out[4800..]) / rms(&tone[4800..]);
        assert!((0.8..1.2).contains(&ratio), "level ratio after the codec {ratio}");
    }

    /// Speech-like audio (a tone gliding under a syllable envelope), then digital silence: every
    /// packet is SILK wideband (TOC configs 8-11, RFC 6716 3.1), and from the fourth frame of
    /// silence on a packet is a few bytes, as the load test's speech-by-size rule expects.
    #[test]
    fn the_agent_voice_is_wideband_silk_and_its_silence_is_a_few_bytes() {
        let mut enc = AgentEncoder::new().unwrap();
        let voice: Vec<i16> = (0..FRAME_24K * 50)
            .map(|i| {
                let t = i as f32 / 24_000.0;
                let envelope = (std::f32::consts::PI * t * 4.0).sin().abs();
                let pitch = 140.0 + 60.0 * (t * 3.0).sin();
                (9000.0 * envelope * (2.0 * std::f32::consts::PI * pitch * t).sin() + 2000.0 * (2.0 * std::f32::consts::PI * 2300.0 * t).sin() * envelope) as i16
            })
            .collect();
        let silence = vec![0i16; FRAME_24K * 20];
        let mut sizes = Vec::new();
        for frame in voice.chunks(FRAME_24K).chain(silence.chunks(FRAME_24K)) {
            let packet = enc.encode(frame).unwrap();
            let config = packet[0] >> 3;
            assert!((8..=11).contains(&config), "TOC config {config}: not SILK wideband");
            sizes.push(packet.len());
        }
        let silent = crate::loadtest::stats::SILENT_PACKET_BYTES;
        let (speech, quiet) = sizes.split_at(50);
        assert!(speech.iter().skip(2).all(|&n| n > silent), "speech packets {speech:?}");
        assert!(quiet.iter().skip(3).all(|&n| n <= silent), "silence packets {quiet:?}");
    }
}
