//! The little SDP reading str0m does not expose: which remote track each m-section carries.

/// An m-section of a remote description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub mid: String,
    pub kind: String,
    /// msid stream id; LiveKit uses `PA_sid|TR_sid`.
    pub stream_id: Option<String>,
    /// msid track id; LiveKit uses the TR_ sid.
    pub track_id: Option<String>,
}

impl Section {
    /// The publishing participant's sid, from LiveKit's `PA_sid|TR_sid` stream id.
    pub fn participant_sid(&self) -> Option<&str> {
        self.stream_id.as_deref().and_then(|s| s.split('|').next()).filter(|s| !s.is_empty())
    }
}

pub fn sections(sdp: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    let mut cur: Option<Section> = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("m=") {
            out.extend(cur.take().filter(|s| !s.mid.is_empty()));
            cur = Some(Section { mid: String::new(), kind: rest.split_whitespace().next().unwrap_or("").to_owned(), stream_id: None, track_id: None });
            continue;
        }
        let Some(s) = cur.as_mut() else { continue };
        if let Some(v) = line.strip_prefix("a=mid:") {
            s.mid = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("a=msid:") {
            let mut parts = v.split_whitespace();
            s.stream_id = parts.next().map(str::to_owned);
            s.track_id = parts.next().map(str::to_owned);
        } else if s.stream_id.is_none() && line.starts_with("a=ssrc:") {
            if let Some(i) = line.find(" msid:") {
                let mut parts = line[i + 6..].split_whitespace();
                s.stream_id = parts.next().map(str::to_owned);
                s.track_id = parts.next().map(str::to_owned);
            }
        }
    }
    out.extend(cur.filter(|s| !s.mid.is_empty()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn livekit_subscriber_sections_name_participant_and_track() {
        let sdp = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=msid:PA_abc|TR_def TR_def\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=ssrc:5 msid:PA_x|TR_y TR_y\r\n";
        let s = sections(sdp);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].kind, "application");
        assert_eq!(s[1].track_id.as_deref(), Some("TR_def"));
        assert_eq!(s[1].participant_sid(), Some("PA_abc"));
        assert_eq!(s[2].participant_sid(), Some("PA_x"));
    }
}
