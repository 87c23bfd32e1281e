//! What a sweeping worker asks LiveKit about a dead worker's room (`RoomService.ListParticipants`)
//! and how it hands the call to a live worker (`AgentDispatchService.CreateDispatch`).

use async_trait::async_trait;
use consultant_actors::ports::RoomDirectory;
use livekit_api::access_token::VideoGrants;
use livekit_protocol as proto;

use super::{LiveKitClient, LiveKitError};

impl LiveKitClient {
    /// The participants of `room`; a room that does not exist (any more) has none.
    pub async fn list_participants(&self, room: &str) -> Result<Vec<proto::ParticipantInfo>, LiveKitError> {
        let grants = VideoGrants { room_admin: true, room: room.to_owned(), ..Default::default() };
        let request = proto::ListParticipantsRequest { room: room.to_owned() };
        match self.twirp::<_, proto::ListParticipantsResponse>("RoomService", "ListParticipants", &request, "ListParticipantsResponse", grants).await {
            Ok(answer) => Ok(answer.participants),
            Err(LiveKitError::Refused { status: 404, .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// A new dispatch of our agent to `room`.
    pub async fn create_dispatch(&self, room: &str) -> Result<proto::AgentDispatch, LiveKitError> {
        let grants = VideoGrants { room_admin: true, room: room.to_owned(), ..Default::default() };
        let request = proto::CreateAgentDispatchRequest { agent_name: self.agent_name().to_owned(), room: room.to_owned(), ..Default::default() };
        self.twirp("AgentDispatchService", "CreateDispatch", &request, "AgentDispatch", grants).await
    }
}

#[async_trait]
impl RoomDirectory for LiveKitClient {
    async fn caller_present(&self, room: &str) -> Result<bool, String> {
        let participants = self.list_participants(room).await.map_err(|e| e.to_string())?;
        let connected = |p: &proto::ParticipantInfo| p.state != proto::participant_info::State::Disconnected as i32;
        Ok(participants.iter().any(|p| connected(p) && crate::room::is_caller_kind(p.kind)))
    }

    async fn dispatch_agent(&self, room: &str) -> Result<(), String> {
        self.create_dispatch(room).await.map(drop).map_err(|e| e.to_string())
    }
}
