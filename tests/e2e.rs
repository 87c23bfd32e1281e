//! End to end, the proof that the product works: the real `consultant dev` binary registers on
//! the loopback LiveKit server, is dispatched explicitly to a consultation room, and talks with
//! the official Python SDK caller (three espeak-ng Russian phrases) through the fake realtime
//! and fake DeepSeek servers. Checked: the caller hears the greeting and an answer to each
//! phrase, a barge-in cuts the agent within 200 ms, a realtime socket drop mid-call is survived,
//! SQLite holds the dialogue in order with a periodic and a final anketa, and the log holds the
//! Python module's markers in order.

mod support;
#[path = "support/call.rs"]
mod call;

use std::process::Command;
use std::time::Duration;

use call::*;
use consultant_fakes::realtime::Fault;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_consultation_through_the_real_binary_and_the_official_sdk() {
    let answers = [
        "Очень приятно, Иван. Расскажите о задаче.",
        // Long, so the caller's third phrase barges in while it plays.
        "Хорошо, сайт для компании. Обычно мы начинаем с короткого обсуждения целей, аудитории, \
         структуры страниц и желаемых сроков, а потом готовим смету и план работ по этапам.",
        "Спасибо, я всё записал. До свидания!",
    ];
    let phrases = ["Здравствуйте, меня зовут Иван.", "Мне нужен сайт для компании.", "Подождите, у меня вопрос о сроках."];
    // The second pause is shorter so the third phrase barges into the long second answer.
    let mut call = start_call(1, |t| t, |_| {}, &phrases, &answers, &["--pause-after", "1:2.5"]).await;
    let caller = &mut call.caller;
    caller.event("published", Duration::from_secs(40)).await;
    // The realtime socket drops in the middle of the call: after the first answer, before
    // the second phrase ends (the caller's audio of the gap is held and sent after the replay).
    caller.event("phrase_end", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    call.realtime.inject(Fault::DropNow);
    // The caller left: the consultation ends, is finalized, the job succeeds.
    let log_text = call.finished().await;
    let caller = &call.caller;

    // --- What the caller heard ---
    let env = read_envelope(&call.dir.path().join("heard.json"));
    let starts = caller.event_times("phrase_start");
    let ends = caller.event_times("phrase_end");
    let published = caller.event_time("published").unwrap();
    assert_eq!((starts.len(), ends.len()), (3, 3), "three phrases spoken");
    let level = 300.0;
    let secs = |frames: usize| frames as f64 / 100.0;
    let greeting = secs(loud_frames(&env, published, starts[0], level));
    let answer1 = secs(loud_frames(&env, ends[0], starts[1], level));
    let answer2 = secs(loud_frames(&env, ends[1], starts[2] + 0.5, level));
    let answer3 = secs(loud_frames(&env, ends[2], ends[2] + 6.0, level));
    println!("heard: greeting {greeting:.2} s, answers {answer1:.2} / {answer2:.2} (cut) / {answer3:.2} s");
    assert!(greeting >= 0.8, "the greeting was not heard ({greeting:.2} s of agent audio before the first phrase)");
    assert!(answer1 >= 1.0, "no answer to the first phrase ({answer1:.2} s)");
    assert!(answer2 >= 1.0, "no answer to the second phrase ({answer2:.2} s)");
    assert!(answer3 >= 1.0, "no answer to the third phrase ({answer3:.2} s)");

    // --- Barge-in: the agent's audio stops within 200 ms of the interrupt ---
    let cut_line = log_text.lines().find(|l| l.contains("barge-in: agent interrupted")).unwrap_or_else(|| panic!("no barge-in in the log:\n{log_text}"));
    let cut_at = log_time(cut_line).expect("timestamp on the barge-in line");
    assert!(cut_at > starts[2] - 0.5 && cut_at < ends[2], "the barge-in happened during the third phrase");
    let last = last_loud(&env, cut_at - 1.0, ends[2], level).expect("agent audio right before the cut");
    println!("barge-in: last agent audio {:.0} ms after the interrupt", (last - cut_at) * 1000.0);
    assert!(last - cut_at < 0.2, "agent audio went on {:.0} ms after the barge-in", (last - cut_at) * 1000.0);

    // --- The realtime drop was survived: a second session with the dialogue replayed ---
    let sessions = call.realtime.sessions();
    assert!(sessions.len() >= 2, "the realtime link was not re-established after the drop ({} sessions)", sessions.len());
    assert!(!sessions[1].items.is_empty(), "the dialogue was not replayed to the new session");

    // --- SQLite: the dialogue in order, periodic and final anketas ---
    let db = call.db();
    let rows = call.dialogue();
    for r in &rows {
        println!("dialogue {r:?}");
    }
    let texts: Vec<(&str, &str)> = rows.iter().map(|(_, role, text, _)| (role.as_str(), text.as_str())).collect();
    // The whole dialogue, exactly: nothing lost, nothing repeated by the replay after the drop,
    // the barged-in answer stored as the part that was heard.
    assert_eq!(rows.len(), 7, "greeting + three turns, each message once: {rows:?}");
    let (greeting_row, cut_row) = (&rows[0], &rows[4]);
    assert!(greeting_row.1 == "assistant" && !greeting_row.2.is_empty() && !greeting_row.3, "the greeting first: {rows:?}");
    assert_eq!(
        texts[1..4].to_vec(),
        vec![("user", phrases[0]), ("assistant", answers[0]), ("user", phrases[1])],
        "messages 2-4: {rows:?}"
    );
    assert!(cut_row.1 == "assistant" && cut_row.3, "message 5 is the barged-in answer: {rows:?}");
    assert!(!cut_row.2.is_empty() && answers[1].starts_with(cut_row.2.as_str()) && cut_row.2.len() < answers[1].len(), "stored as the part heard: {rows:?}");
    assert_eq!(texts[5..].to_vec(), vec![("user", phrases[2]), ("assistant", answers[2])], "messages 6-7: {rows:?}");
    assert!(!rows[1..4].iter().chain(&rows[5..]).any(|r| r.3), "only the barged-in answer is interrupted: {rows:?}");
    assert!(rows.windows(2).all(|w| w[1].0 == w[0].0 + 1), "seq has gaps: {rows:?}");
    let status: String = db.query_row("SELECT status FROM sessions WHERE session_id = 'e2e-1'", [], |r| r.get(0)).unwrap();
    assert_eq!(status, "completed");
    let periodic: u32 = db.query_row("SELECT COUNT(*) FROM anketas WHERE session_id = 'e2e-1' AND is_final = 0", [], |r| r.get(0)).unwrap();
    let final_anketa: String = db.query_row("SELECT anketa FROM anketas WHERE session_id = 'e2e-1' AND is_final = 1", [], |r| r.get(0)).unwrap();
    assert!(periodic >= 1, "no periodic anketa");
    assert!(final_anketa.contains("Иван"), "final anketa {final_anketa}");

    // --- Transcripts reached the caller as LiveKit agents send them (lk.transcription) ---
    let transcripts: Vec<(String, String)> = caller
        .seen
        .iter()
        .filter(|v| v["event"] == "transcript")
        .map(|v| (v["text"].as_str().unwrap_or_default().to_owned(), v["track"].as_str().unwrap_or_default().to_owned()))
        .collect();
    println!("transcripts received by the caller: {transcripts:?}");
    for (role, text) in &texts {
        assert!(transcripts.iter().any(|(t, _)| t == text), "the caller got no transcript of the {role} message {text:?}");
    }
    let subscribed = caller.seen.iter().find(|v| v["event"] == "subscribed").expect("the caller subscribed to the agent");
    let agent_track = subscribed["track_sid"].as_str().unwrap().to_owned();
    assert!(transcripts.iter().any(|(t, track)| t == answers[0] && *track == agent_track), "agent transcripts name the agent's track");

    // --- The Python module's markers, in order ---
    let markers = [
        "=== AGENT ENTRYPOINT CALLED ===",
        "AGENT STEP 1/5",
        "AGENT STEP 2/5",
        "AGENT STEP 3/5",
        "AGENT STEP 4/5",
        "AGENT STEP 5/5",
        "=== AGENT FULLY READY ===",
        "DIALOGUE_MESSAGE",
        "periodic_anketa_extracted",
        "=== FINALIZE START ===",
    ];
    let positions: Vec<usize> = markers.iter().map(|m| log_text.find(m).unwrap_or_else(|| panic!("{m} missing from logs/agent.log"))).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "markers out of order: {positions:?}");
    assert!(!log_text.contains("FAILED"), "a step failed:\n{log_text}");

    call.stop().await;
}

