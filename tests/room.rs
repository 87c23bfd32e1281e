//! The Room client against the loopback LiveKit server, with the official Python SDK
//! (tests/peers/caller.py) as the caller: our agent hears the caller, speaks to them, and a
//! barge-in cut is audible within 200 ms.

mod support;

use std::sync::Arc;
use std::time::Duration;

use consultant::room::{self, RoomEnd, RoomOptions};
use consultant::secret::Secret;
use consultant_actors::ports::AgentAudioOutput;
use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_loopback::{LoopbackConfig, LoopbackServer};
use support::*;

fn agent_token(server: &LoopbackServer, room: &str, identity: &str) -> Secret {
    let jwt = AccessToken::with_api_key(server.api_key(), server.api_secret())
        .with_identity(identity)
        .with_kind("agent")
        .with_grants(VideoGrants {
            room_join: true,
            room: room.into(),
            agent: true,
            can_publish: Some(true),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            ..Default::default()
        })
        .with_ttl(Duration::from_secs(600))
        .to_jwt()
        .expect("token");
    Secret::new(jwt)
}

fn tone(seconds: f64, freq: f64, amp: f64) -> Arc<[i16]> {
    let n = (seconds * 24_000.0) as usize;
    (0..n).map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / 24_000.0).sin()) as i16).collect::<Vec<_>>().into()
}

fn init_logs() {
    let _ = tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "consultant=info".into())).with_test_writer().try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_hears_the_caller_speaks_back_and_a_cut_is_heard_within_200ms() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let room_name = "consultation-room-test";
    server.create_room(room_name, &[]);

    // Our agent joins first, like a dispatched worker.
    let options = RoomOptions { rejoin_grace: Duration::from_secs(1), ..Default::default() };
    let joined = room::join(&server.url(), &agent_token(&server, room_name, "agent-AJ_test"), options).await.expect("agent joins");
    let room = joined.room.clone();
    assert!(room.status().publishing);
    let audio_out = joined.audio_out.clone();

    // Everything the consultation would receive from the caller, stamped with wall time.
    let mut caller_audio = joined.caller_audio;
    let heard = tokio::spawn(async move {
        let mut frames: Vec<(f64, Arc<[i16]>)> = Vec::new();
        while let Some(pcm) = caller_audio.recv().await {
            frames.push((wall_now(), pcm));
        }
        frames
    });

    let speech = dir.path().join("speech.wav");
    let speech_s = espeak("Здравствуйте, я хочу заказать разработку сайта для нашей компании.", &speech);
    let record = dir.path().join("heard.wav");
    let envelope = dir.path().join("heard.json");
    let args: Vec<String> = [
        "--url", &server.url(), "--token", &server.participant_token(room_name, "caller"),
        "--wav", speech.to_str().unwrap(), "--lead-in", "1", "--pause", "0", "--tail", "5",
        "--record", record.to_str().unwrap(), "--envelope", envelope.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut caller = PythonPeer::spawn("caller", "caller.py", &args, &[], dir.path());
    caller.event("subscribed", Duration::from_secs(30)).await;
    let start = caller.event("phrase_start", Duration::from_secs(30)).await["t"].as_f64().unwrap();
    // Signalling drops mid-phrase: the room resumes (reconnect=1&sid) without leaving and
    // the audio goes on (the envelope check below covers the whole phrase).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(server.drop_participant_signal(room_name, "agent-AJ_test"), "agent signalling was connected");
    caller.event("phrase_end", Duration::from_secs(30)).await;
    assert_eq!(room.status().resumes, 1, "one resume after the drop");
    assert_eq!(room.status().ended, None, "a signalling drop does not end the room");

    // Speak: a 2 s tone, cut after 1 s as a barge-in would.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let play_at = wall_now();
    audio_out.play("item_answer", tone(2.0, 440.0, 8000.0));
    assert!(audio_out.is_playing());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let cut_at = wall_now();
    let played = audio_out.interrupt().expect("was playing");
    assert_eq!(played.item_id, "item_answer");
    assert!((940..=1060).contains(&played.played_ms), "played_ms {} after 1 s of playback", played.played_ms);
    assert!(!audio_out.is_playing());

    caller.wait_success(Duration::from_secs(40)).await;

    // Hear: the caller's speech reached the consultation, shaped like the source.
    let ended = tokio::time::timeout(Duration::from_secs(10), room.ended()).await.expect("room ends after the caller left");
    assert_eq!(ended, Ok(RoomEnd::CallerLeft));
    let frames = tokio::time::timeout(Duration::from_secs(5), heard).await.expect("caller stream closed").unwrap();
    let mut pcm: Vec<i16> = Vec::new();
    let mut first_t = None;
    for (t, f) in &frames {
        if *t >= start - 0.2 && first_t.is_none() {
            first_t = Some(*t);
        }
        if first_t.is_some() {
            pcm.extend_from_slice(f);
        }
    }
    assert!(pcm.len() as f64 >= speech_s * 24_000.0, "only {} samples heard for {speech_s:.2} s of speech", pcm.len());
    let heard_env = rms_windows(&pcm, 480);
    let source_env = wav_envelope(&speech, 0.02);
    let (corr, lag) = best_alignment(&source_env, &heard_env, 50);
    println!("caller speech: {speech_s:.2} s, envelope correlation {corr:.3} at lag {} ms", lag * 20);
    assert!(corr > 0.7, "the decoded caller audio does not follow the spoken phrase (correlation {corr:.3})");
    let stats = room.stats();
    println!("room stats: {stats:?}");

    // Speak + cut: in the caller's recording the tone starts after play() and stops within
    // 200 ms of interrupt().
    let env = read_envelope(&envelope);
    let level = 300.0;
    let began = first_loud(&env, play_at, cut_at, level).expect("the caller heard the agent's tone");
    let ended_t = last_loud(&env, play_at, play_at + 5.0, level).expect("tone frames");
    println!("tone heard {:.0} ms after play(), last loud frame {:.0} ms after interrupt()", (began - play_at) * 1000.0, (ended_t - cut_at) * 1000.0);
    assert!(began - play_at < 0.3, "the first agent audio took {:.0} ms to be heard", (began - play_at) * 1000.0);
    assert!(loud_frames(&env, began, cut_at - 0.1, level) as f64 >= 0.9 * ((cut_at - 0.1 - began) * 100.0), "the tone had gaps before the cut");
    assert!(ended_t - cut_at < 0.2, "agent audio went on {:.0} ms after interrupt()", (ended_t - cut_at) * 1000.0);
    assert_eq!(loud_frames(&env, cut_at + 0.2, play_at + 5.0, level), 0, "agent audio after the cut");
    room.leave();
    server.shutdown().await;
}

