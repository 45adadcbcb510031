"""How fast `torchls serve` answers `initialize`, and its memory before any worker starts.

    python bench/initialize.py [--runs 10]

Prints, as medians of N fresh server processes:
  spawn -> initialize answered     what an editor waits for after starting the server
  initialize round trip (warm)     the same request sent once the process has finished importing
  python + `import lsprotocol.types` alone, the floor every pygls server pays
  server RSS after initialize      before any worker starts (the worker starts on `initialized`)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _frame(message: dict[str, object]) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _read_message(stream: object) -> dict[str, object]:
    length = 0
    while True:
        line = stream.readline()  # type: ignore[attr-defined]
        if not line:
            raise RuntimeError("server closed its stdout")
        if line in (b"\r\n", b"\n"):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return json.loads(stream.read(length))  # type: ignore[attr-defined]


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "processId": os.getpid(),
        "rootUri": (ROOT / "examples").as_uri(),
        "capabilities": {},
    },
}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one_run(warm_wait: float | None) -> tuple[float, float]:
    """(seconds until the initialize answer, server RSS in MB right after it)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "server"))
    # As on a user's machine, let Python cache bytecode (this sandbox sets the variable, which
    # would recompile torchls's modules at every start).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "torchls", "serve", "--stdio"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        if warm_wait:
            time.sleep(warm_wait)
            started = time.perf_counter()
        server.stdin.write(_frame(INITIALIZE))
        server.stdin.flush()
        while True:
            message = _read_message(server.stdout)
            if message.get("id") == 1:
                break
        elapsed = time.perf_counter() - started
        assert message["result"]["serverInfo"]["name"] == "torchls"  # type: ignore[index]
        rss = _rss_mb(server.pid)
        server.stdin.write(_frame({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}))
        server.stdin.write(_frame({"jsonrpc": "2.0", "method": "exit"}))
        server.stdin.flush()
        server.wait(10)
        return elapsed, rss
    finally:
        if server.poll() is None:
            server.kill()


def import_floor() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import lsprotocol.types"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    cold = [one_run(None) for _ in range(args.runs)]
    warm = [one_run(3.0) for _ in range(args.runs)]
    floor = [import_floor() for _ in range(args.runs)]
    spawn_to_answer = statistics.median(t for t, _ in cold)
    round_trip = statistics.median(t for t, _ in warm)
    rss = statistics.median(r for _, r in cold)
    print(f"runs: {args.runs} (medians)")
    print(f"spawn -> initialize answered: {spawn_to_answer * 1000:7.1f} ms")
    print(f"initialize round trip (warm): {round_trip * 1000:7.1f} ms")
    print(f"python + import lsprotocol:   {statistics.median(floor) * 1000:7.1f} ms  (floor)")
    print(f"server RSS before any worker: {rss:7.1f} MB")


if __name__ == "__main__":
    main()
