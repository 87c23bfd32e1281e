//! What the server's signalling messages do to the room: offers, candidates, participant
//! updates, leave actions, token refreshes, resumes, and subscription permissions.

use consultant_actors::ports::{RoomEnd, RoomFailure};
use livekit_protocol as proto;
use ractor::ActorRef;
use str0m::media::Mid;
use str0m::Candidate;
use std::time::Instant;

use super::{now_ms, RoomMsg, RoomState};
use crate::room::peer::Target;
use crate::room::publisher::trickle;
use crate::room::sdp;
use crate::room::signal::{self, Request, Response};
use crate::secret::Secret;

impl RoomState {
    pub(super) fn on_signal(&mut self, myself: &ActorRef<RoomMsg>, resp: Response) {
        self.last_heard = Instant::now();
        match resp {
            Response::Offer(o) => self.on_subscriber_offer(o),
            Response::Answer(a) => match self.publisher.answered(a) {
                Ok(reqs) => {
                    self.send_all(reqs);
                    self.update_publishing();
                }
                Err(e) => self.fail(RoomFailure::Media(e)),
            },
            Response::Trickle(t) => {
                let target = Target::from_proto(t.target);
                match signal::candidate_from_init(&t.candidate_init) {
                    Some(c) if c.is_empty() => {}
                    Some(c) => match Candidate::from_sdp_string(&c) {
                        Ok(c) => {
                            let peer = self.peer(target);
                            peer.touch();
                            peer.rtc.add_remote_candidate(c);
                        }
                        Err(e) => tracing::debug!(error = %e, "remote candidate ignored"),
                    },
                    None => tracing::warn!("trickle without a candidate ignored"),
                }
            }
            Response::TrackPublished(t) if self.publisher.is_ours(&t.cid) => {
                let reqs = self.publisher.published(t.track.map(|t| t.sid).unwrap_or_default());
                self.send_all(reqs);
            }
            Response::Update(u) => {
                let change = self.feed.merge(u.participants, &self.sid);
                self.on_feed(change);
            }
            Response::Leave(l) => {
                let resume = l.action == proto::leave_request::Action::Resume as i32 || l.action == proto::leave_request::Action::Reconnect as i32;
                if l.can_reconnect && resume {
                    // RECONNECT = the server forgot us: a full join; RESUME = same session.
                    let full = l.action == proto::leave_request::Action::Reconnect as i32;
                    tracing::warn!(reason = l.reason, full, "server asked us to reconnect");
                    self.start_resume(myself, "server asked to reconnect".into(), full);
                } else {
                    let reason = proto::DisconnectReason::try_from(l.reason).map(|r| r.as_str_name().to_owned()).unwrap_or_else(|_| l.reason.to_string());
                    self.end(RoomEnd::RoomClosed(format!("the server removed us from the room ({reason})")));
                }
            }
            Response::PongResp(p) => self.rtt_ms = now_ms() - p.last_ping_timestamp,
            Response::SubscriptionPermissionUpdate(u) => self.on_permission(u),
            Response::RoomUpdate(u) => {
                let room = u.room.unwrap_or_default();
                tracing::debug!(participants = room.num_participants, metadata = %room.metadata, "room update");
            }
            // Nothing to do: the realtime side's VAD hears the caller itself, and on loopback
            // or a LAN the link quality says nothing the RTP statistics do not.
            Response::SpeakersChanged(_) | Response::ConnectionQuality(_) => {}
            Response::RefreshToken(t) => *self.token.lock().expect("token lock") = Secret::new(t),
            Response::Join(j) => {
                // A resume the server treated as a fresh join: new PCs, publish again.
                tracing::warn!("server answered the resume with a fresh join; renegotiating both peer connections");
                if let Err(e) = self.restart_media(myself, j) {
                    self.fail(RoomFailure::Media(e));
                }
            }
            Response::Reconnect(_) => {
                // Same PCs; the server re-offers the subscriber with an ICE restart. The
                // publisher restarts ICE only if its path was lost too.
                tracing::info!(publisher_connected = self.publisher.peer.connected, "resumed the same session");
                if !self.publisher.peer.connected {
                    let reqs = self.publisher.restart_ice();
                    self.send_all(reqs);
                }
            }
            _ => {}
        }
    }

    fn on_subscriber_offer(&mut self, o: proto::SessionDescription) {
        let offer = match str0m::change::SdpOffer::from_sdp_string(&o.sdp) {
            Ok(x) => x,
            Err(e) => return self.fail(RoomFailure::Media(format!("unparsable subscriber offer: {e}"))),
        };
        self.subscriber.touch();
        let answer = match self.subscriber.rtc.sdp_api().accept_offer(offer) {
            Ok(a) => a,
            Err(e) => return self.fail(RoomFailure::Media(format!("subscriber offer refused: {e}"))),
        };
        let sections = sdp::sections(&o.sdp);
        let first = sections.first().map(|s| s.mid.clone()).unwrap_or_else(|| "0".into());
        for s in sections {
            self.remote.insert(Mid::from(s.mid.as_str()), s);
        }
        self.send(Request::Answer(proto::SessionDescription { r#type: "answer".into(), sdp: answer.to_sdp_string(), id: o.id, ..Default::default() }));
        if let Some(t) = trickle(&mut self.subscriber, &first) {
            self.send(t);
        }
    }

    /// A publisher allowed or refused us its track (`SubscriptionPermissionUpdate`). Refused,
    /// the SFU stops sending it: the consultation hears silence until it is allowed again, so
    /// say so once where an operator looks, and keep it in the status.
    fn on_permission(&mut self, u: proto::SubscriptionPermissionUpdate) {
        let changed = if u.allowed { self.denied_tracks.remove(&u.track_sid) } else { self.denied_tracks.insert(u.track_sid.clone()) };
        if !changed {
            return;
        }
        if u.allowed {
            tracing::info!(participant = %u.participant_sid, track = %u.track_sid, "the caller allowed us their audio again");
        } else {
            tracing::warn!(participant = %u.participant_sid, track = %u.track_sid, "the caller does not allow the agent to hear their audio; the consultation hears silence until they allow it");
        }
        let denied = !self.denied_tracks.is_empty();
        self.set_status(|s| s.caller_audio_denied = denied);
    }
}