/// A caller who mutes, then drops off (no leave: a lost connection) and comes back within the
/// grace period keeps the consultation going; the consultation's audio stream stays continuous
/// through the mute; the second departure (a hang-up) ends the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_mutes_leaves_and_rejoins_is_still_heard() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let room_name = "consultation-rejoin-test";
    server.create_room(room_name, &[]);
    let options = RoomOptions { rejoin_grace: Duration::from_secs(6), ..Default::default() };
    let joined = room::join(&server.url(), &agent_token(&server, room_name, "agent-AJ_rejoin"), options).await.expect("agent joins");
    let room = joined.room.clone();
    let mut caller_audio = joined.caller_audio;
    let heard = tokio::spawn(async move {
        let mut frames: Vec<(f64, Arc<[i16]>)> = Vec::new();
        while let Some(pcm) = caller_audio.recv().await {
            frames.push((wall_now(), pcm));
        }
        frames
    });
    let speech = dir.path().join("speech.wav");
    espeak("Алло, вы меня слышите?", &speech);
    let caller_args = |n: u32, mute: &str| -> Vec<String> {
        // The first caller's connection is lost; the second hangs up.
        let departure: &[&str] = if n == 1 { &["--vanish"] } else { &[] };
        [
            "--url", &server.url(), "--token", &server.participant_token(room_name, "caller"),
            "--wav", speech.to_str().unwrap(), "--lead-in", "0.5", "--pause", "0.5", "--tail", "1", "--mute-for", mute,
            "--record", dir.path().join(format!("heard{n}.wav")).to_str().unwrap(),
            "--envelope", dir.path().join(format!("heard{n}.json")).to_str().unwrap(),
        ]
        .iter()
        .chain(departure)
        .map(|s| s.to_string())
        .collect()
    };

    let mut first = PythonPeer::spawn("caller1", "caller.py", &caller_args(1, "2"), &[], dir.path());
    first.event("saved", Duration::from_secs(60)).await;
    first.wait_success(Duration::from_secs(10)).await;
    let (published, muted, unmuted, left) = (
        first.event_time("published").unwrap(),
        first.event_time("muted").unwrap(),
        first.event_time("unmuted").unwrap(),
        first.event_time("leaving").unwrap(),
    );
    assert_eq!(room.status().ended, None, "the caller may still come back");

    let mut second = PythonPeer::spawn("caller2", "caller.py", &caller_args(2, "0"), &[], dir.path());
    let back = second.event("phrase_start", Duration::from_secs(60)).await["t"].as_f64().unwrap();
    second.wait_success(Duration::from_secs(60)).await;
    assert_eq!(tokio::time::timeout(Duration::from_secs(15), room.ended()).await.expect("ends after the second departure"), Ok(RoomEnd::CallerLeft));

    let frames = heard.await.unwrap();
    let samples_between = |from: f64, to: f64| frames.iter().filter(|(t, _)| *t >= from && *t < to).map(|(_, p)| p.len()).sum::<usize>() as f64 / 24_000.0;
    let loud_between = |from: f64, to: f64| {
        frames.iter().filter(|(t, p)| *t >= from && *t < to && rms_windows(p, p.len().max(1))[0] > 500.0).count()
    };
    // Continuous audio for the consultation while the first caller was there, mute included.
    let span = left - published - 0.5;
    let got = samples_between(published + 0.5, left);
    println!("first caller: {got:.2} s of audio over {span:.2} s; during mute {:.2} s over {:.2} s", samples_between(muted + 0.1, unmuted), unmuted - muted - 0.1);
    assert!(got >= 0.9 * span, "gaps in the caller stream: {got:.2} s over {span:.2} s");
    assert!(samples_between(muted + 0.1, unmuted) >= 0.9 * (unmuted - muted - 0.1), "the stream stopped during the mute");
    assert_eq!(loud_between(muted + 0.2, unmuted), 0, "speech during the mute");
    // The rejoined caller is heard.
    assert!(loud_between(back, back + 2.0) >= 20, "the rejoined caller was not heard");
    println!("room stats: {:?}", room.stats());
    room.leave();
    server.shutdown().await;
}

