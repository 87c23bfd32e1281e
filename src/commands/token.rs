//! `consultant token --session-id ID [--identity NAME]`: a caller's join token for the
//! consultation room, printed as JSON {url, room, identity, token}.

use consultant_actors::SessionId;

use crate::config::{Config, Service};
use crate::livekit::{generate_room_name, JoinInfo, LiveKitClient};

pub fn run(config: &Config, session_id: &SessionId, identity: &str, dispatch: bool) -> anyhow::Result<()> {
    config.require(&[Service::LiveKit])?;
    let client = LiveKitClient::new(&config.livekit)?;
    let room = generate_room_name(session_id);
    let token = client.participant_token(&room, identity, dispatch)?;
    let info = JoinInfo { url: client.url().to_owned(), room, identity: identity.to_owned(), token: token.expose().to_owned() };
    println!("{}", serde_json::to_string_pretty(&info)?);
    Ok(())
}
