"""A caller on the official `livekit` Python SDK: speaks and listens at the same time.

Used by the consultant's room and end-to-end tests (tests/room.rs, tests/e2e.rs): the agent on
the other side is our Rust worker.

  caller.py --url URL --token TOKEN --wav a.wav [--wav b.wav ...] [--pause 4] [--pause-after 1:2.5]
            [--lead-in 1] [--mute-for 2] [--vanish] [--follow-agents]
            --record heard.wav --envelope heard.json [--tail 6] [--wait-agent 20]

Joins, subscribes to the first agent audio track and records it (48 kHz mono PCM16), waits for
the agent, then publishes a microphone track: lead-in silence, each WAV in real time with
`--pause` seconds of silence after it, then `--tail` seconds of silence, leaves, and writes the
recording plus an energy envelope (one [wall_time, rms] pair per 10 ms frame received).
Transcripts the agent publishes (text streams on topic `lk.transcription`) are printed as
`transcript` events. Prints one JSON line per milestone on stdout with wall-clock times (`t`, seconds since the
epoch), so the Rust side can line up its own clock; exits non-zero with the reason on stderr.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import wave

import numpy as np
from livekit import rtc

RATE = 48000
FRAME = 480  # 10 ms


def say(event, **kw):
    print(json.dumps({"event": event, "t": time.time(), **kw}), flush=True)


def read_wav(path):
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: need 16-bit PCM")
        rate, ch = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    if ch > 1:
        pcm = pcm.reshape(-1, ch).mean(axis=1).astype(np.int16)
    if rate != RATE:
        n = int(round(len(pcm) * RATE / rate))
        x = np.linspace(0, len(pcm) - 1, n)
        pcm = np.interp(x, np.arange(len(pcm)), pcm.astype(np.float64)).astype(np.int16)
    return pcm


async def push(source, samples):
    frame = rtc.AudioFrame.create(RATE, 1, FRAME)
    np.frombuffer(frame.data, dtype=np.int16)[:] = samples
    await source.capture_frame(frame)


async def push_pcm(source, pcm):
    for i in range(0, len(pcm), FRAME):
        chunk = pcm[i : i + FRAME]
        if len(chunk) < FRAME:
            chunk = np.pad(chunk, (0, FRAME - len(chunk)))
        await push(source, chunk)


async def push_silence(source, seconds):
    silence = np.zeros(FRAME, dtype=np.int16)
    for _ in range(int(seconds * 100)):
        await push(source, silence)


async def run(args):
    phrases = [read_wav(p) for p in args.wav]
    pauses = {}
    for spec in args.pause_after:
        index, seconds = spec.split(":")
        pauses[int(index)] = float(seconds)
    room = rtc.Room()
    chunks, envelope = [], []
    heard = asyncio.Event()
    agent_seen = asyncio.Event()
    state = {"reader": None, "agent": None}

    async def read(track, participant):
        stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
        say("recording", from_identity=participant.identity)
        heard.set()
        async for ev in stream:
            pcm = np.frombuffer(ev.frame.data, dtype=np.int16).copy()
            chunks.append(pcm)
            envelope.append([time.time(), float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))])
        await stream.aclose()

    def is_agent(p):
        return p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT

    @room.on("track_subscribed")
    def on_track(track, publication, participant):
        if track.kind != rtc.TrackKind.KIND_AUDIO or not is_agent(participant):
            return
        if state["reader"]:
            if not args.follow_agents:
                return
            # Another agent took the call over (its worker died): hear the new one instead.
            state["reader"].cancel()
        say("subscribed", track_sid=publication.sid, from_identity=participant.identity)
        state["reader"] = asyncio.ensure_future(read(track, participant))

    async def read_transcript(reader, participant_identity):
        text = await reader.read_all()
        attrs = reader.info.attributes or {}
        say("transcript", text=text, from_identity=participant_identity,
            track=attrs.get("lk.transcribed_track_id", ""), final=attrs.get("lk.transcription_final", ""))

    # Transcripts as LiveKit agents publish them (text streams on topic lk.transcription).
    room.register_text_stream_handler(
        "lk.transcription", lambda reader, identity: asyncio.ensure_future(read_transcript(reader, identity)))

    @room.on("participant_connected")
    def on_join(p):
        say("participant_connected", identity=p.identity, kind=int(p.kind))
        if is_agent(p):
            agent_seen.set()

    @room.on("participant_disconnected")
    def on_leave(p):
        say("participant_disconnected", identity=p.identity)

    await room.connect(args.url, args.token)
    say("connected", identity=room.local_participant.identity, room=room.name,
        others=[p.identity for p in room.remote_participants.values()])
    if any(is_agent(p) for p in room.remote_participants.values()):
        agent_seen.set()
    await asyncio.wait_for(agent_seen.wait(), timeout=args.wait_agent)
    say("agent_present")

    source = rtc.AudioSource(RATE, 1, queue_size_ms=100)
    track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    pub = await room.local_participant.publish_track(track, opts)
    say("published", track_sid=pub.sid)
    await push_silence(source, args.lead_in)
    for i, pcm in enumerate(phrases):
        say("phrase_start", index=i, seconds=round(len(pcm) / RATE, 3))
        await push_pcm(source, pcm)
        say("phrase_end", index=i)
        if args.mute_for > 0 and i == 0:
            # Mute the microphone for a while (the SDK tells the server; audio stops).
            track.mute()
            say("muted")
            await push_silence(source, args.mute_for)
            track.unmute()
            say("unmuted")
        await push_silence(source, pauses.get(i, args.pause))
    await push_silence(source, args.tail)
    await source.wait_for_playout()
    say("leaving")
    if not args.vanish:
        await room.disconnect()
    if state["reader"]:
        state["reader"].cancel()
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    with wave.open(args.record, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    with open(args.envelope, "w") as f:
        json.dump(envelope, f)
    say("saved", seconds=round(len(pcm) / RATE, 3), frames=len(envelope))
    if not heard.is_set():
        print("the agent's audio track was never received", file=sys.stderr)
        sys.exit(2)
    if args.vanish:
        # Gone like a dropped network: no leave request, the process just ends.
        sys.stdout.flush()
        os._exit(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--wav", action="append", default=[])
    ap.add_argument("--pause", type=float, default=3.0)
    ap.add_argument("--pause-after", action="append", default=[], metavar="INDEX:SECONDS",
                    help="a different pause after phrase INDEX (0-based)")
    ap.add_argument("--mute-for", type=float, default=0.0, help="mute this long after the first phrase")
    ap.add_argument("--lead-in", type=float, default=1.0)
    ap.add_argument("--tail", type=float, default=3.0)
    ap.add_argument("--wait-agent", type=float, default=20.0)
    ap.add_argument("--vanish", action="store_true",
                    help="at the end drop off without a leave request (a lost connection, not a hang-up)")
    ap.add_argument("--follow-agents", action="store_true",
                    help="when another agent publishes (the call resumed on another worker), record it instead")
    ap.add_argument("--record", required=True)
    ap.add_argument("--envelope", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run(args))
    except Exception as e:  # report, do not hide
        print(f"caller failed: {e!r}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