/// The make-before-break rollover, due at 7 s instead of 20 min so that a short call spans
/// several provider sessions: every phrase is stored and answered exactly once, none lost at a
/// switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_across_several_recycled_realtime_sessions_loses_nothing() {
    let phrases = ["Здравствуйте, меня зовут Иван.", "Мне нужен сайт для компании.", "Когда вы сможете начать?"];
    let answers = ["Очень приятно, Иван.", "Понятно, сайт для компании.", "Мы можем начать на следующей неделе."];
    let recycle = |t: String| {
        assert!(t.contains("recycle_after_secs = 1200"), "config.toml no longer has recycle_after_secs");
        t.replacen("recycle_after_secs = 1200", "recycle_after_secs = 7", 1)
    };
    let mut call = start_call(2, recycle, |_| {}, &phrases, &answers, &[]).await;
    call.caller.event("published", Duration::from_secs(40)).await;
    let log_text = call.finished().await;

    let sessions = call.realtime.sessions();
    println!("realtime sessions: {}", sessions.len());
    assert!(sessions.len() >= 3, "the call did not span several recycled sessions ({} sessions)", sessions.len());
    assert!(log_text.contains("realtime session rolled over (make-before-break)"), "no rollover in the log");

    let rows = call.dialogue();
    for r in &rows {
        println!("dialogue {r:?}");
    }
    let texts: Vec<(&str, &str)> = rows.iter().map(|(_, role, text, _)| (role.as_str(), text.as_str())).collect();
    assert_eq!(rows.len(), 7, "greeting + three turns, each once: {rows:?}");
    assert!(rows[0].1 == "assistant" && !rows[0].2.is_empty(), "the greeting first: {rows:?}");
    let expected: Vec<(&str, &str)> = phrases.iter().zip(answers).flat_map(|(p, a)| [("user", *p), ("assistant", a)]).collect();
    assert_eq!(texts[1..].to_vec(), expected, "every phrase and its answer, in order: {rows:?}");
    assert!(rows.iter().all(|r| !r.3), "nothing was cut: {rows:?}");

    // The caller heard an answer after each phrase.
    let env = read_envelope(&call.dir.path().join("heard.json"));
    let ends = call.caller.event_times("phrase_end");
    assert_eq!(ends.len(), 3);
    for (i, end) in ends.iter().enumerate() {
        let heard = loud_frames(&env, *end, end + 4.0, 300.0) as f64 / 100.0;
        assert!(heard >= 0.8, "no answer heard after phrase {} ({heard:.2} s)", i + 1);
    }
    call.stop().await;
}

