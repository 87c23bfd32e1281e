//! One dialogue message as a LiveKit text stream on topic `lk.transcription` (header, chunks,
//! trailer), as LiveKit agents publish transcripts for the room's frontends.

use std::collections::HashMap;

use consultant_actors::{DialogueMessage, Role};
use livekit_protocol as proto;
use proto::data_stream;

pub const TOPIC: &str = "lk.transcription";
/// Chunks stay well under the SCTP message size.
const CHUNK_BYTES: usize = 12_000;

/// The data packets of one transcript. `track_sid` is the transcribed track: the agent's for
/// its own words, the caller's microphone for theirs.
pub fn packets(message: &DialogueMessage, identity: &str, track_sid: &str) -> Vec<proto::DataPacket> {
    let attributes = HashMap::from([
        ("lk.transcribed_track_id".to_owned(), track_sid.to_owned()),
        ("lk.segment_id".to_owned(), format!("SG_{}", message.seq)),
        ("lk.transcription_final".to_owned(), "true".to_owned()),
    ]);
    text_stream(TOPIC, &message.text, attributes, identity, message.at.timestamp_millis())
}

/// A text stream (header, chunks, trailer) on `topic`, as LiveKit's SDKs read them.
#[allow(deprecated)] // DataPacket.kind: still read by servers and older clients
pub fn text_stream(topic: &str, text: &str, attributes: HashMap<String, String>, identity: &str, timestamp_ms: i64) -> Vec<proto::DataPacket> {
    let stream_id = uuid::Uuid::new_v4().to_string();
    let packet = |value| proto::DataPacket {
        kind: proto::data_packet::Kind::Reliable as i32,
        participant_identity: identity.to_owned(),
        value: Some(value),
        ..Default::default()
    };
    let mut out = vec![packet(proto::data_packet::Value::StreamHeader(data_stream::Header {
        stream_id: stream_id.clone(),
        timestamp: timestamp_ms,
        topic: topic.into(),
        mime_type: "text/plain".into(),
        total_length: Some(text.len() as u64),
        attributes,
        content_header: Some(data_stream::header::ContentHeader::TextHeader(data_stream::TextHeader {
            operation_type: data_stream::OperationType::Create as i32,
            ..Default::default()
        })),
        ..Default::default()
    }))];
    for (index, content) in chunks(text).into_iter().enumerate() {
        out.push(packet(proto::data_packet::Value::StreamChunk(data_stream::Chunk {
            stream_id: stream_id.clone(),
            chunk_index: index as u64,
            content: content.into_bytes(),
            ..Default::default()
        })));
    }
    out.push(packet(proto::data_packet::Value::StreamTrailer(data_stream::Trailer { stream_id, ..Default::default() })));
    out
}

/// The same packets for these participants only.
pub fn only_to(mut packets: Vec<proto::DataPacket>, identities: &[String]) -> Vec<proto::DataPacket> {
    for p in &mut packets {
        p.destination_identities = identities.to_vec();
    }
    packets
}

/// Whose track a message transcribes.
pub fn is_agent(message: &DialogueMessage) -> bool {
    message.role == Role::Assistant
}

/// The text in pieces of at most [`CHUNK_BYTES`], split on character boundaries.
fn chunks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > CHUNK_BYTES {
            out.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_chunked_on_character_boundaries_and_reassembles() {
        let text = "Здравствуйте! ".repeat(2000);
        let parts = chunks(&text);
        assert!(parts.len() > 1 && parts.iter().all(|p| p.len() <= CHUNK_BYTES));
        assert_eq!(parts.concat(), text);
        assert!(chunks("").is_empty());
    }

    #[test]
    fn a_transcript_is_header_chunks_trailer_of_one_stream() {
        let message = DialogueMessage { seq: 3, role: Role::User, text: "Меня зовут Анна".into(), at: chrono::Utc::now(), interrupted: false };
        let p = packets(&message, "agent-1", "TR_mic");
        assert_eq!(p.len(), 3);
        let Some(proto::data_packet::Value::StreamHeader(h)) = &p[0].value else { panic!("header first") };
        assert_eq!((h.topic.as_str(), h.attributes["lk.segment_id"].as_str(), h.attributes["lk.transcribed_track_id"].as_str()), (TOPIC, "SG_3", "TR_mic"));
        let Some(proto::data_packet::Value::StreamChunk(c)) = &p[1].value else { panic!("chunk") };
        assert_eq!((c.stream_id.as_str(), c.content.as_slice()), (h.stream_id.as_str(), message.text.as_bytes()));
        assert!(matches!(&p[2].value, Some(proto::data_packet::Value::StreamTrailer(t)) if t.stream_id == h.stream_id));
    }
}
