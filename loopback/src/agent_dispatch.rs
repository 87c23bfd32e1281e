//! The dispatcher: explicit and automatic dispatches become jobs, offered to one available
//! worker at a time (availability request, its answer or timeout, the assignment), the way
//! livekit-server does it.

use super::*;

/// The protobuf `Job` as sent to workers.
pub(crate) fn job_proto(inner: &Inner, j: &Job) -> proto::Job {
    let room = inner
        .rooms
        .get(&j.room)
        .map(|r| r.proto())
        .unwrap_or_else(|| proto::Room { name: j.room.clone(), ..Default::default() });
    #[allow(deprecated)]
    proto::Job {
        id: j.id.clone(),
        dispatch_id: j.dispatch_id.clone(),
        r#type: proto::JobType::JtRoom as i32,
        room: Some(room),
        participant: None,
        namespace: String::new(),
        metadata: j.metadata.clone(),
        agent_name: j.agent_name.clone(),
        state: Some(proto::JobState {
            status: j.status as i32,
            error: j.error.clone(),
            started_at: j.started_at,
            ended_at: j.ended_at,
            updated_at: j.updated_at,
            participant_identity: j.participant_identity.clone(),
            worker_id: j.worker_id.clone().unwrap_or_default(),
            agent_id: String::new(),
        }),
        ..Default::default()
    }
}

/// Create a dispatch (and its job) for `room`; the room must exist. Spawns the dispatcher.
pub(crate) fn create_dispatch_locked(
    sh: &SharedRef,
    g: &mut Inner,
    room: &str,
    agent_name: &str,
    metadata: &str,
) -> String {
    let dispatch_id = new_id("AD_");
    let job_id = new_id("AJ_");
    let now = now_secs();
    g.dispatches.insert(
        dispatch_id.clone(),
        Dispatch {
            id: dispatch_id.clone(),
            room: room.into(),
            agent_name: agent_name.into(),
            metadata: metadata.into(),
            job_ids: vec![job_id.clone()],
            created_at: now,
            deleted_at: 0,
        },
    );
    g.dispatch_order.push(dispatch_id.clone());
    if let Some(r) = g.rooms.get_mut(room) {
        r.dispatch_ids.push(dispatch_id.clone());
    }
    g.jobs.insert(
        job_id.clone(),
        Job {
            id: job_id.clone(),
            dispatch_id: dispatch_id.clone(),
            room: room.into(),
            agent_name: agent_name.into(),
            metadata: metadata.into(),
            worker_id: None,
            participant_identity: String::new(),
            status: JobStatus::JsPending,
            error: String::new(),
            history: vec![JobStatus::JsPending],
            assigned: false,
            terminated: false,
            refused_by: Vec::new(),
            updated_at: now,
            started_at: 0,
            ended_at: 0,
        },
    );
    g.job_order.push(job_id.clone());
    sh.emit(g, ServerEvent::DispatchCreated {
        dispatch_id: dispatch_id.clone(),
        room: room.into(),
        agent_name: agent_name.into(),
    });
    sh.emit(g, ServerEvent::JobCreated {
        job_id: job_id.clone(),
        dispatch_id: dispatch_id.clone(),
        room: room.into(),
        agent_name: agent_name.into(),
    });
    tokio::spawn(run_dispatch(sh.clone(), job_id));
    dispatch_id
}

/// Delete a dispatch: its jobs are terminated. Returns the dispatch as it was.
pub(crate) fn delete_dispatch_locked(sh: &SharedRef, g: &mut Inner, dispatch_id: &str) -> Option<proto::AgentDispatch> {
    let d = g.dispatches.get_mut(dispatch_id)?;
    if d.deleted_at != 0 {
        return None;
    }
    d.deleted_at = now_secs();
    let room = d.room.clone();
    let job_ids = d.job_ids.clone();
    if let Some(r) = g.rooms.get_mut(&room) {
        r.dispatch_ids.retain(|x| x != dispatch_id);
    }
    let snapshot = dispatch_proto(g, dispatch_id);
    for j in job_ids {
        terminate_job_locked(sh, g, &j, "dispatch deleted");
    }
    sh.emit(g, ServerEvent::DispatchDeleted { dispatch_id: dispatch_id.into(), room });
    snapshot
}

