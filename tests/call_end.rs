//! How a call ends, through the real binary and the official SDK caller (see `support/call.rs`):
//! at the time limit, or when the caller says goodbye and the model calls `end_consultation`,
//! the goodbye is heard and the agent leaves right after it.

mod support;
#[path = "support/call.rs"]
mod call;

use std::time::Duration;

use call::*;
use support::*;

/// The agent left the room (the caller saw it go): wall-clock time.
async fn agent_left(call: &mut Call) -> f64 {
    let left = call.caller.event("participant_disconnected", Duration::from_secs(60)).await;
    left["t"].as_f64().expect("event time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_time_limit_the_agent_says_goodbye_and_leaves_once_it_is_heard() {
    let phrases = ["Здравствуйте, меня зовут Иван."];
    let answers = ["Очень приятно, Иван. Расскажите о задаче."];
    let limit = |t: String| {
        let t = t.replacen("max_duration_secs = 1800", "max_duration_secs = 16", 1);
        t.replacen("wrapup_before_secs = 120", "wrapup_before_secs = 6", 1)
    };
    let goodbye = "Спасибо за разговор, Иван! Всего доброго, до свидания.";
    // The caller stays on the line well past the limit.
    let mut call = start_call(10, limit, |o| o.fallback_answer = goodbye.into(), &phrases, &answers, &["--tail", "25"]).await;
    let left = agent_left(&mut call).await;
    let log = call.log();
    let limit_line = log.lines().find(|l| l.contains("time limit reached; saying goodbye")).unwrap_or_else(|| panic!("no time limit in the log:\n{log}"));
    let limit_at = log_time(limit_line).expect("timestamp");
    call.caller.wait_success(Duration::from_secs(90)).await;
    let env = read_envelope(&call.dir.path().join("heard.json"));
    let heard = loud_frames(&env, limit_at, left, 300.0) as f64 / 100.0;
    let last = last_loud(&env, limit_at, left + 1.0, 300.0).expect("the goodbye was heard");
    println!("goodbye heard {heard:.2} s; the agent left {:.0} ms after its last audio, {:.2} s after the limit", (left - last) * 1000.0, left - limit_at);
    assert!(heard >= 1.5, "the goodbye was not heard ({heard:.2} s of agent audio after the limit)");
    assert!(left - last < 0.6, "the agent stayed {:.2} s after the goodbye ended", left - last);
    let rows = call.dialogue();
    assert_eq!(rows.last().map(|r| (r.1.as_str(), r.2.as_str())), Some(("assistant", goodbye)), "the goodbye is the last message: {rows:?}");
    call.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_says_goodbye_hears_the_goodbye_and_the_agent_hangs_up() {
    let phrases = ["Здравствуйте, меня зовут Иван.", "Спасибо, это всё, до свидания."];
    let answers = ["Очень приятно, Иван. Чем могу помочь?", "Спасибо за звонок, Иван, всего доброго!"];
    let arguments = r#"{"reason":"клиент попрощался"}"#;
    let tool = |o: &mut consultant_fakes::realtime::FakeRealtimeOptions| {
        o.turns[1] = o.turns[1].clone().then_calls("end_consultation", arguments);
    };
    // The caller would stay on the line for 12 s more.
    let mut call = start_call(12, |t| t, tool, &phrases, &answers, &["--tail", "12"]).await;
    let left = agent_left(&mut call).await;
    call.caller.wait_success(Duration::from_secs(90)).await;
    let ends = call.caller.event_times("phrase_end");
    assert_eq!(ends.len(), 2);
    let env = read_envelope(&call.dir.path().join("heard.json"));
    let heard = loud_frames(&env, ends[1], left, 300.0) as f64 / 100.0;
    let last = last_loud(&env, ends[1], left + 1.0, 300.0).expect("the goodbye was heard");
    println!("goodbye heard {heard:.2} s; the agent left {:.0} ms after its last audio", (left - last) * 1000.0);
    assert!(heard >= 1.5, "the goodbye was not heard ({heard:.2} s)");
    assert!(left - last < 0.6, "the agent stayed {:.2} s after the goodbye ended", left - last);

    let rows = call.dialogue();
    let roles: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(roles, ["assistant", "user", "assistant", "user", "assistant", "tool_call", "tool_result"], "{rows:#?}");
    assert_eq!((rows[3].2.as_str(), rows[4].2.as_str()), (phrases[1], answers[1]));
    let call_entry: serde_json::Value = serde_json::from_str(&rows[5].2).unwrap();
    assert_eq!((call_entry["name"].as_str(), call_entry["arguments"].as_str()), (Some("end_consultation"), Some(arguments)));
    let result: serde_json::Value = serde_json::from_str(&rows[6].2).unwrap();
    assert_eq!(result["call_id"], call_entry["call_id"]);
    let status: String = call.db().query_row("SELECT status FROM sessions WHERE session_id = 'e2e-12'", [], |r| r.get(0)).unwrap();
    assert_eq!(status, "completed");
    assert!(call.log().contains("reason=the caller said goodbye (end_consultation)"), "the reason is logged");
    // The model got our output for its call.
    let record = &call.realtime.sessions()[0];
    assert!(record.items.iter().any(|i| i["item"]["type"] == "function_call_output"), "no function_call_output reached the model");
    assert!(record.errors_sent.is_empty(), "{:?}", record.errors_sent);
    // The caller saw no transcript of the tool entries.
    let transcripts: Vec<String> = call.caller.seen.iter().filter(|v| v["event"] == "transcript").map(|v| v["text"].as_str().unwrap_or_default().to_owned()).collect();
    assert!(!transcripts.iter().any(|t| t.contains("call_id")), "{transcripts:?}");
    call.stop().await;
}