/// `consultant start` killed with SIGKILL mid-dialogue, then started again: the session is
/// finalized as interrupted with exactly the messages the dead process had logged as
/// `DIALOGUE_MESSAGE`, its final anketa generated once, nothing reported twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_call_is_recovered_by_the_next_start() {
    let phrases = ["Здравствуйте, меня зовут Иван.", "Мне нужен сайт для компании.", "Когда вы сможете начать?"];
    let answers = ["Очень приятно, Иван.", "Понятно, сайт для компании.", "Мы можем начать на следующей неделе."];
    let mut call = start_call(3, |t| t, |_| {}, &phrases, &answers, &[]).await;
    let logged = |log: &str| -> Vec<u32> {
        log.lines()
            .filter(|l| l.contains("DIALOGUE_MESSAGE") && l.contains("session_id=e2e-3"))
            .filter_map(|l| l.split("seq=").nth(1)?.split_whitespace().next()?.parse().ok())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while logged(&call.log()).len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "the call did not get going:\n{}", call.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = call.worker.id().expect("running").to_string();
    assert!(Command::new("kill").args(["-s", "KILL", &pid]).status().unwrap().success());
    call.worker.wait().await.unwrap();
    call.caller.terminate(Duration::from_secs(10)).await;
    assert!(call.server.close_room("consultation-e2e-3"));
    let before = logged(&call.log());
    println!("logged before the kill: {before:?}");
    assert_eq!(before, (1..=before.len() as u32).collect::<Vec<_>>(), "logged in order, once each");

    call.worker = spawn_worker(call.dir.path(), &call.server, &call.realtime, &call.deepseek, "start", 2);
    let db = call.db();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status: Option<String> = db.query_row("SELECT status FROM sessions WHERE session_id = 'e2e-3'", [], |r| r.get(0)).ok();
        if status.as_deref() == Some("interrupted") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not recovered (status {status:?}):\n{}", call.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored: Vec<u32> = call.dialogue().iter().map(|r| r.0).collect();
    assert_eq!(stored, before, "every logged message is stored, and only those");
    let finals: u32 = db.query_row("SELECT COUNT(*) FROM anketas WHERE session_id = 'e2e-3' AND is_final = 1", [], |r| r.get(0)).unwrap();
    assert_eq!(finals, 1, "one final anketa");
    let log = call.log();
    assert_eq!(log.matches("recovering a session left open by a previous process").count(), 1);
    assert_eq!(logged(&log), before, "the restarted worker logged no message again");
    call.stop().await;
}