pub(crate) fn dispatch_proto(g: &Inner, dispatch_id: &str) -> Option<proto::AgentDispatch> {
    let d = g.dispatches.get(dispatch_id)?;
    Some(proto::AgentDispatch {
        id: d.id.clone(),
        agent_name: d.agent_name.clone(),
        room: d.room.clone(),
        metadata: d.metadata.clone(),
        state: Some(proto::AgentDispatchState {
            jobs: d.job_ids.iter().filter_map(|j| g.jobs.get(j)).map(|j| job_proto(g, j)).collect(),
            created_at: d.created_at,
            deleted_at: d.deleted_at,
        }),
        ..Default::default()
    })
}

/// Send `termination` for a job (once). Unassigned jobs just stop being offered.
pub(crate) fn terminate_job_locked(sh: &SharedRef, g: &mut Inner, job_id: &str, reason: &str) {
    let Some(j) = g.jobs.get_mut(job_id) else { return };
    if j.terminated || matches!(j.status, JobStatus::JsSuccess | JobStatus::JsFailed) {
        return;
    }
    j.terminated = true;
    let worker_id = j.worker_id.clone();
    let assigned = j.assigned;
    if let (true, Some(wid)) = (assigned, worker_id) {
        if let Some(w) = g.workers.get(&wid) {
            if w.connected {
                let _ = w.tx.send(WorkerOut::Msg(Box::new(proto::ServerMessage {
                    message: Some(SrvMsg::Termination(proto::JobTermination { job_id: job_id.into() })),
                })));
            }
        }
        tracing::info!(%job_id, worker_id = %wid, reason, "job terminated");
        sh.emit(g, ServerEvent::JobTerminated { job_id: job_id.into(), worker_id: wid, reason: reason.into() });
    }
}

enum Pick {
    Worker(String, mpsc::UnboundedSender<WorkerOut>, oneshot::Receiver<proto::AvailabilityResponse>),
    NoneEligible(String),
    Stop,
}

/// Weighted random choice among available workers, weight max(0, 1 - load).
fn pick_worker(g: &mut Inner, job_id: &str) -> Pick {
    let Some(job) = g.jobs.get(job_id) else { return Pick::Stop };
    if job.assigned || job.ended() {
        return Pick::Stop;
    }
    let agent_name = job.agent_name.clone();
    let refused = job.refused_by.clone();
    let cands: Vec<(String, f32)> = g
        .worker_order
        .iter()
        .filter_map(|id| g.workers.get(id))
        .filter(|w| w.connected && w.agent_name == agent_name && !refused.contains(&w.id))
        .filter(|w| w.status == WorkerStatus::WsAvailable && !w.draining)
        .map(|w| (w.id.clone(), (1.0 - w.load).max(0.0)))
        .filter(|(_, wt)| *wt > 0.0)
        .collect();
    if cands.is_empty() {
        let named = g.workers.values().filter(|w| w.connected && w.agent_name == agent_name).count();
        let why = if named == 0 {
            format!("no connected worker for agent_name {agent_name:?}")
        } else {
            format!("{named} worker(s) for {agent_name:?} but none available (status FULL, draining, load >= 1, or refused)")
        };
        return Pick::NoneEligible(why);
    }
    let total: f32 = cands.iter().map(|(_, w)| *w).sum();
    let mut x = rand::random::<f32>() * total;
    let mut chosen = cands[cands.len() - 1].0.clone();
    for (id, wt) in &cands {
        if x < *wt {
            chosen = id.clone();
            break;
        }
        x -= wt;
    }
    let (tx, rx) = oneshot::channel();
    let w = g.workers.get_mut(&chosen).expect("candidate exists");
    w.pending.insert(job_id.to_string(), tx);
    Pick::Worker(chosen, w.tx.clone(), rx)
}

