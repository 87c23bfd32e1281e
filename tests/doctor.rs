//! `consultant doctor`, the binary as operators run it, against the loopback LiveKit server,
//! the fake realtime service (GA-only, as a new Azure resource) and the fake DeepSeek: one
//! verdict per line, the failing one with its advice, a non-zero exit, and no secret printed.

use std::path::PathBuf;
use std::process::Output;

use consultant_fakes::deepseek::{FakeDeepSeek, TEST_API_KEY};
use consultant_fakes::realtime::{FakeFlavour, FakeRealtime, FakeRealtimeOptions, HandshakeFault};
use livekit_loopback::{LoopbackConfig, LoopbackServer};

const LIVEKIT_KEY: &str = "APIdoctor5f1c";
const LIVEKIT_SECRET: &str = "doctor-livekit-secret-9a7e3b";
const AZURE_KEY: &str = "azure-doctor-key-4c2e81";
const DEPLOYMENT: &str = "gpt-realtime";

struct World {
    livekit: LoopbackServer,
    realtime: FakeRealtime,
    deepseek: FakeDeepSeek,
    dir: tempfile::TempDir,
}

impl World {
    async fn start() -> Self {
        let livekit = LoopbackServer::start(LoopbackConfig::with_keys(LIVEKIT_KEY, LIVEKIT_SECRET)).await.unwrap();
        let mut options = FakeRealtimeOptions::new(FakeFlavour::AzureGa);
        options.api_key = AZURE_KEY.into();
        options.deployment = DEPLOYMENT.into();
        let realtime = FakeRealtime::start(options).await.unwrap();
        let deepseek = FakeDeepSeek::start().await;
        Self { livekit, realtime, deepseek, dir: tempfile::tempdir().unwrap() }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("data/consultations.db")
    }

    /// The environment of a correct deployment, with `overrides` applied.
    fn env(&self, overrides: &[(&str, String)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("LIVEKIT_URL", self.livekit.ws_url()),
            ("LIVEKIT_API_KEY", LIVEKIT_KEY.into()),
            ("LIVEKIT_API_SECRET", LIVEKIT_SECRET.into()),
            ("CONSULTANT_REALTIME_FLAVOUR", "azure-ga".into()),
            ("AZURE_OPENAI_ENDPOINT", self.realtime.endpoint()),
            ("AZURE_OPENAI_API_KEY", AZURE_KEY.into()),
            ("AZURE_OPENAI_DEPLOYMENT_NAME", DEPLOYMENT.into()),
            ("DEEPSEEK_API_KEY", TEST_API_KEY.into()),
            ("DEEPSEEK_BASE_URL", self.deepseek.base_url()),
            ("CONSULTANT_DB_PATH", self.db().display().to_string()),
            // Port 0: bindable whatever else runs on this machine.
            ("CONSULTANT_CONSOLE_LISTEN", "127.0.0.1:0".into()),
            ("CONSULTANT_CONSOLE_TOKEN_FILE", self.dir.path().join("data/console-tokens.toml").display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (name, value) in overrides {
            env.retain(|(k, _)| k != name);
            env.push(((*name).to_owned(), value.clone()));
        }
        env
    }

    /// Runs `consultant doctor` in the temporary folder with only `env` (and PATH).
    async fn doctor(&self, overrides: &[(&str, String)]) -> Run {
        self.doctor_within(5, overrides).await
    }

    async fn doctor_within(&self, timeout_secs: u64, overrides: &[(&str, String)]) -> Run {
        let env = self.env(overrides);
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_consultant"));
        cmd.args(["doctor", "--timeout", &timeout_secs.to_string()]).current_dir(self.dir.path()).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        let output = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.envs(env.clone()).output()).await.expect("the doctor never hangs").unwrap();
        let run = Run::from(output);
        // Whatever was wrong, no secret the doctor was given is printed.
        for (name, value) in &env {
            if name.contains("KEY") || name.contains("SECRET") {
                assert!(!run.stdout.contains(value.as_str()) && !run.stderr.contains(value.as_str()), "{name} printed:\n{}\n{}", run.stdout, run.stderr);
            }
        }
        run
    }

    async fn stop(self) {
        self.livekit.shutdown().await;
    }
}

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self { success: o.status.success(), stdout: String::from_utf8_lossy(&o.stdout).into_owned(), stderr: String::from_utf8_lossy(&o.stderr).into_owned() }
    }
}

