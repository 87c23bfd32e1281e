//! `consultant room create --session-id ID`: creates the consultation room with an explicit
//! dispatch of our agent (RoomService.CreateRoom + RoomAgentDispatch, as the Python module's server
//! does) and prints the caller's join JSON, like `consultant token`.

use consultant_actors::SessionId;

use crate::cli::RoomCommand;
use crate::config::{Config, Service};
use crate::livekit::LiveKitClient;
use crate::tls::ClientTls;

pub async fn run(config: &Config, action: RoomCommand) -> anyhow::Result<()> {
    config.require(&[Service::LiveKit])?;
    let client = LiveKitClient::new(&config.livekit, &ClientTls::from_config(&config.tls)?)?;
    match action {
        RoomCommand::Create { session_id, identity } => create(&client, &session_id, &identity).await,
    }
}

async fn create(client: &LiveKitClient, session_id: &SessionId, identity: &str) -> anyhow::Result<()> {
    // Check the identity before touching the server.
    let info = client.join_info(session_id, identity)?;
    let room = client.create_room(session_id).await?;
    eprintln!("room {} created (sid {}) with a dispatch for agent `{}`", room.name, room.sid, client.agent_name());
    println!("{}", serde_json::to_string_pretty(&info)?);
    Ok(())
}