/// A TCP relay to the loopback server that the test can cut for good.
struct Relay {
    addr: std::net::SocketAddr,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                t.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Relay { addr, tasks }
    }

    /// Drops every connection and stops listening: the server is unreachable from now on.
    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// A consultation whose Room is its child, with in-memory realtime, store and extractor.
struct Call {
    handler: consultant_actors::VoiceHandler,
    telemetry: consultant_actors::telemetry::Telemetry,
    realtime: Arc<consultant_fakes::memory::ScriptedRealtime>,
}

async fn call() -> Call {
    use consultant_actors::consultation::Ports;
    use consultant_actors::settings::ConsultationSettings;
    use consultant_fakes::memory::{CountingExtractor, MemoryStore, ScriptedRealtime};
    let realtime = ScriptedRealtime::new();
    let ports = Ports { connector: realtime.clone(), store: Arc::new(MemoryStore::default()), extractor: CountingExtractor::new() };
    let telemetry = consultant_actors::telemetry::Telemetry::new();
    let settings = Arc::new(ConsultationSettings::for_tests(Vec::new()));
    let handler = consultant_actors::VoiceHandler::start(settings, ports, telemetry.clone()).await.unwrap();
    Call { handler, telemetry, realtime }
}

/// Signalling lost for good (every resume refused, then every rejoin refused): the Room fails,
/// its Consultation restarts it inside the restart window (the console's tree counts the
/// restarts under the consultation), then fails the consultation with the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_cannot_be_repaired_is_restarted_by_its_consultation_then_fails_it() {
    use consultant_actors::SessionStatus;
    init_logs();
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let room_name = "consultation-lost";
    server.create_room(room_name, &[]);
    let relay = Relay::start(server.addr()).await;
    let c = call().await;
    let mut events = c.telemetry.subscribe();
    let media = room::LiveKitRooms::default().room(&format!("http://{}", relay.addr), agent_token(&server, room_name, "agent-AJ_lost"));
    let id = consultant_actors::SessionId::parse("lost").unwrap();
    let handle = c.handler.create_room_session(id.clone(), room_name.into(), Arc::new(media)).await.unwrap();
    handle.wait_joined().await.expect("joins through the relay");
    handle.wait_ready().await.expect("realtime session up once the agent is in the room");
    assert_eq!(c.realtime.connections(), 1);
    let room_path = "worker/consultation/lost/room";
    let tree = c.telemetry.snapshot().actors;
    let node = tree.iter().find(|a| a.path == room_path).expect("the Room is in the tree under its consultation");
    assert_eq!((node.kind.as_ref(), node.total_restarts), ("room", 0));

    relay.cut();
    let mut restarts = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            tokio::select! {
                outcome = handle.wait_finished() => break outcome.expect("an outcome"),
                Ok(e) = events.recv() => if e.path == room_path && (e.kind == "restart" || e.kind == "failure") {
                    let seen = c.telemetry.snapshot().actors.into_iter().find(|a| a.path == room_path).map(|a| a.total_restarts);
                    restarts.push((e.kind, e.message, seen));
                },
            }
        }
    })
    .await
    .expect("the consultation ended after the room could not be repaired");
    // The last supervision event may still be queued when the outcome is already there.
    while let Ok(e) = events.try_recv() {
        if e.path == room_path && (e.kind == "restart" || e.kind == "failure") {
            restarts.push((e.kind, e.message, None));
        }
    }
    for r in &restarts {
        println!("room supervision: {r:?}");
    }
    // First the resumes run out, then every rejoin is refused: five restarts, then the end.
    assert!(restarts[0].1.contains("resume failed after 5 attempts"), "{restarts:?}");
    let restarted: Vec<_> = restarts.iter().filter(|r| r.0 == "restart").collect();
    assert_eq!(restarted.len(), 5, "{restarts:?}");
    assert_eq!(restarted.iter().map(|r| r.2).collect::<Vec<_>>(), (1..=5).map(Some).collect::<Vec<_>>(), "restart counts in the tree");
    assert_eq!(restarts.last().unwrap().0, "failure");
    assert_eq!(outcome.status, SessionStatus::Failed);
    let failure = outcome.failure.unwrap();
    assert!(failure.starts_with("room failed 6 times within 60s; last: could not join the room"), "{failure}");
    assert_eq!(c.realtime.connections(), 1, "the realtime session was never touched by the room's restarts");
    server.shutdown().await;
}