async fn run_dispatch(sh: SharedRef, job_id: String) {
    let mut shutdown = sh.shutdown.subscribe();
    let mut reported_unassigned = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let kick = sh.dispatch_kick.notified();
        tokio::pin!(kick);
        kick.as_mut().enable();
        let pick = {
            let mut g = sh.lock();
            let p = pick_worker(&mut g, &job_id);
            if let Pick::NoneEligible(why) = &p {
                if !reported_unassigned {
                    reported_unassigned = true;
                    sh.emit(&mut g, ServerEvent::JobUnassigned { job_id: job_id.clone(), reason: why.clone() });
                }
            }
            p
        };
        let (worker_id, wtx, rx) = match pick {
            Pick::Stop => return,
            Pick::NoneEligible(_) => {
                tokio::select! {
                    _ = kick => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            Pick::Worker(w, tx, rx) => (w, tx, rx),
        };
        reported_unassigned = false;
        let req = {
            let mut g = sh.lock();
            let Some(j) = g.jobs.get(&job_id) else { return };
            let jp = job_proto(&g, j);
            sh.emit(&mut g, ServerEvent::AvailabilityRequested {
                job_id: job_id.clone(),
                worker_id: worker_id.clone(),
                resuming: false,
            });
            proto::ServerMessage {
                message: Some(SrvMsg::Availability(proto::AvailabilityRequest { job: Some(jp), resuming: false })),
            }
        };
        let _ = wtx.send(WorkerOut::Msg(Box::new(req)));
        let answer = tokio::time::timeout(sh.cfg.availability_timeout, rx).await;
        let mut g = sh.lock();
        let resp = match answer {
            Ok(Ok(resp)) => resp,
            Ok(Err(_)) => continue, // worker went away; try again
            Err(_) => {
                if let Some(w) = g.workers.get_mut(&worker_id) {
                    w.pending.remove(&job_id);
                }
                if let Some(j) = g.jobs.get_mut(&job_id) {
                    j.refused_by.push(worker_id.clone());
                }
                sh.emit(&mut g, ServerEvent::AvailabilityAnswered {
                    job_id: job_id.clone(),
                    worker_id,
                    available: false,
                    timed_out: true,
                });
                continue;
            }
        };
        sh.emit(&mut g, ServerEvent::AvailabilityAnswered {
            job_id: job_id.clone(),
            worker_id: worker_id.clone(),
            available: resp.available,
            timed_out: false,
        });
        let Some(j) = g.jobs.get_mut(&job_id) else { return };
        if !resp.available || resp.terminate {
            j.refused_by.push(worker_id.clone());
            continue;
        }
        if j.ended() {
            return; // deleted while we were asking
        }
        let identity = if resp.participant_identity.is_empty() {
            format!("agent-{job_id}")
        } else {
            resp.participant_identity.clone()
        };
        let room = j.room.clone();
        let perms = g.workers.get(&worker_id).and_then(|w| w.permissions.clone());
        let token = match auth::mint_agent_token(
            &sh.cfg,
            &room,
            &identity,
            &resp,
            perms.as_ref(),
        ) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "could not mint agent token");
                return;
            }
        };
        let j = g.jobs.get_mut(&job_id).expect("checked above");
        j.assigned = true;
        j.worker_id = Some(worker_id.clone());
        j.participant_identity = identity.clone();
        j.updated_at = now_secs();
        let j = g.jobs.get(&job_id).expect("checked above");
        let msg = proto::ServerMessage {
            message: Some(SrvMsg::Assignment(proto::JobAssignment {
                job: Some(job_proto(&g, j)),
                url: sh.cfg.assignment_url.clone(),
                token,
            })),
        };
        let _ = wtx.send(WorkerOut::Msg(Box::new(msg)));
        tracing::info!(%job_id, %worker_id, %identity, "job assigned");
        sh.emit(&mut g, ServerEvent::JobAssigned { job_id: job_id.clone(), worker_id, participant_identity: identity });
        return;
    }
}
