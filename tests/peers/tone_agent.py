"""A minimal agent on the official `livekit-agents` worker: registers on LIVEKIT_URL/agent
as agent_name `tone-agent` (explicit dispatch only), and for every job joins the room and
publishes one audio track until the job ends:
  TONE_AGENT_MODE=tone (default)  a 440 Hz tone;
  TONE_AGENT_MODE=echo            the audio of the first remote participant, played back.

Environment: LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET. SIGTERM/SIGINT close the worker.
Prints JSON lines on stdout (`{"event": ...}`) for the Rust test to follow.
"""

import asyncio
import json
import logging
import math
import os
import signal
import sys
import time

import numpy as np
from livekit import rtc
from livekit.agents import AgentServer, JobContext, JobExecutorType

SAMPLE_RATE = 48000
FRAME = 480  # 10 ms
FREQ = 440.0


def say(event, **kw):
    print(json.dumps({"event": event, "t": round(time.monotonic(), 3), **kw}), flush=True)


server = AgentServer(
    job_executor_type=JobExecutorType.THREAD,  # no process spawn: cheap on 2 cores
    num_idle_processes=0,
    load_threshold=math.inf,
    port=0,
)


@server.rtc_session(agent_name="tone-agent")
async def entrypoint(ctx: JobContext):
    say("job", job_id=ctx.job.id, room=ctx.job.room.name)
    await ctx.connect()
    say("joined", identity=ctx.room.local_participant.identity)
    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
    track = rtc.LocalAudioTrack.create_audio_track("tone", source)
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    pub = await ctx.room.local_participant.publish_track(track, opts)
    say("published", track_sid=pub.sid)
    if os.environ.get("TONE_AGENT_MODE", "tone") == "echo":
        await echo(ctx, source)
        say("room_left")
        return
    n = 0
    t = np.arange(FRAME)
    while ctx.room.isconnected():
        frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, FRAME)
        wave = 0.3 * 32767 * np.sin(2 * np.pi * FREQ * (n * FRAME + t) / SAMPLE_RATE)
        np.frombuffer(frame.data, dtype=np.int16)[:] = wave.astype(np.int16)
        await source.capture_frame(frame)
        n += 1
    say("room_left")


async def echo(ctx: JobContext, source: rtc.AudioSource):
    found = asyncio.get_running_loop().create_future()

    def offer(track, participant):
        if track is not None and track.kind == rtc.TrackKind.KIND_AUDIO and not found.done():
            found.set_result((track, participant))

    ctx.room.on("track_subscribed", lambda track, pub, participant: offer(track, participant))
    for p in ctx.room.remote_participants.values():
        for pub in p.track_publications.values():
            offer(pub.track, p)
    track, participant = await found
    say("echoing", from_identity=participant.identity)
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    async for ev in stream:
        if not ctx.room.isconnected():
            break
        await source.capture_frame(ev.frame)
    await stream.aclose()


async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    @server.on("worker_registered")
    def _registered(worker_id, server_info):
        say("registered", worker_id=worker_id)

    run = asyncio.create_task(server.run(devmode=True))
    done, _ = await asyncio.wait({run, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if run in done and run.exception():
        print(f"worker failed: {run.exception()!r}", file=sys.stderr)
        sys.exit(1)
    await server.aclose()
    say("closed")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
