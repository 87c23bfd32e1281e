//! How a call ends, through the real binary and the official SDK caller (see `support/call.rs`):
//! at the time limit the goodbye is heard and the agent leaves right after it.

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
    assert!(left - last < 1.5, "the agent stayed {:.2} s after the goodbye ended", left - last);
    let rows = call.dialogue();
    assert_eq!(rows.last().map(|r| (r.1.as_str(), r.2.as_str())), Some(("assistant", goodbye)), "the goodbye is the last message: {rows:?}");
    call.stop().await;
}
