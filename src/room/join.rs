//! Joining a room: the address our candidates use, signalling, and the server's answer (a join,
//! or a refusal that no rejoin can change).

use std::net::IpAddr;

use consultant_actors::ports::RoomFailure;
use livekit_protocol as proto;
use ractor::ActorRef;

use super::actor::{RoomArgs, RoomMsg};
use super::peer;
use super::signal::{self, Incoming, Response, SignalLink};

pub fn deliverer(myself: ActorRef<RoomMsg>, gen: u64) -> impl Fn(Incoming) -> bool + Send + 'static {
    move |incoming| myself.send_message(RoomMsg::Signal { gen, incoming }).is_ok()
}

/// Signalling and the server's join; Err says why the agent is not in the room.
pub async fn connect(myself: &ActorRef<RoomMsg>, args: &RoomArgs) -> Result<(IpAddr, SignalLink, proto::JoinResponse), RoomFailure> {
    let http = signal::rtc_url(&args.url, None).map_err(RoomFailure::Join)?.as_str().replacen("ws", "http", 1);
    let local_ip = peer::local_ip_towards(&http).await.map_err(RoomFailure::Join)?;
    let token = args.token.lock().expect("token lock").clone();
    let attempt = signal::connect(&args.url, &token, None, &args.options.tls, deliverer(myself.clone(), 0));
    let (link, first) = tokio::time::timeout(args.options.join_timeout, attempt)
        .await
        .map_err(|_| RoomFailure::Join(format!("no join response within {:?}", args.options.join_timeout)))?
        .map_err(RoomFailure::Join)?;
    match first {
        Response::Join(j) => Ok((local_ip, link, j)),
        Response::Leave(l) => Err(RoomFailure::Refused(proto::DisconnectReason::try_from(l.reason).map(|r| r.as_str_name().to_owned()).unwrap_or_default())),
        other => Err(RoomFailure::Join(format!("the server's first signalling message was not a join: {other:?}"))),
    }
}
