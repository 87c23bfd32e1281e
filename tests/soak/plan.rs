//! One consultation of the soak, drawn from a seeded PRNG: the realtime flavour, the caller's
//! turns (what they say, when their words arrive, whether they talk over the agent), the
//! agent's answers, and the faults at each turn. The same seed draws the same plan; the
//! moments faults meet the call still depend on the machine's timing.

use consultant::realtime::RealtimeFlavour;
use consultant_fakes::deepseek::Behaviour;
use consultant_fakes::realtime::{Fault, ScriptTurn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// What goes wrong at a turn.
#[derive(Clone, Debug)]
pub enum Injection {
    /// Before the turn: the socket drops after this many audio deltas of its answer.
    MidAnswer(u32),
    /// The turn's words arrive after its answer started, and the socket drops right after them.
    MidTranscript,
    /// This fault of the service, this long after the caller starts speaking.
    Timed { fault: Fault, after_ms: u64 },
    /// The socket drops, and so does the first reconnect while it replays the dialogue (or,
    /// `handshake_only`, right after its handshake).
    DuringReplay { handshake_only: bool },
    /// The socket drops and the reconnect's handshake is refused with this status.
    HandshakeRefused(u16),
    /// A drop while a standby session is being opened (the call recycles its sessions).
    DuringRollover,
    /// The answer fails before any audio (a provider rate limit).
    FailNextResponse,
    /// The consultation's Persistence child is killed this long after the turn starts.
    KillPersistence { after_ms: u64 },
    /// The store refuses this call's writes for a while.
    StoreOutage { after_ms: u64, for_ms: u64 },
}

impl Injection {
    /// Whether it ends the realtime session (the restart window allows only so many).
    fn ends_session(&self) -> bool {
        match self {
            Injection::Timed { fault, .. } => matches!(fault, Fault::DropNow | Fault::SessionLimitNow | Fault::Close(_) | Fault::ServerError { then_close: true }),
            Injection::FailNextResponse | Injection::KillPersistence { .. } | Injection::StoreOutage { .. } => false,
            _ => true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TurnPlan {
    pub script: ScriptTurn,
    /// How long the caller's tone lasts.
    pub speech_ms: u32,
    /// The caller talks over the previous answer this long after it starts playing.
    pub barge_in_ms: Option<u64>,
    /// After the answer, the caller pauses this long (a quiet moment to roll the realtime
    /// session over in).
    pub pause_ms: Option<u64>,
    pub injection: Option<Injection>,
}

#[derive(Clone, Debug)]
pub struct CallPlan {
    pub index: usize,
    pub flavour: RealtimeFlavour,
    /// The realtime session is recycled (make-before-break) every couple of seconds.
    pub rollover: bool,
    pub greeting: String,
    /// Injected before the call starts: it meets the greeting.
    pub greeting_fault: Option<Fault>,
    pub turns: Vec<TurnPlan>,
    /// Spare script turns for caller audio the service splits into more turns.
    pub spare: Vec<ScriptTurn>,
    /// What DeepSeek does with its next requests.
    pub deepseek: Vec<Behaviour>,
    /// The store refuses this call's writes for this long from the moment it ends.
    pub end_outage_ms: Option<u64>,
}

const NAMES: &[&str] = &["Иван", "Ольга", "Пётр", "Анна", "Сергей", "Мария", "Дмитрий", "Елена"];
const TOPICS: &[&str] = &["вклад", "ипотека", "кредитная карта", "страховка", "инвестиции", "перевод"];
const WORDS: &[&str] = &[
    "конечно", "условия", "процентная", "ставка", "зависит", "от", "срока", "и", "суммы", "мы", "можем", "предложить",
    "несколько", "вариантов", "для", "вас", "подробнее", "расскажу", "сейчас", "удобно", "выгодно", "надёжно",
];

pub fn draw(seed: u64, index: usize) -> CallPlan {
    let mut rng = StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let flavour = [RealtimeFlavour::AzurePreview, RealtimeFlavour::AzureGa, RealtimeFlavour::OpenAi, RealtimeFlavour::OpenAiBeta][rng.random_range(0..4)];
    let rollover = rng.random_bool(0.3);
    let mut endings = 0;
    let greeting_fault = match rng.random_range(0..6) {
        0 => Some(Fault::DropMidResponse { after_deltas: rng.random_range(1..4) }),
        1 => Some(Fault::FailNextResponse { code: "inference_rate_limit_exceeded".into() }),
        _ => None,
    };
    if matches!(greeting_fault, Some(Fault::DropMidResponse { .. })) {
        endings += 1;
    }
    let name = format!("{} {index}", NAMES[rng.random_range(0..NAMES.len())]);
    let mut turns = Vec::new();
    for t in 0..rng.random_range(4..=6) {
        let user = if t == 0 {
            format!("Меня зовут {name}")
        } else {
            format!("Меня интересует {} вариант {index}-{t}", TOPICS[rng.random_range(0..TOPICS.len())])
        };
        let words: Vec<&str> = (0..rng.random_range(6..=12)).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
        let agent = format!("Ответ {index}-{t}: {}.", words.join(" "));
        let mut script = ScriptTurn::new(user, agent);
        script = match rng.random_range(0..11) {
            0..=4 => script,
            5..=7 => script.late(),
            8..=9 => script.early(),
            _ => script.failed(),
        };
        let barge_in_ms = (t > 0 && rng.random_bool(0.2)).then(|| rng.random_range(40..200));
        let mut injection = rng.random_bool(0.8).then(|| injection(&mut rng, rollover));
        // The restart window (5 in 60 s) must hold: at most three session ends per call.
        if injection.as_ref().is_some_and(Injection::ends_session) {
            if endings >= 3 {
                injection = Some(Injection::StoreOutage { after_ms: rng.random_range(0..800), for_ms: rng.random_range(200..1200) });
            } else {
                endings += 1;
            }
        }
        if matches!(injection, Some(Injection::MidTranscript)) {
            script = script.late();
        }
        let pause_ms = (rollover && rng.random_bool(0.5)).then(|| rng.random_range(1500..3000));
        turns.push(TurnPlan { script, speech_ms: rng.random_range(300..600), barge_in_ms, pause_ms, injection });
    }
    let spare = (0..3).map(|k| ScriptTurn::new(format!("Ещё вопрос {index}-{k}"), format!("Дополнительный ответ {index}-{k}."))).collect();
    let deepseek = (0..rng.random_range(0..=3)).map(|_| deepseek_fault(&mut rng)).collect();
    let greeting = format!("Здравствуйте! Я консультант номер {index}. Как вас зовут?");
    let end_outage_ms = rng.random_bool(0.2).then(|| rng.random_range(200..1500));
    CallPlan { index, flavour, rollover, greeting, greeting_fault, turns, spare, deepseek, end_outage_ms }
}

fn injection(rng: &mut StdRng, rollover: bool) -> Injection {
    let after_ms = rng.random_range(0..1200);
    match rng.random_range(0..20) {
        0..=2 => Injection::MidAnswer(rng.random_range(1..9)),
        3..=4 => Injection::MidTranscript,
        5..=6 => Injection::Timed { fault: Fault::DropNow, after_ms },
        7 => Injection::Timed { fault: Fault::SessionLimitNow, after_ms },
        8 => Injection::Timed { fault: Fault::ServerError { then_close: rng.random_bool(0.5) }, after_ms },
        9 => Injection::Timed { fault: Fault::MalformedJson, after_ms },
        10 => Injection::Timed { fault: Fault::Close(if rng.random_bool(0.5) { 1011 } else { 1001 }), after_ms },
        11 => Injection::Timed { fault: Fault::ErrorEvent { kind: "invalid_request_error".into(), code: "decoder_error".into() }, after_ms },
        12 => Injection::FailNextResponse,
        13 => Injection::DuringReplay { handshake_only: rng.random_bool(0.3) },
        14 => Injection::HandshakeRefused(if rng.random_bool(0.5) { 503 } else { 429 }),
        15 if rollover => Injection::DuringRollover,
        15..=16 => Injection::KillPersistence { after_ms },
        _ => Injection::StoreOutage { after_ms, for_ms: rng.random_range(200..1500) },
    }
}

fn deepseek_fault(rng: &mut StdRng) -> Behaviour {
    match rng.random_range(0..9) {
        0 => Behaviour::Status(429),
        1 => Behaviour::Status(500),
        2 => Behaviour::Status(503),
        3 => Behaviour::RateLimited { retry_after_secs: 1 },
        4 => Behaviour::empty_content(),
        5 => Behaviour::spaces_content(),
        6 => Behaviour::invalid_json(),
        7 => Behaviour::Disconnect,
        _ => Behaviour::slow(Duration::from_millis(if rng.random_bool(0.5) { 800 } else { 2500 })),
    }
}
