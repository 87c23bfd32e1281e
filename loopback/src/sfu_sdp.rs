//! Reading the m-sections of an offer or answer (mid, msid track id, kind): all the SFU
//! needs of SDP beyond what str0m parses.

/// (mid, msid track id, media kind) of every m-section of an SDP.
pub(super) fn sdp_sections(sdp: &str) -> Vec<(String, Option<String>, String)> {
    let mut out: Vec<(String, Option<String>, String)> = Vec::new();
    let mut cur: Option<(Option<String>, Option<String>, String)> = None;
    let flush = |cur: &mut Option<(Option<String>, Option<String>, String)>, out: &mut Vec<_>| {
        if let Some((Some(mid), track, kind)) = cur.take() {
            out.push((mid, track, kind));
        }
    };
    for line in sdp.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("m=") {
            flush(&mut cur, &mut out);
            cur = Some((None, None, rest.split_whitespace().next().unwrap_or("").to_string()));
        } else if let Some((mid, track, _)) = cur.as_mut() {
            if let Some(v) = line.strip_prefix("a=mid:") {
                *mid = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("a=msid:") {
                *track = v.split_whitespace().nth(1).map(str::to_string);
            } else if track.is_none() {
                if let Some(idx) = line.find(" msid:") {
                    if line.starts_with("a=ssrc:") {
                        *track = line[idx + 6..].split_whitespace().nth(1).map(str::to_string);
                    }
                }
            }
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// livekit-server's subscriber audio as it offers it: Opus RED (PT 63, `111/111`) preferred
/// over plain Opus for a RED-published track, and NACK and transport-cc feedback on Opus.
/// The SFU itself forwards plain Opus (str0m has no RED packetizer): a subscriber that takes
/// RED still receives PT 111, which a RED-capable receiver decodes as the Opus it negotiated
/// alongside.
pub(super) fn livekit_audio_offer(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len() + 256);
    let mut in_opus_audio = false;
    let mut fb: Vec<&str> = Vec::new();
    let lines: Vec<&str> = sdp.split("\r\n").filter(|l| !l.is_empty()).collect();
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("m=audio ") {
            let mut parts: Vec<&str> = rest.split(' ').collect();
            // "<port> <proto> <pt>...": the payload types start at the third field.
            in_opus_audio = parts.len() > 2 && parts[2..].contains(&"111") && !parts[2..].contains(&"63");
            if in_opus_audio {
                parts.insert(2, "63");
                out.push_str(&format!("m=audio {}\r\n", parts.join(" ")));
                fb.clear();
                continue;
            }
        } else if line.starts_with("m=") {
            in_opus_audio = false;
        }
        out.push_str(line);
        out.push_str("\r\n");
        if !in_opus_audio {
            continue;
        }
        if let Some(f) = line.strip_prefix("a=rtcp-fb:111 ") {
            fb.push(f);
        }
        let next_is_opus_attr = lines.get(i + 1).is_some_and(|n| n.starts_with("a=rtcp-fb:111 ") || n.starts_with("a=fmtp:111 "));
        if (line.starts_with("a=rtpmap:111 ") || line.starts_with("a=fmtp:111 ") || line.starts_with("a=rtcp-fb:111 ")) && !next_is_opus_attr {
            for want in ["transport-cc", "nack"] {
                if !fb.contains(&want) {
                    out.push_str(&format!("a=rtcp-fb:111 {want}\r\n"));
                }
            }
            out.push_str("a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n");
            in_opus_audio = false; // added once per section
        }
    }
    out
}

/// The codec names an answer's audio sections accepted, in its order of preference.
pub(super) fn answered_audio_codecs(sdp: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pts: Vec<String> = Vec::new();
    let mut names: std::collections::HashMap<String, String> = Default::default();
    for line in sdp.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("m=") {
            for pt in pts.drain(..) {
                if let Some(n) = names.get(&pt) {
                    if !out.contains(n) {
                        out.push(n.clone());
                    }
                }
            }
            names.clear();
            if rest.starts_with("audio ") {
                pts = rest.split(' ').skip(3).map(str::to_owned).collect();
            }
        } else if let Some(rest) = line.strip_prefix("a=rtpmap:") {
            if let Some((pt, codec)) = rest.split_once(' ') {
                names.insert(pt.to_owned(), codec.split('/').next().unwrap_or("").to_lowercase());
            }
        }
    }
    for pt in pts {
        if let Some(n) = names.get(&pt) {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{answered_audio_codecs, livekit_audio_offer, sdp_sections};

    #[test]
    fn subscriber_audio_prefers_red_with_livekit_feedback() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\n\
                   a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtcp-fb:111 transport-cc\r\na=ssrc:1 cname:x\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n";
        let out = livekit_audio_offer(sdp);
        assert!(out.contains("m=audio 9 UDP/TLS/RTP/SAVPF 63 111\r\n"), "{out}");
        assert!(out.contains("a=rtcp-fb:111 transport-cc\r\na=rtcp-fb:111 nack\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=ssrc:1"), "{out}");
        assert_eq!(out.matches("a=rtpmap:63").count(), 1);
        assert!(out.ends_with("a=mid:0\r\n"));
        // Already RED-first: unchanged.
        assert_eq!(livekit_audio_offer(&out), out);
        assert_eq!(answered_audio_codecs(&out), vec!["red".to_string(), "opus".to_string()]);
        assert_eq!(answered_audio_codecs(sdp), vec!["opus".to_string()]);
    }

    #[test]
    fn msid_track_ids_are_found_per_mid() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:stream TR_cid1\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=ssrc:1 msid:s2 cid2\r\n";
        let s = sdp_sections(sdp);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], ("0".into(), Some("TR_cid1".into()), "audio".into()));
        assert_eq!(s[1], ("1".into(), None, "application".into()));
        assert_eq!(s[2], ("2".into(), Some("cid2".into()), "audio".into()));
    }
}