/// The caller hangs up (the official SDK's disconnect sends a leave): the consultation is
/// finalized within a second, without waiting for a rejoin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_hangs_up_ends_the_consultation_within_a_second() {
    use consultant_actors::SessionStatus;
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let server = LoopbackServer::start(LoopbackConfig::default()).await.unwrap();
    let room_name = "consultation-hangup";
    server.create_room(room_name, &[]);
    let c = call().await;
    // A long grace: only a hang-up can end the call quickly.
    let rooms = room::LiveKitRooms { options: RoomOptions { rejoin_grace: Duration::from_secs(30), ..Default::default() } };
    let media = rooms.room(&server.url(), agent_token(&server, room_name, "agent-AJ_hangup"));
    let id = consultant_actors::SessionId::parse("hangup").unwrap();
    let handle = c.handler.create_room_session(id, room_name.into(), Arc::new(media)).await.unwrap();
    handle.wait_ready().await.expect("ready");
    let speech = dir.path().join("speech.wav");
    espeak("До свидания", &speech);
    let args: Vec<String> = [
        "--url", &server.url(), "--token", &server.participant_token(room_name, "caller"),
        "--wav", speech.to_str().unwrap(), "--lead-in", "0.3", "--pause", "0.3", "--tail", "0.5",
        "--record", dir.path().join("heard.wav").to_str().unwrap(),
        "--envelope", dir.path().join("heard.json").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut caller = PythonPeer::spawn("caller", "caller.py", &args, &[], dir.path());
    let leaving = caller.event("leaving", Duration::from_secs(60)).await["t"].as_f64().unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), handle.wait_finished()).await.expect("finalized").expect("an outcome");
    let after = outcome.ended_at.timestamp_micros() as f64 / 1e6 - leaving;
    println!("finalized {:.0} ms after the caller hung up", after * 1000.0);
    assert_eq!((outcome.status, outcome.failure.as_deref()), (SessionStatus::Completed, None));
    assert!(after < 1.0, "finalized {after:.2} s after the hang-up");
    caller.wait_success(Duration::from_secs(20)).await;
    server.shutdown().await;
}
