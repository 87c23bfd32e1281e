"""A LiveKit room participant built on the official `livekit` Python SDK (libwebrtc inside).

Used by the loopback server's integration tests as a peer we did not write.

  participant.py publish --url URL --token TOKEN --wav speech.wav [--linger 1.0]
                 [--permissions deny@1.5,allow@4]
      joins, publishes the WAV as a microphone track in real time, waits, leaves; may
      withdraw and restore everyone's permission to subscribe on a schedule.
  participant.py record --url URL --token TOKEN --out rec.wav --seconds N
                 [--from-identity ID] [--until-silent-after S]
      joins, records the first remote audio track (of ID if given) as 48 kHz mono PCM16
      for at most N seconds from its arrival or until its publisher leaves, writes the WAV;
      reports active speakers, room metadata and connection quality as the server sends them.

  participant.py call --url URL --token TOKEN --phrase a.wav@0.5 --phrase b.wav@4 \
                 --out heard.wav --seconds 9 [--from-identity ID]
      a caller: joins, waits for an agent's (kind AGENT, or ID's) audio track, then plays
      its timeline (each phrase at its offset in seconds, silence elsewhere) for SECONDS
      while recording what it hears on the SAME timeline: sample 0 of heard.wav is the
      start of the caller's timeline, so energy windows can be checked against the phrases.

Prints one JSON line per milestone on stdout (`{"event": ...}`) so the Rust test can follow
it; exits non-zero on failure with the reason on stderr.
"""

import argparse
import asyncio
import json
import logging
import sys
import time
import wave

import numpy as np
from livekit import rtc

SAMPLE_RATE = 48000
FRAME = 480  # 10 ms


def say(event, **kw):
    print(json.dumps({"event": event, "t": round(time.monotonic(), 3), **kw}), flush=True)


def read_wav_48k_mono(path):
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: need 16-bit PCM")
        rate, ch = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    if ch > 1:
        pcm = pcm.reshape(-1, ch).mean(axis=1).astype(np.int16)
    if rate != SAMPLE_RATE:
        n = int(round(len(pcm) * SAMPLE_RATE / rate))
        x = np.linspace(0, len(pcm) - 1, n)
        pcm = np.interp(x, np.arange(len(pcm)), pcm.astype(np.float64)).astype(np.int16)
    return pcm


async def publish(args):
    pcm = read_wav_48k_mono(args.wav)
    room = rtc.Room()

    @room.on("local_track_subscribed")
    def _on_local_subscribed(track):
        # The server's TrackSubscribed: someone subscribed to our track.
        say("local_track_subscribed", track_sid=track.sid)

    await room.connect(args.url, args.token)
    say("connected", identity=room.local_participant.identity, room=room.name)
    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
    track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    pub = await room.local_participant.publish_track(track, opts)
    say("published", track_sid=pub.sid)
    if getattr(args, "permissions", ""):
        asyncio.ensure_future(permission_plan(room, args.permissions))
    if args.wait_for_subscriber:
        deadline = time.monotonic() + 10
        while not room.remote_participants and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # Give the subscriber's PC a moment to open the new track.
        await asyncio.sleep(args.wait_for_subscriber)
    # Lead-in silence, then the speech, paced by the source's queue (real time).
    silence = np.zeros(FRAME, dtype=np.int16)
    for _ in range(int(args.lead_in * 100)):
        await push(source, silence)
    if args.data_marker:
        # A reliable data packet next to the audio (relayed by the server's data channels).
        await room.local_participant.publish_data(args.data_marker.encode(), reliable=True, topic="marker")
    say("speech_start")
    for i in range(0, len(pcm), FRAME):
        chunk = pcm[i : i + FRAME]
        if len(chunk) < FRAME:
            chunk = np.pad(chunk, (0, FRAME - len(chunk)))
        await push(source, chunk)
    await source.wait_for_playout()
    say("speech_end", seconds=round(len(pcm) / SAMPLE_RATE, 3))
    for _ in range(int(args.linger * 100)):
        await push(source, silence)
    await source.wait_for_playout()
    await room.disconnect()
    say("left")