impl Run {
    /// The verdict line of `check` and the hint lines below it.
    fn verdict(&self, check: &str) -> (String, String) {
        let lines: Vec<&str> = self.stdout.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("ok   {check}: ")) || l.starts_with(&format!("FAIL {check}: ")))
            .unwrap_or_else(|| panic!("no verdict for {check} in:\n{}", self.stdout));
        let hints: Vec<&str> = lines[at + 1..].iter().take_while(|l| l.starts_with("     hint: ")).copied().collect();
        (lines[at].to_owned(), hints.join("\n"))
    }

    /// Exactly `check` failed (with its hints returned), every other check passed.
    fn only_failure(&self, check: &str) -> (String, String) {
        assert!(!self.success, "a failed check exits non-zero:\n{}", self.stdout);
        assert!(self.stderr.contains("1 of 7 checks failed"), "{}", self.stderr);
        let failed: Vec<&str> = self.stdout.lines().filter(|l| l.starts_with("FAIL ")).collect();
        assert_eq!(failed.len(), 1, "{}", self.stdout);
        let (line, hints) = self.verdict(check);
        assert!(line.starts_with("FAIL "), "{}", self.stdout);
        (line, hints)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_setup_passes_every_check_and_leaves_nothing_behind() {
    let world = World::start().await;
    let run = world.doctor(&[]).await;
    assert!(run.success, "{}\n{}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{}", run.stdout);
    assert!(lines.iter().all(|l| l.starts_with("ok   ")), "{}", run.stdout);
    for check in ["config", "livekit", "agent", "azure", "deepseek", "storage", "console"] {
        world_line(&run, check);
    }
    assert!(run.verdict("livekit").0.contains("key pair accepted"), "{}", run.stdout);
    assert!(run.verdict("agent").0.contains("registers as \"consultant\""), "{}", run.stdout);
    assert!(run.verdict("azure").0.contains("azure-ga handshake") && run.verdict("azure").0.contains("session.created"), "{}", run.stdout);
    assert!(run.verdict("storage").0.contains("bytes free"), "{}", run.stdout);
    // The realtime probe only opened and closed a session; DeepSeek got one small request.
    let sessions = world.realtime.sessions();
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].session_updates.is_empty() && sessions[0].appends == 0, "{:?}", sessions[0]);
    let requests = world.deepseek.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body.as_ref().unwrap()["max_tokens"], 16);
    // Checked, not created.
    assert!(!world.db().exists() && !world.dir.path().join("data").exists());
    world.stop().await;
}

