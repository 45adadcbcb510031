"""Hover latency on a ResNet-50-sized model, against counting it the way the seed does (thop).

    python bench/hover.py [--runs 10]

Runs the real server over stdio on a scratch workspace whose model file builds a ResNet-50
(`tests/profiling/fixtures/visionlib`, standing in for torchvision) for input (4, 3, 256, 128),
the shape of the seed notes:

  cold worker, first hover        server just started: the worker imports torch, then counts
  warm worker, first hover        torch imported, nothing cached: each run edits the call's
                                  arguments so that the cache cannot answer (median of N)
  warm cache                      the same hover again (median of N)
  seed's way                      build ResNet-50 on the CPU and run thop.profile on real
                                  tensors (median of 3), as a ratio to the warm-worker hover
  Llama-7B from a local config    `torchls profile` (a fresh worker): wall time, worker peak RSS
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "profiling" / "fixtures"
MODEL_FILE = """\
from visionlib.models import resnet50

model = resnet50(num_classes={classes})  # torchls: input=(4, 3, 256, 128)
"""


class Client:
    """Just enough of an LSP client: requests, notifications, and the server's notifications."""

    def __init__(self, workspace: Path) -> None:
        env = dict(os.environ, PYTHONPATH=f"{ROOT / 'server'}:{FIXTURES}")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "torchls", "serve", "--stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.next_id = 0
        self.notifications: list[dict[str, Any]] = []
        self.request(
            "initialize",
            {"processId": os.getpid(), "rootUri": workspace.as_uri(), "capabilities": {}},
        )
        self.notify("initialized", {})

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode()
        assert self.server.stdin is not None
        self.server.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.server.stdin.flush()

    def _read(self) -> dict[str, Any]:
        stream = self.server.stdout
        assert stream is not None
        length = 0
        while True:
            line = stream.readline()
            if not line:
                raise RuntimeError("the server closed its stdout")
            if line in (b"\r\n", b"\n"):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        message: dict[str, Any] = json.loads(stream.read(length))
        return message

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method: str, params: dict[str, Any]) -> Any:
        self.next_id += 1
        self._send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        while True:
            message = self._read()
            if message.get("id") == self.next_id and "method" not in message:
                if "error" in message:
                    raise RuntimeError(message["error"])
                return message.get("result")
            if "method" in message:
                self.notifications.append(message)

    def close(self) -> None:
        self.request("shutdown", {})
        self.notify("exit", {})
        self.server.wait(10)


def hover(client: Client, uri: str, text: str) -> tuple[float, str]:
    line = text.splitlines().index(next(x for x in text.splitlines() if "resnet50(" in x))
    column = text.splitlines()[line].index("resnet50(") + 2
    started = time.perf_counter()
    result = client.request(
        "textDocument/hover",
        {"textDocument": {"uri": uri}, "position": {"line": line, "character": column}},
    )
    elapsed = time.perf_counter() - started
    value = str(result["contents"]["value"]) if result else ""
    if "Parameters" not in value or "earlier version" in value:
        raise RuntimeError(f"unexpected hover: {value[:300]}")
    return elapsed, value


def bench_hover(runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        workspace = Path(folder)
        path = workspace / "nets.py"
        text = MODEL_FILE.format(classes=1000)
        path.write_text(text)
        uri = path.as_uri()
        client = Client(workspace)
        try:
            # didOpen would warm the cache; the cold hover comes first, with no didOpen at all
            cold, value = hover(client, uri, text)
            assert "25,557,032" in value, value[:400]
            client.notify(
                "textDocument/didOpen",
                {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}},
            )
            time.sleep(3)  # let the warm-up of the opened file finish
            first: list[float] = []
            for run in range(runs):
                edited = MODEL_FILE.format(classes=10 + run)
                client.notify(
                    "textDocument/didChange",
                    {
                        "textDocument": {"uri": uri, "version": run + 2},
                        "contentChanges": [{"text": edited}],
                    },
                )
                first.append(hover(client, uri, edited)[0])
            cached = [hover(client, uri, edited)[0] for _ in range(runs)]
        finally:
            client.close()
    return {
        "cold": cold,
        "first": statistics.median(first),
        "cached": statistics.median(cached),
    }


SEED = """
import sys, time, torch, thop
sys.path.insert(0, {fixtures!r})
from visionlib.models import resnet50
started = time.perf_counter()
model = resnet50()
macs, params = thop.profile(model, inputs=(torch.randn(4, 3, 256, 128),), verbose=False)
print(time.perf_counter() - started, macs)
"""


def bench_seed(runs: int) -> tuple[float, float]:
    """thop on real tensors, timed inside the process after `import torch` (fair to thop)."""
    times, macs = [], 0.0
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", SEED.format(fixtures=str(FIXTURES))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        times.append(float(out[0]))
        macs = float(out[1])
    return statistics.median(times), macs


LLAMA_FILE = """\
from transformers import AutoConfig, AutoModelForCausalLM


def llama():
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained({config!r}))
"""


def bench_llama() -> dict[str, float]:
    """`torchls profile` on a function that builds the model: a fresh worker, wall time."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "llama.py"
        path.write_text(LLAMA_FILE.format(config=str(FIXTURES / "hf" / "llama-7b")))
        env = dict(os.environ, PYTHONPATH=str(ROOT / "server"))
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "torchls", "profile", f"{path}::llama", "--json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=folder,
        )
        elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    result = json.loads(done.stdout)["result"]
    return {
        "seconds": elapsed,
        "peak_mb": result["worker_peak_mb"],
        "params": result["parameters"]["total"],
        "macs": result["macs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    hover_times = bench_hover(args.runs)
    seed, seed_macs = bench_seed(3)
    llama = bench_llama()
    print(f"ResNet-50 at (4, 3, 256, 128), the seed notes' shape; medians of {args.runs}")
    print(f"  cold worker, first hover:   {hover_times['cold'] * 1000:8.0f} ms")
    print(f"  warm worker, first hover:   {hover_times['first'] * 1000:8.0f} ms   (target < 1000)")
    print(f"  warm cache:                 {hover_times['cached'] * 1000:8.1f} ms   (target < 50)")
    print(f"  seed's way (thop on CPU):   {seed * 1000:8.0f} ms   ({seed_macs / 1e9:.3f} G MACs)")
    print(f"  speed-up vs seed's way:     {seed / hover_times['first']:8.1f}x (warm worker)")
    print(f"  speed-up vs seed's way:     {seed / hover_times['cached']:8.0f}x (warm cache)")
    print("Llama-2-7B-style LlamaForCausalLM from a local config.json: `torchls profile`")
    print(f"  parameters {llama['params']:,}, {llama['macs'] / 1e12:.2f} T MACs at (1, 128)")
    print(f"  wall time:                  {llama['seconds']:8.1f} s    (target < 10)")
    print(f"  worker peak RSS:            {llama['peak_mb']:8.0f} MB   (target < 1536)")


if __name__ == "__main__":
    main()
