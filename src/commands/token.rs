//! `consultant token --session-id ID [--identity NAME]`: a caller's join token for the
//! consultation room, printed as JSON {url, room, identity, token}.

use consultant_actors::SessionId;

use crate::config::{Config, Service};
use crate::livekit::{generate_room_name, JoinInfo, LiveKitClient};
use crate::tls::ClientTls;

pub fn run(config: &Config, session_id: &SessionId, identity: &str, dispatch: bool) -> anyhow::Result<()> {
    config.require(&[Service::LiveKit])?;
    // No connection is made, but the client is the one the other commands use.
    let client = LiveKitClient::new(&config.livekit, &ClientTls::from_config(&config.tls)?)?;
    let room = generate_room_name(session_id);
    let token = client.participant_token(&room, identity, dispatch)?;
    let info = JoinInfo { url: client.url().to_owned(), room, identity: identity.to_owned(), token: token.expose().to_owned() };
    println!("{}", serde_json::to_string_pretty(&info)?);
    Ok(())
}
