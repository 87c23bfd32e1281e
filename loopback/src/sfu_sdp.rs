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

#[cfg(test)]
mod tests {
    use super::sdp_sections;

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
