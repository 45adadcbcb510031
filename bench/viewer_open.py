"""Opening a large checkpoint in the viewer: the time of the language server's first answer to
`torchls/inspect`, and the server process's peak memory.

    python bench/viewer_open.py [--dir /tmp/torchls-bench] [--gib 4] [--tensors 4096]

Writes (once; reused) a checkpoint of --gib GiB in --tensors float32 tensors with torch.save,
through a writer that leaves runs of zero bytes as holes, so the file is sparse on disk and
quick to make; then starts `torchls serve --stdio` and asks, as the VS Code client does:
  first     torchls/inspect on the file right after the server starts (the worker is importing
            torch meanwhile, on the same cores; the reader process parses the file)
  settled   the same file under another name (a hard link: nothing cached), once the worker is up
  again     the same request (answered from the stat-stamp cache)
  50k       a 50,000-tensor file (the viewer's table stress case), first answer, and the CPU
            time it took in the server and in its reader process (wall time depends on what
            else the machine runs; CPU time much less)
The server's peak resident set (VmHWM, its own process: the reader is a child of its own) is read
from /proc after the requests. Targets (issue 17): first answer < 1 s, server < 100 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

WRITER = r"""
import sys, torch

class Sparse:
    # torch.save writes the zip archive through write(); zero runs become holes.
    def __init__(self, path):
        self.file = open(path, "wb")
        self.position = 0
    def write(self, data):
        view = memoryview(data).cast("B")
        size = len(view)
        if size >= 4096 and not any(view[:: 4096]) and bytes(view).count(0) == size:
            self.file.seek(size, 1)
        else:
            self.file.write(view)
        self.position += size
        return size
    def flush(self):
        self.file.flush()
    def close(self):
        self.file.truncate(self.position)
        self.file.close()

path, count, elements = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
state = {f"blocks.{i // 8}.layer{i % 8}.weight": torch.zeros(elements) for i in range(count)}
sink = Sparse(path)
torch.save(state, sink)
sink.close()
"""


def make(path: Path, count: int, elements: int) -> Path:
    if path.exists():
        return path
    tmp = Path(str(path) + ".tmp")
    subprocess.run([sys.executable, "-c", WRITER, str(tmp), str(count), str(elements)], check=True)
    tmp.rename(path)
    return path


class Server:
    """`torchls serve --stdio`, driven with raw JSON-RPC as an editor would."""

    def __init__(self, workspace: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "server"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torchls", "serve", "--stdio", "--log-level", "WARNING"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.next_id = 0
        self.request(
            "initialize",
            {
                "processId": os.getpid(),
                "rootUri": workspace.as_uri(),
                "capabilities": {},
                "initializationOptions": {"trusted": False},
            },
        )
        self.notify("initialized", {})

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def _receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        length = 0
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the server ended")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        message: dict[str, Any] = json.loads(self.proc.stdout.read(length))
        return message

    def notify(self, method: str, params: Any) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method: str, params: Any) -> Any:
        self.next_id += 1
        wanted = self.next_id
        self._send({"jsonrpc": "2.0", "id": wanted, "method": method, "params": params})
        while True:
            message = self._receive()
            if message.get("id") == wanted and "method" not in message:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result")
            if "method" in message and "id" in message:  # a request from the server
                self._send({"jsonrpc": "2.0", "id": message["id"], "result": None})

    def wait_until_settled(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.request(
                "workspace/executeCommand", {"command": "torchls.status", "arguments": []}
            )
            if status["state"] not in ("starting", "restarting"):
                return
            time.sleep(0.2)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time of the server itself and of its finished children (the reader processes):
        what a request costs, whatever else the machine is running."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        ticks = os.sysconf("SC_CLK_TCK")
        utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
        return (utime + stime) / ticks, (cutime + cstime) / ticks

    def stop(self) -> None:
        self.request("shutdown", None)
        self.notify("exit", None)
        self.proc.wait(timeout=30)


def timed_inspect(server: Server, path: Path) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    answer: dict[str, Any] = server.request("torchls/inspect", {"uri": path.as_uri()})
    elapsed = time.perf_counter() - started
    if "error" in answer:
        raise RuntimeError(answer["error"])
    return elapsed, answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/torchls-bench", help="where the files are made")
    parser.add_argument("--gib", type=float, default=4.0, help="size of the large checkpoint")
    parser.add_argument("--tensors", type=int, default=4096, help="its tensor count")
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    elements = int(args.gib * 2**30) // 4 // args.tensors
    large = make(folder / f"viewer-{args.gib:g}gib-{args.tensors}.pt", args.tensors, elements)
    many = make(folder / "viewer-50000.pt", 50_000, 16)
    on_disk = large.stat().st_blocks * 512
    print(
        f"{large.name}: {large.stat().st_size / 2**30:.2f} GiB, {args.tensors:,} tensors "
        f"({on_disk / 2**20:.0f} MiB allocated on disk)"
    )
    alias = folder / f"alias-{large.name}"
    if not alias.exists():
        os.link(large, alias)
    server = Server(folder)
    try:
        first, answer = timed_inspect(server, large)
        server.wait_until_settled()
        settled, _ = timed_inspect(server, alias)
        again, cached = timed_inspect(server, large)
        peak_large = server.peak_rss_mb()
        assert answer["report"]["totals"]["tensors"] == args.tensors and cached["cached"]
        cpu_before = server.cpu_seconds()
        fifty, _ = timed_inspect(server, many)
        cpu_after = server.cpu_seconds()
        peak_all = server.peak_rss_mb()
    finally:
        server.stop()
    print(f"first torchls/inspect answer   {first * 1000:8.0f} ms   (target < 1000 ms)")
    print(f"first answer, worker settled   {settled * 1000:8.0f} ms")
    print(f"again (stat-stamp cache)       {again * 1000:8.0f} ms")
    print(f"server peak RSS                {peak_large:8.1f} MB   (target < 100 MB)")
    print(f"50,000-tensor file, first      {fifty * 1000:8.0f} ms")
    print(
        f"  its CPU: server {(cpu_after[0] - cpu_before[0]) * 1000:6.0f} ms, "
        f"reader process {(cpu_after[1] - cpu_before[1]) * 1000:6.0f} ms"
    )
    print(f"server peak RSS after it       {peak_all:8.1f} MB")
    return 0 if first < 1.0 and peak_large < 100 else 1


if __name__ == "__main__":
    raise SystemExit(main())
