//! `consultant loadtest`: N lightweight callers against a LiveKit deployment and the worker
//! serving it. Each call gets its own room `consultation-load-<run>-<i>` created with an
//! explicit dispatch of the agent, a caller replaying one WAV (encoded to Opus once for all),
//! and measurements of what the agent sends back. The rooms are deleted at the end (or on
//! Ctrl-C), so the worker's consultations end.

mod audio;
mod arrival;
mod caller;
mod procs;
mod report;
mod script;
pub(crate) mod stats;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

pub use audio::CallerAudio;
use procs::{ProcWatch, Sample};
use report::{CallReport, Failure, FailureKind, Live, ProcessUsage, Summary, WorkerUsage};

use crate::livekit::LiveKitClient;
use crate::tls::ClientTls;

/// Idle seconds of the worker sampled before the first room.
const BASELINE_SECS: u64 = 3;

#[derive(Clone, Debug)]
pub struct LoadtestArgs {
    pub rooms: usize,
    pub ramp: Duration,
    pub duration: Duration,
    pub caller: PathBuf,
    pub agent_name: Option<String>,
    pub worker_pid: Option<u32>,
    pub join_timeout: Duration,
    pub json: bool,
}

/// What one caller needs to know.
pub struct CallPlan {
    pub url: String,
    pub room: String,
    pub agent_name: String,
    pub audio: Arc<CallerAudio>,
    pub join_timeout: Duration,
    pub duration: Duration,
}

pub async fn run(client: LiveKitClient, tls: ClientTls, args: LoadtestArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rooms > 0, "--rooms must be at least 1");
    let audio = Arc::new(CallerAudio::load(&args.caller).map_err(|e| anyhow::anyhow!("caller WAV: {e}"))?);
    let agent_name = args.agent_name.clone().unwrap_or_else(|| client.agent_name().to_owned());
    let mut worker = args.worker_pid.map(|pid| ProcWatch::new(Some(pid)));
    if let (Some(w), Some(pid)) = (&worker, args.worker_pid) {
        anyhow::ensure!(w.readable(), "--worker-pid {pid}: no such process readable in /proc");
    }
    let run = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    eprintln!("load test {run}: {} rooms for agent `{agent_name}` at {}, caller {} ({:.1} s, {} phrases)", args.rooms, client.url(), args.caller.display(), audio.seconds(), audio.phrases.len());

    let mut baseline = Vec::new();
    if let Some(w) = worker.as_mut() {
        w.sample();
        for _ in 0..BASELINE_SECS {
            tokio::time::sleep(Duration::from_secs(1)).await;
            baseline.extend(w.sample());
        }
    }

    let names: Vec<String> = (0..args.rooms).map(|i| format!("consultation-load-{run}-{i}")).collect();
    // The first room is created before anything else: a wrong URL or key pair ends the run here.
    client.create_named_room(&names[0], &agent_name).await.map_err(|e| anyhow::anyhow!("cannot create room {}: {e}", names[0]))?;

    let live = Arc::new(Live::default());
    let (stop_tx, stop) = watch::channel(false);
    let samples: Arc<Mutex<Vec<(Sample, usize)>>> = Arc::default();
    let mine: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampler = tokio::spawn(sample_every_second(worker, live.clone(), samples.clone(), mine.clone()));

    let start = tokio::time::Instant::now();
    let mut set = JoinSet::new();
    let mut reports = Vec::new();
    let mut launched = 0;
    let mut stopped = false;
    let mut fatal: Option<String> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        if (launched == args.rooms || stopped) && set.is_empty() {
            break;
        }
        let launch_at = start + args.ramp.mul_f64(launched as f64 / args.rooms as f64);
        tokio::select! {
            _ = tokio::time::sleep_until(launch_at), if launched < args.rooms && !stopped => {
                let plan = CallPlan {
                    url: client.url().to_owned(),
                    room: names[launched].clone(),
                    agent_name: agent_name.clone(),
                    audio: audio.clone(),
                    join_timeout: args.join_timeout,
                    duration: args.duration,
                };
                set.spawn(launch(client.clone(), tls.clone(), plan, launched > 0, live.clone(), stop.clone()));
                live.started.fetch_add(1, Ordering::Relaxed);
                launched += 1;
            }
            Some(done) = set.join_next(), if !set.is_empty() => {
                let report = done.unwrap_or_else(|e| {
                    let mut r = CallReport::new("?");
                    r.failure = Some(Failure::other(format!("the caller task failed: {e}")));
                    r
                });
                live.ended.fetch_add(1, Ordering::Relaxed);
                if let Some(f) = report.failure.as_ref().filter(|f| f.kind == FailureKind::NoAgent) {
                    if !live.agent_seen.load(Ordering::Relaxed) && fatal.is_none() {
                        // No agent anywhere: the worker is missing, not overloaded. Stop now.
                        fatal = Some(f.message.clone());
                        stopped = true;
                        let _ = stop_tx.send(true);
                    }
                }
                reports.push(report);
            }
            _ = &mut ctrl_c, if !stopped => {
                eprintln!("interrupted: leaving and deleting the rooms");
                stopped = true;
                let _ = stop_tx.send(true);
            }
        }
    }
    sampler.abort();
    delete_rooms(&client, &names[..launched.max(1)]).await;
    if let Some(message) = fatal {
        anyhow::bail!(message);
    }

    reports.sort_by_key(|r| r.room.split('-').next_back().and_then(|i| i.parse::<usize>().ok()).unwrap_or(usize::MAX));
    let summary = summarize(&args, run, agent_name, reports, &baseline, &samples.lock().expect("samples"), &mine.lock().expect("samples"));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.table());
    }
    Ok(())
}