fn world_line(run: &Run, check: &str) {
    let (line, hints) = run.verdict(check);
    assert!(line.starts_with("ok   ") && hints.is_empty(), "{check}: {line}\n{hints}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_livekit_secret_fails_livekit_with_the_key_pair_advice() {
    let world = World::start().await;
    let run = world.doctor(&[("LIVEKIT_API_SECRET", "not-the-livekit-secret-1234".into())]).await;
    let (line, hints) = run.only_failure("livekit");
    assert!(line.contains("ListRooms") && line.contains("401"), "{line}");
    assert!(hints.contains("LIVEKIT_API_SECRET must be the secret of LIVEKIT_API_KEY"), "{hints}");
    assert!(hints.contains("LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET"), "{hints}");
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_flavour_on_a_ga_only_resource_names_the_ga_flavour() {
    let world = World::start().await;
    let run = world.doctor(&[("CONSULTANT_REALTIME_FLAVOUR", "azure-preview".into())]).await;
    let (line, hints) = run.only_failure("azure");
    assert!(line.contains("404") && line.contains("/openai/realtime"), "{line}");
    assert!(hints.contains("realtime.flavour = \"azure-ga\"") && hints.contains("CONSULTANT_REALTIME_FLAVOUR=azure-ga"), "{hints}");
    assert!(hints.contains("WSServerHandshakeError: 404"), "the Python module's advice: {hints}");
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_azure_key_fails_the_handshake_with_401_and_the_key_advice() {
    let world = World::start().await;
    let run = world.doctor(&[("AZURE_OPENAI_API_KEY", "wrong-azure-key-000000".into())]).await;
    let (line, hints) = run.only_failure("azure");
    assert!(line.contains("401") && line.contains("check AZURE_OPENAI_API_KEY"), "{line}");
    assert!(hints.contains("also refuses (401) a request that carries an api-version"), "{hints}");
    assert!(hints.contains("connection failed after 3 attempts"), "the Python module's advice: {hints}");
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_deepseek_key_fails_deepseek_without_quoting_the_key() {
    let world = World::start().await;
    // The real service (and the fake) quotes the key's last four characters back.
    let run = world.doctor(&[("DEEPSEEK_API_KEY", "sk-wrong-deepseek-key-7Q9z".into())]).await;
    let (line, hints) = run.only_failure("deepseek");
    assert!(line.contains("rejected the API key (401)"), "{line}");
    assert!(hints.contains("DEEPSEEK_API_KEY"), "{hints}");
    assert!(!run.stdout.contains("7Q9z"), "{}", run.stdout);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_path_under_a_file_fails_storage() {
    let world = World::start().await;
    let blocker = world.dir.path().join("blocker");
    std::fs::write(&blocker, "a file where the data folder should be").unwrap();
    let run = world.doctor(&[("CONSULTANT_DB_PATH", blocker.join("consultations.db").display().to_string())]).await;
    let (line, hints) = run.only_failure("storage");
    assert!(line.contains("cannot be created") && line.contains("is not a folder"), "{line}");
    assert!(hints.contains("CONSULTANT_DB_PATH"), "{hints}");
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_service_fails_at_the_timeout_instead_of_hanging() {
    let world = World::start().await;
    world.realtime.fail_next_handshakes([HandshakeFault::Slow(std::time::Duration::from_secs(30))]);
    let started = std::time::Instant::now();
    let run = world.doctor_within(1, &[]).await;
    let (line, hints) = run.only_failure("azure");
    assert!(line.contains("no answer within 1 s"), "{line}");
    assert!(hints.contains("--timeout"), "{hints}");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "took {:?}", started.elapsed());
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_deepseek_model_names_the_models() {
    let world = World::start().await;
    let run = world.doctor(&[("DEEPSEEK_MODEL", "deepseek-chatt".into())]).await;
    let (line, hints) = run.only_failure("deepseek");
    assert!(line.contains("(400): Model Not Exist"), "{line}");
    assert!(hints.contains("DEEPSEEK_MODEL") && hints.contains("\"deepseek-chatt\"") && hints.contains("deepseek-v4-flash"), "{hints}");
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_setting_fails_config_and_the_services_are_still_checked() {
    let world = World::start().await;
    let run = world.doctor(&[("CONSULTANT_LIVEKIT_CAPACITY", "0".into())]).await;
    let (line, hints) = run.only_failure("config");
    assert!(line.contains("1 problem(s)"), "{line}");
    assert!(hints.contains("livekit.capacity") && hints.contains("CONSULTANT_LIVEKIT_CAPACITY"), "{hints}");
    assert!(run.verdict("livekit").0.starts_with("ok   "), "{}", run.stdout);
    world.stop().await;
}
