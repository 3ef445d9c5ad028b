#!/usr/bin/env python3
"""Subscribe to posed's pose stream and print each object's pose.

A minimal client of protocol version 1 (newline-delimited JSON; see README "The pose
stream"), standard library only:

    python3 tools/watch_poses.py --socket /run/posed/poses.sock [--count N] [--binary]
                                 [--follow]

With --follow it waits for posed when it is not there yet and reconnects when posed stops
or restarts (systemd restarts it after a crash), as a robot's consumer should.

With --binary it asks for the binary encoding and decodes it with `struct`, from the
layout in docs/pose-stream-binary.md alone.

Each poses message gives, per object, R (row-major 3x3, camera_from_object) and t_m
(metres, camera frame); a point p of the model (metres) is at R @ p + t_m in the camera.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import struct
import sys
import time

# docs/pose-stream-binary.md, layout version 1.
BINARY_REQUEST = b'{"encoding":"binary","version":1}\n'
KIND_POSES, KIND_ERROR = 1, 2
STAGES = ("capture", "queue", "detect", "init", "crop", "render", "coarse", "refiner",
          "update", "publish", "total")


def decode_binary(message: bytes) -> dict:
    """One binary message (length prefix included) as the dict the JSON encoding gives."""
    kind, version = struct.unpack_from("<HH", message, 4)
    if version != 1:
        raise ValueError(f"binary layout version {version}, this client knows 1")
    if kind == KIND_ERROR:
        return {"type": "error", "reason": message[8:].decode("utf-8", "replace")}
    if kind != KIND_POSES:
        return {"type": f"unknown kind {kind}"}
    frame, t_capture, t_publish, t_capture_wall, t_publish_wall = struct.unpack_from(
        "<5Q", message, 8)
    latencies = struct.unpack_from("<11Q", message, 48)
    pipeline_dropped, dropped = struct.unpack_from("<2Q", message, 136)
    header_bytes, object_bytes, count = struct.unpack_from("<3H", message, 152)
    objects = []
    for i in range(count):
        at = header_bytes + i * object_bytes
        (obj_id,) = struct.unpack_from("<I", message, at)
        (score,) = struct.unpack_from("<d", message, at + 8)
        rotation = list(struct.unpack_from("<9d", message, at + 16))
        t_m = list(struct.unpack_from("<3d", message, at + 88))
        bbox = list(struct.unpack_from("<4d", message, at + 112))
        objects.append({"label": f"obj_{obj_id:06d}", "obj_id": obj_id, "score": score,
                        "R": rotation, "t_m": t_m, "bbox": bbox})
    return {"type": "poses", "frame": frame, "t_capture_ns": t_capture,
            "t_publish_ns": t_publish, "t_capture_wall_ns": t_capture_wall,
            "t_publish_wall_ns": t_publish_wall, "latency_ns": dict(zip(STAGES, latencies)),
            "pipeline_dropped": pipeline_dropped, "objects": objects, "dropped": dropped}


def messages(stream):
    """The server's messages as (dict, encoding): JSON lines, and after the switch line
    (`{"type":"encoding",...}`), binary messages."""
    switched = False
    while True:
        if not switched:
            line = stream.readline()
            if not line.endswith(b"\n"):
                return  # the end of the stream, or a line cut short by a posed killed
            message = json.loads(line)
            if message.get("type") == "encoding":
                switched = True
                continue
            yield message, "ndjson"
        else:
            prefix = stream.read(4)
            if len(prefix) < 4:
                return
            (length,) = struct.unpack("<I", prefix)
            body = stream.read(length)
            if len(body) < length:
                return
            yield decode_binary(prefix + body), "binary"


def watch(args, frames: int) -> tuple[int, str | None, bool]:
    """One connection: prints what comes until the count is reached or the stream ends.
    Returns the frame count so far, why the connection ended (None: the count), and
    whether posed said hello."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(args.socket)
    except OSError as error:
        client.close()
        return frames, f"cannot connect to {args.socket}: {error}; is posed running?", False
    greeted = False
    with client, client.makefile("rb") as stream:
        try:
            if args.binary:
                client.sendall(BINARY_REQUEST)
            for message, encoding in messages(stream):
                kind = message.get("type")
                if kind == "hello":
                    greeted = True
                    if message.get("version") != 1:
                        sys.exit(f"unknown protocol version {message.get('version')}")
                    camera = message["camera"]
                    print(f"hello: {message['source']}, {camera['width']}x{camera['height']}, "
                          f"{len(message['labels'])} labels"
                          + (", binary requested" if args.binary else ""), flush=True)
                elif kind == "poses":
                    frames += 1
                    latency_ms = message["latency_ns"]["total"] / 1e6
                    print(f"frame {message['frame']} ({encoding}): "
                          f"{len(message['objects'])} objects, {latency_ms:.1f} ms, "
                          f"dropped {message['dropped']}")
                    for obj in message["objects"]:
                        x, y, z = obj["t_m"]
                        # A score that is not a number is null in JSON, NaN in binary.
                        score = obj["score"]
                        score = "none" if score is None or math.isnan(score) else f"{score:.3f}"
                        print(f"  {obj['label']} score {score} "
                              f"t = ({x:+.3f}, {y:+.3f}, {z:+.3f}) m")
                    sys.stdout.flush()
                    if args.count is not None and frames >= args.count:
                        return frames, None, greeted
                elif kind == "error":
                    return frames, f"posed refused: {message.get('reason')}", greeted
        except OSError as error:
            return frames, f"connection lost: {error}", greeted
    return frames, "posed closed the stream", greeted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="/run/posed/poses.sock")
    parser.add_argument("--count", type=int, default=None, help="stop after N frames")
    parser.add_argument("--binary", action="store_true", help="use the binary encoding")
    parser.add_argument("--follow", action="store_true",
                        help="wait for posed, and reconnect when it stops or restarts")
    args = parser.parse_args()

    frames, attempt, last_reason = 0, 0, None
    while True:
        frames, reason, greeted = watch(args, frames)
        if reason is None:
            return 0
        if not args.follow:
            print(reason, file=sys.stderr)
            return 0 if args.count is None and reason == "posed closed the stream" else 1
        if greeted:
            # A new outage: start the backoff again, and say it even for the same reason.
            attempt, last_reason = 0, None
        if reason != last_reason:
            print(f"{reason}; trying again", file=sys.stderr, flush=True)
            last_reason = reason
        # 0.1 s, doubling to 2 s while posed stays away.
        time.sleep(min(0.1 * 2 ** attempt, 2.0))
        attempt = min(attempt + 1, 5)


if __name__ == "__main__":
    sys.exit(main())