/// Creates the room (the first already is) and runs its caller.
async fn launch(client: LiveKitClient, tls: ClientTls, plan: CallPlan, create: bool, live: Arc<Live>, stop: watch::Receiver<bool>) -> CallReport {
    if create {
        if let Err(e) = client.create_named_room(&plan.room, &plan.agent_name).await {
            live.failed.fetch_add(1, Ordering::Relaxed);
            let mut r = CallReport::new(&plan.room);
            r.failure = Some(Failure { kind: FailureKind::Room, message: format!("cannot create the room: {e}") });
            return r;
        }
    }
    let identity = format!("load-caller-{}", plan.room.rsplit('-').next().unwrap_or("0"));
    let token = match client.create_token(&plan.room, &identity) {
        Ok(t) => t,
        Err(e) => {
            let mut r = CallReport::new(&plan.room);
            r.failure = Some(Failure::other(format!("cannot sign the caller token: {e}")));
            return r;
        }
    };
    caller::run(plan, token, tls, live, stop).await
}

async fn delete_rooms(client: &LiveKitClient, names: &[String]) {
    let mut set = JoinSet::new();
    for name in names {
        let (client, name) = (client.clone(), name.clone());
        set.spawn(async move {
            // An empty room may be gone already; nothing else is left to do about it.
            if let Err(e) = client.delete_room(&name).await {
                tracing::debug!(room = %name, error = %e, "room not deleted");
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// The worker's and our own CPU/RSS once a second, and the progress line on stderr.
async fn sample_every_second(mut worker: Option<ProcWatch>, live: Arc<Live>, samples: Arc<Mutex<Vec<(Sample, usize)>>>, mine: Arc<Mutex<Vec<Sample>>>) {
    let mut me = ProcWatch::new(None);
    me.sample();
    if let Some(w) = worker.as_mut() {
        w.sample();
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    for secs in 1.. {
        tick.tick().await;
        let w = worker.as_mut().and_then(ProcWatch::sample);
        let m = me.sample();
        let active = live.active.load(Ordering::Relaxed);
        if let Some(w) = w {
            samples.lock().expect("samples").push((w, active));
        }
        mine.lock().expect("samples").extend(m);
        eprintln!("{}", live.line(secs, w, m));
    }
}

fn summarize(args: &LoadtestArgs, run: String, agent_name: String, calls: Vec<CallReport>, baseline: &[Sample], samples: &[(Sample, usize)], mine: &[Sample]) -> Summary {
    let (totals, latency, audio, failures) = Summary::totals(&calls);
    let worker = args.worker_pid.map(|pid| {
        let most = samples.iter().map(|s| s.1).max().unwrap_or(0);
        let loaded: Vec<Sample> = samples.iter().filter(|s| most > 0 && s.1 == most).map(|s| s.0).collect();
        let (idle, busy) = (ProcessUsage::of(baseline), ProcessUsage::of(&loaded));
        let per_call = |busy: f64, idle: f64| (most > 0 && !loaded.is_empty()).then(|| (busy - idle) / most as f64);
        WorkerUsage {
            pid,
            cpu_percent_per_call: per_call(busy.cpu_percent_mean, idle.cpu_percent_mean),
            rss_bytes_per_call: per_call(busy.rss_bytes_mean as f64, idle.rss_bytes_mean as f64),
            baseline: idle,
            loaded: busy,
            loaded_calls: most,
        }
    });
    Summary {
        run,
        rooms: args.rooms,
        agent_name,
        duration_s: args.duration.as_secs_f64(),
        ramp_s: args.ramp.as_secs_f64(),
        totals,
        latency,
        audio,
        worker,
        loadtest: ProcessUsage::of(mine),
        failures,
        calls,
    }
}
