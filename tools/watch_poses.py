#!/usr/bin/env python3
"""Subscribe to posed's pose stream and print each object's pose.

A minimal client of protocol version 1 (newline-delimited JSON; see README "The pose
stream"), standard library only:

    python3 tools/watch_poses.py --socket /run/posed/poses.sock [--count N]

Each poses message gives, per object, R (row-major 3x3, camera_from_object) and t_m
(metres, camera frame); a point p of the model (metres) is at R @ p + t_m in the camera.
"""

import argparse
import json
import socket
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="/run/posed/poses.sock")
    parser.add_argument("--count", type=int, default=None, help="stop after N frames")
    args = parser.parse_args()

    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(args.socket)
    except OSError as error:
        print(f"cannot connect to {args.socket}: {error}; is posed running?", file=sys.stderr)
        return 1
    frames = 0
    with client, client.makefile("r", encoding="utf-8") as lines:
        for line in lines:
            message = json.loads(line)
            kind = message.get("type")
            if kind == "hello":
                if message.get("version") != 1:
                    print(f"unknown protocol version {message.get('version')}", file=sys.stderr)
                    return 1
                camera = message["camera"]
                print(f"hello: {message['source']}, {camera['width']}x{camera['height']}, "
                      f"{len(message['labels'])} labels")
            elif kind == "poses":
                frames += 1
                latency_ms = message["latency_ns"]["total"] / 1e6
                print(f"frame {message['frame']}: {len(message['objects'])} objects, "
                      f"{latency_ms:.1f} ms, dropped {message['dropped']}")
                for obj in message["objects"]:
                    x, y, z = obj["t_m"]
                    print(f"  {obj['label']} score {obj['score']:.3f} "
                          f"t = ({x:+.3f}, {y:+.3f}, {z:+.3f}) m")
                if args.count is not None and frames >= args.count:
                    break
            elif kind == "error":
                print(f"posed refused: {message.get('reason')}", file=sys.stderr)
                return 1
    return 0 if args.count is None or frames >= args.count else 1


if __name__ == "__main__":
    sys.exit(main())
