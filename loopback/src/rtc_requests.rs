//! What a participant's signalling requests do (offers, answers, trickle, tracks, mute,
//! metadata, leave, pings), and how a session ends.

use super::*;

pub(super) fn sd(kind: &str, sdp: String, id: u32) -> proto::SessionDescription {
    proto::SessionDescription { r#type: kind.into(), sdp, id, ..Default::default() }
}

pub(super) enum Handled {
    Reply(Box<Resp>),
    None,
    Leave,
}

impl Session {
    pub(super) fn handle(&mut self, req: Req) -> Handled {
        let sh = self.sh.clone();
        match req {
            Req::Offer(o) => {
                sh.media.send(MediaCmd::PublisherOffer { pc: self.pub_pc, sdp: o.sdp, id: o.id });
                Handled::None
            }
            Req::Answer(a) => {
                sh.media.send(MediaCmd::SubscriberAnswer { pc: self.sub_pc, sdp: a.sdp });
                Handled::None
            }
            Req::Trickle(t) => {
                let pc = if t.target == proto::SignalTarget::Subscriber as i32 { self.sub_pc } else { self.pub_pc };
                let cand = serde_json::from_str::<serde_json::Value>(&t.candidate_init)
                    .ok()
                    .and_then(|v| v.get("candidate").and_then(|c| c.as_str()).map(str::to_string));
                match cand {
                    Some(c) => sh.media.send(MediaCmd::RemoteCandidate { pc, candidate: c }),
                    None => sh.emit_now(ServerEvent::ProtocolError {
                        peer: self.identity.clone(),
                        detail: "trickle candidateInit is not JSON with a candidate".into(),
                    }),
                }
                Handled::None
            }
            Req::AddTrack(a) => self.add_track(a),
            Req::Mute(m) => {
                let mut g = sh.lock();
                let Some(room) = g.rooms.get_mut(&self.room) else { return Handled::None };
                let Some(p) = room.participants.values_mut().find(|p| p.conn_id == self.conn_id) else { return Handled::None };
                if let Some(t) = p.tracks.iter_mut().find(|t| t.sid == m.sid) {
                    t.muted = m.muted;
                }
                let me = p.info();
                for o in room.participants.values().filter(|o| o.conn_id != self.conn_id) {
                    if let Some(tx) = &o.signal {
                        let _ = tx.send(SignalOut::Update(vec![me.clone()]));
                    }
                }
                Handled::None
            }
            Req::UpdateMetadata(u) => {
                if let Err(why) = crate::metadata::update_own(&sh, &self.room, self.conn_id, &u) {
                    sh.emit_now(ServerEvent::ProtocolError { peer: self.identity.clone(), detail: format!("update_metadata refused: {why}") });
                }
                Handled::None
            }
            Req::SubscriptionPermission(perm) => {
                let mut g = sh.lock();
                crate::permissions::set(&sh, &mut g, &self.room, self.conn_id, perm);
                Handled::None
            }
            Req::Leave(_) => Handled::Leave,
            Req::Ping(ts) => Handled::Reply(Box::new(Resp::Pong(ts))),
            Req::PingReq(p) => {
                Handled::Reply(Box::new(Resp::PongResp(proto::Pong { last_ping_timestamp: p.timestamp, timestamp: now_millis() })))
            }
            other => {
                tracing::debug!(identity = %self.identity, request = ?std::mem::discriminant(&other), "signal request ignored");
                Handled::None
            }
        }
    }

    fn add_track(&mut self, a: proto::AddTrackRequest) -> Handled {
        let sh = self.sh.clone();
        let mut g = sh.lock();
        let Some(room) = g.rooms.get_mut(&self.room) else { return Handled::None };
        let Some(p) = room.participants.values_mut().find(|p| p.conn_id == self.conn_id) else { return Handled::None };
        if !p.permission.can_publish {
            drop(g);
            sh.emit_now(ServerEvent::ProtocolError { peer: self.identity.clone(), detail: "add_track without canPublish".into() });
            return Handled::None;
        }
        if a.r#type != proto::TrackType::Audio as i32 {
            drop(g);
            sh.emit_now(ServerEvent::ProtocolError {
                peer: self.identity.clone(),
                detail: format!("add_track of type {} refused: the loopback SFU forwards audio only", a.r#type),
            });
            return Handled::None;
        }
        let track_sid = new_id("TR_");
        let info = proto::TrackInfo {
            sid: track_sid.clone(),
            r#type: a.r#type,
            name: a.name.clone(),
            muted: a.muted,
            source: a.source,
            mime_type: "audio/opus".into(),
            disable_dtx: a.disable_dtx,
            stream: a.stream.clone(),
            ..Default::default()
        };
        p.tracks.push(info.clone());
        let me = p.info();
        let psid = p.sid.clone();
        sh.media.send(MediaCmd::PendingTrack { pub_pc: self.pub_pc, cid: a.cid.clone(), track_sid: track_sid.clone() });
        for o in room.participants.values().filter(|o| o.conn_id != self.conn_id) {
            if let Some(tx) = &o.signal {
                let _ = tx.send(SignalOut::Update(vec![me.clone()]));
            }
            if o.auto_subscribe && o.permission.can_subscribe {
                sh.media.send(MediaCmd::Subscribe {
                    sub_pc: o.pcs.1,
                    track: OutTrackSpec {
                        track_sid: track_sid.clone(),
                        participant_sid: psid.clone(),
                    },
                });
            }
        }
        crate::permissions::apply_to_new_track(&sh, &g, &self.room, self.conn_id, &track_sid);
        tracing::info!(room = %self.room, identity = %self.identity, %track_sid, cid = %a.cid, "track published");
        sh.emit(&mut g, ServerEvent::TrackPublished {
            room: self.room.clone(),
            identity: self.identity.clone(),
            track_sid,
            cid: a.cid.clone(),
        });
        Handled::Reply(Box::new(Resp::TrackPublished(proto::TrackPublishedResponse { cid: a.cid, track: Some(info) })))
    }

    /// End of one signalling connection: gone now, or after the resume grace.
    pub(super) fn finish(&self, exit: Exit) {
        match exit {
            Exit::Gone(reason, why) => self.cleanup(&reason, why),
            Exit::Lost(reason) => {
                let sh = self.sh.clone();
                let gen = {
                    let mut g = sh.lock();
                    let Some(p) = g
                        .rooms
                        .get_mut(&self.room)
                        .and_then(|r| r.participants.values_mut().find(|p| p.conn_id == self.conn_id))
                    else {
                        return;
                    };
                    if p.signal_gen != self.gen {
                        return; // a resume already replaced this connection
                    }
                    p.signal = None;
                    let gen = p.signal_gen;
                    sh.emit(&mut g, ServerEvent::SignalLost {
                        room: self.room.clone(),
                        identity: self.identity.clone(),
                        reason: reason.clone(),
                    });
                    gen
                };
                tracing::info!(room = %self.room, identity = %self.identity, %reason, "signalling lost; waiting for a resume");
                let me = Session { sh: sh.clone(), room: self.room.clone(), identity: self.identity.clone(), json: false, claims: self.claims.clone(), ..*self };
                tokio::spawn(async move {
                    tokio::time::sleep(me.sh.cfg.reconnect_grace).await;
                    let still_lost = {
                        let g = me.sh.lock();
                        g.rooms
                            .get(&me.room)
                            .and_then(|r| r.participants.values().find(|p| p.conn_id == me.conn_id))
                            .is_some_and(|p| p.signal.is_none() && p.signal_gen == gen)
                    };
                    if still_lost {
                        // livekit-server: a peer that never came back timed out.
                        me.cleanup(&reason, proto::DisconnectReason::ConnectionTimeout);
                    }
                });
            }
        }
    }

    pub(super) fn cleanup(&self, reason: &str, why: proto::DisconnectReason) {
        let sh = &self.sh;
        sh.media.send(MediaCmd::RemoveParticipant { pub_pc: self.pub_pc, sub_pc: self.sub_pc });
        let mut g = sh.lock();
        let tracks: Vec<String> = g
            .rooms
            .get(&self.room)
            .and_then(|r| r.participants.values().find(|p| p.conn_id == self.conn_id))
            .map(|p| p.tracks.iter().map(|t| t.sid.clone()).collect())
            .unwrap_or_default();
        if !tracks.is_empty() {
            sh.media.send(MediaCmd::TracksGone { track_sids: tracks });
        }
        rooms::participant_left_locked(sh, &mut g, &self.room, self.conn_id, reason, why);
    }
}
