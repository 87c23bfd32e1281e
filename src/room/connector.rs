//! Entrypoint step 3 over real room media: [`LiveKitRooms`] implements the entrypoint's
//! [`RoomConnector`] with [`super::join`].

use async_trait::async_trait;
use consultant_actors::SessionId;

use super::{join, RoomEnd, RoomOptions};
use crate::entrypoint::{JoinedRoom, RoomConnector};
use crate::secret::Secret;

/// Joins each job's room with the assignment token (production connector).
#[derive(Clone, Debug, Default)]
pub struct LiveKitRooms {
    pub options: RoomOptions,
}

#[async_trait]
impl RoomConnector for LiveKitRooms {
    async fn join(&self, url: &str, token: &Secret, session_id: &SessionId) -> Result<JoinedRoom, String> {
        let joined = join(url, token, self.options.clone()).await?;
        let room = joined.room.clone();
        let sid = session_id.clone();
        // Say why the room ended: the entrypoint only sees the caller stream close.
        tokio::spawn(async move {
            match room.ended().await {
                RoomEnd::MediaFailed(cause) => tracing::error!(session_id = %sid, %cause, "room media failed; ending the consultation"),
                RoomEnd::CallerLeft => tracing::info!(session_id = %sid, "the caller left the room"),
                RoomEnd::RoomClosed(why) => tracing::info!(session_id = %sid, %why, "the room closed"),
                RoomEnd::Left => {}
            }
        });
        let room = joined.room;
        let status = room.clone();
        Ok(JoinedRoom {
            audio_out: joined.audio_out,
            caller_audio: joined.caller_audio,
            leave: Box::new(move || room.leave()),
            media_failure: Box::new(move || match status.status().ended {
                Some(RoomEnd::MediaFailed(cause)) => Some(cause),
                _ => None,
            }),
        })
    }
}