async def permission_plan(room, plan):
    """`deny@1.5,allow@4`: at each offset (s from publishing) allow nobody / everyone to
    subscribe to our tracks."""
    t0 = time.monotonic()
    for spec in plan.split(","):
        action, _, at = spec.partition("@")
        await asyncio.sleep(max(0.0, t0 + float(at) - time.monotonic()))
        room.local_participant.set_track_subscription_permissions(allow_all_participants=(action == "allow"))
        say("permissions", action=action)


async def push(source, samples):
    frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, FRAME)
    np.frombuffer(frame.data, dtype=np.int16)[:] = samples
    await source.capture_frame(frame)


async def record(args):
    room = rtc.Room()
    chunks = []
    done = asyncio.Event()
    started = asyncio.Event()
    target = {}

    async def read(track, participant):
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        say("recording", from_identity=participant.identity, kind=int(participant.kind))
        started.set()
        async for ev in stream:
            chunks.append(np.frombuffer(ev.frame.data, dtype=np.int16).copy())
            if done.is_set():
                break
        await stream.aclose()

    @room.on("track_subscribed")
    def on_track(track, publication, participant):
        if track.kind != rtc.TrackKind.KIND_AUDIO or target:
            return
        if args.from_identity and participant.identity != args.from_identity:
            return
        target["identity"] = participant.identity
        say("subscribed", track_sid=publication.sid, from_identity=participant.identity)
        asyncio.ensure_future(read(track, participant))

    @room.on("data_received")
    def on_data(packet):
        who = packet.participant.identity if packet.participant else ""
        say("data", from_identity=who, topic=packet.topic, payload=packet.data.decode(errors="replace"))

    @room.on("participant_connected")
    def on_join(p):
        say("participant_connected", identity=p.identity, kind=int(p.kind))

    # What the server tells everyone on its own (speakers from the RTP audio levels, the
    # room's metadata, link quality).
    @room.on("active_speakers_changed")
    def on_speakers(speakers):
        say("active_speakers", identities=[p.identity for p in speakers])

    @room.on("room_metadata_changed")
    def on_room_metadata(old, new):
        say("room_metadata", metadata=new)

    @room.on("connection_quality_changed")
    def on_quality(participant, quality):
        say("connection_quality", identity=participant.identity, quality=int(quality))

    def target_gone():
        if not any(o.identity == target.get("identity") for o in room.remote_participants.values()):
            done.set()

    @room.on("participant_disconnected")
    def on_leave(p):
        say("participant_disconnected", identity=p.identity)
        if target.get("identity") == p.identity:
            # A reconnect of ours shows the publisher leaving and coming back: end only if
            # it is still gone a moment later.
            asyncio.get_event_loop().call_later(1.5, target_gone)

    # What the server's LeaveRequests do to the SDK: a resume shows as reconnecting/reconnected,
    # a removal as disconnected with its reason (the recording then ends).
    @room.on("reconnecting")
    def on_reconnecting():
        say("reconnecting")

    @room.on("reconnected")
    def on_reconnected():
        say("reconnected")

    @room.on("disconnected")
    def on_disconnected(reason):
        say("disconnected", reason=rtc.DisconnectReason.Name(reason) if isinstance(reason, int) else str(reason))
        done.set()

    await room.connect(args.url, args.token)
    say("connected", identity=room.local_participant.identity, room=room.name,
        others=[p.identity for p in room.remote_participants.values()])
    try:
        await asyncio.wait_for(started.wait(), timeout=args.max_wait)
        await asyncio.wait_for(done.wait(), timeout=args.seconds)
    except asyncio.TimeoutError:
        pass
    done.set()
    await asyncio.sleep(0.1)
    await room.disconnect()
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    with wave.open(args.out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    say("saved", seconds=round(len(pcm) / SAMPLE_RATE, 3), path=args.out)
    if not started.is_set():
        print("no remote audio track was received", file=sys.stderr)
        sys.exit(2)


async def call(args):
    phrases = []
    for spec in args.phrase:
        path, _, at = spec.rpartition("@")
        phrases.append((read_wav_48k_mono(path), float(at)))
    total = int(args.seconds * SAMPLE_RATE)
    timeline = np.zeros(total, dtype=np.int16)
    for pcm, at in phrases:
        start = int(at * SAMPLE_RATE)
        n = max(0, min(len(pcm), total - start))
        timeline[start : start + n] = pcm[:n]

    room = rtc.Room()
    heard = []  # (arrival time, samples)
    got_track = asyncio.Event()
    state = {"reading": False}

    async def read(track, sid):
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        async for ev in stream:
            # One stream at a time: a newer agent's track replaces the one read before.
            if not state["reading"] or state.get("current") != sid:
                break
            heard.append((time.monotonic(), np.frombuffer(ev.frame.data, dtype=np.int16).copy()))
        await stream.aclose()

    @room.on("track_subscribed")
    def on_track(track, publication, participant):
        # With --follow-agents every agent that joins is heard (an agent resumed on another
        # worker replaces the first); otherwise only the first.
        if track.kind != rtc.TrackKind.KIND_AUDIO or (got_track.is_set() and not args.follow_agents):
            return
        if args.from_identity and participant.identity != args.from_identity:
            return
        if not args.from_identity and participant.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return
        say("subscribed", track_sid=publication.sid, from_identity=participant.identity, kind=int(participant.kind))
        state["reading"] = True
        state["current"] = publication.sid
        got_track.set()
        asyncio.ensure_future(read(track, publication.sid))

    await room.connect(args.url, args.token)
    say("connected", identity=room.local_participant.identity, room=room.name)
    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
    track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    pub = await room.local_participant.publish_track(track, opts)
    say("published", track_sid=pub.sid)
    if getattr(args, "permissions", ""):
        asyncio.ensure_future(permission_plan(room, args.permissions))
    await asyncio.wait_for(got_track.wait(), timeout=args.max_wait)

    t0 = time.monotonic()
    say("timeline_start", phrases=[{"at": at, "seconds": round(len(p) / SAMPLE_RATE, 3)} for p, at in phrases])
    for i in range(0, total, FRAME):
        await push(source, timeline[i : i + FRAME] if i + FRAME <= total else np.pad(timeline[i:], (0, i + FRAME - total)))
    await source.wait_for_playout()
    await asyncio.sleep(0.3)
    state["reading"] = False
    await room.disconnect()

    # Place what was heard on the caller's timeline by arrival time; a frame is appended after
    # the previous one unless the clock says it came later than 60 ms after that point (then
    # the gap is silence).
    out = np.zeros(total, dtype=np.int16)
    pos = None
    for at, samples in heard:
        # the frame's first sample was played about one frame before its arrival
        by_clock = int(round((at - t0) * SAMPLE_RATE)) - len(samples)
        if pos is None or by_clock - pos > int(0.06 * SAMPLE_RATE):
            pos = by_clock
        if pos >= 0:
            n = max(0, min(len(samples), total - pos))
            out[pos : pos + n] = samples[:n]
        pos += len(samples)
    with wave.open(args.out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(out.tobytes())
    say("saved", seconds=round(total / SAMPLE_RATE, 3), frames_heard=len(heard), path=args.out)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("publish")
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--wav", required=True)
    p.add_argument("--lead-in", type=float, default=0.5)
    p.add_argument("--linger", type=float, default=1.0)
    p.add_argument("--wait-for-subscriber", type=float, default=0.0)
    p.add_argument("--data-marker", default="", help="send this as a reliable data packet (topic 'marker') before the speech")
    p.add_argument("--permissions", default="", help="deny@S,allow@S: withdraw / restore subscription permissions at these offsets")
    r = sub.add_parser("record")
    r.add_argument("--url", required=True)
    r.add_argument("--token", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--seconds", type=float, default=20, help="longest recording")
    r.add_argument("--max-wait", type=float, default=20, help="longest wait for a track")
    r.add_argument("--from-identity", default="")
    c = sub.add_parser("call")
    c.add_argument("--url", required=True)
    c.add_argument("--token", required=True)
    c.add_argument("--phrase", action="append", default=[], help="WAV@offset_seconds, repeatable")
    c.add_argument("--out", required=True)
    c.add_argument("--seconds", type=float, required=True, help="length of the timeline")
    c.add_argument("--from-identity", default="")
    c.add_argument("--max-wait", type=float, default=20, help="longest wait for the agent's track")
    c.add_argument("--follow-agents", action="store_true", help="also hear agents that join later")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run = {"publish": publish, "record": record, "call": call}[args.cmd]
        asyncio.run(run(args))
    except Exception as e:  # report, do not hide
        print(f"{args.cmd} failed: {e!r}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
