//! With `forward_audio_at_once` the SFU forwards audio as it arrives, as livekit-server does:
//! a lost packet does not hold back the frames after it.

use super::pc_rtc::new_rtc;
use crate::rtc_pair::frames_after_a_loss;

#[test]
fn audio_after_a_lost_packet_is_forwarded_at_once() {
    let emitted = frames_after_a_loss(new_rtc("127.0.0.1:5002".parse().unwrap(), false, true), 10, 2);
    // Every frame but the lost one comes out as it goes in: nothing waits for frame 2.
    let expected: Vec<(u8, Vec<u8>)> = (0u8..10).map(|f| (f, if f == 2 { vec![] } else { vec![f] })).collect();
    assert_eq!(emitted, expected);
}
