"""Shapes and costs in the code (issue 19): what inlay hints and CodeLens cost per request on a
2,000-line file once its profiles are cached, and what the shape tracer adds to a profile.

    python bench/inline_costs.py [--lines 2000] [--requests 50] [--runs 3] [--skip-tracer]

1. Requests. A scratch workspace holds one file of --lines lines: model classes (each with a
   `# torchls: input=` comment and a forward of several lines that bind tensors) between
   training helpers. The real server runs over stdio; after didOpen every CodeLens is resolved
   (which waits for each model's profile), then --requests times each of:
     inlayHint, whole file      what a client asks when it wants every hint
     inlayHint, 60 lines        what VS Code asks for the visible part of the editor
     codeLens                   the lenses of the file
     codeLens/resolve           one lens's title, profile cached
   Median, 95th percentile and worst, in ms. Target: under 20 ms per request.
2. Tracer. The worker's `profile` job with the shape tracer on and off (job parameter
   `trace_shapes`), alternating, --runs times each, on ResNet-50 (the visionlib fixture copied
   INTO the workspace, so that all of its forward code is traced) at (1, 3, 224, 224) and on a
   GPT-2-size decoder (12 layers, 768 wide, 12 heads, vocabulary 50,257, context 1,024)
   written as a workspace file, at (1, 1024):long. Median job time (build + count + thop;
   the training measure off in both) and the tracer's share. Target: at most 30%.
Ends with one JSON line.
"""

# ruff: noqa: E402 (the path is set before the imports)
from __future__ import annotations

import os
import sys
from pathlib import Path  # none of these three imports `inspect`

# bench/ holds inspect.py (a benchmark): the standard library's inspect must win, so this folder
# goes last on the path, not first where Python put it
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _HERE]
import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from typing import Any

sys.path.append(_HERE)
from diagnostics import Client, _is_ready

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "profiling" / "fixtures"

MODEL_BLOCK = """\
# torchls: input=(2, 3, 32, 32)
class Net{i}(nn.Module):
    def __init__(self, width={width}, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.body = nn.Sequential(
            nn.Conv2d(width, width * 2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width * 2, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.norm(x))
        features = self.body(x)
        pooled = self.pool(features)
        flat = torch.flatten(pooled, 1)
        logits = self.head(flat)
        return logits


"""

HELPER_BLOCK = """\
def train_{i}(model, loader, epochs=2):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for epoch in range(epochs):
        total = 0.0
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs), targets)
            loss.backward()
            optimizer.step()
            total += loss.item()
        print(epoch, total)
    return model


"""

GPT_FILE = """\
import math

import torch
from torch import nn
from torch.nn import functional as F


class SelfAttention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q = q.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
        k = k.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
        v = v.view(batch, length, self.heads, width // self.heads).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        mask = torch.ones(length, length, device=x.device, dtype=torch.bool).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
        attended = F.softmax(scores, dim=-1) @ v
        merged = attended.transpose(1, 2).contiguous().view(batch, length, width)
        return self.proj(merged)


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


# torchls: input=(1, 1024):long
class GPT(nn.Module):
    def __init__(self, vocab=50257, context=1024, width=768, depth=12, heads=12):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        positions = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return self.lm_head(x)
"""

# The fixture's ResNet-50 behind a thin class, which the file's scan lists as a model
RESNET_FILE = """\
from torch import nn

from visionlib.models import resnet50


# torchls: input=(1, 3, 224, 224)
class ResNet50(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = resnet50()

    def forward(self, x):
        return self.net(x)
"""


def make_file(lines: int) -> tuple[str, int]:
    parts = ["import torch\nfrom torch import nn\n\n\n"]
    models = 0
    while sum(part.count("\n") for part in parts) < lines:
        if models % 2 == 0 or models < 20:
            parts.append(MODEL_BLOCK.format(i=models, width=8 + models % 8))
        parts.append(HELPER_BLOCK.format(i=models))
        models += 1
    text = "".join(parts)
    kept = "\n".join(text.splitlines()[:lines]) + "\n"
    # a cut inside a class would leave a broken last block: cut at the last complete block
    cut = kept.rfind("\n\n\n")
    return kept[: cut + 1], kept[: cut + 1].count("class Net")


def _stats(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[max(0, int(len(ordered) * 0.95) - 1)] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def _timed(client: Client, method: str, params: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = client.request(method, params)
    return time.perf_counter() - started, result


def bench_requests(lines: int, requests: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        workspace = Path(folder)
        text, models = make_file(lines)
        path = workspace / "models.py"
        path.write_text(text)
        uri = path.as_uri()
        client = Client(workspace, None)
        try:
            client.wait_for(_is_ready)
            client.notify(
                "textDocument/didOpen",
                {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}},
            )
            document = {"textDocument": {"uri": uri}}
            lenses = client.request("textDocument/codeLens", document) or []
            started = time.perf_counter()
            titles = [
                client.request("codeLens/resolve", lens)["command"]["title"] for lens in lenses
            ]
            warmed = time.perf_counter() - started
            failed = [title for title in titles if "MACs" not in title]
            if failed:
                raise RuntimeError(f"lenses without a count: {failed[:3]}")
            whole = {
                **document,
                "range": {
                    "start": {"line": 0, "character": 0},
                    "end": {"line": text.count("\n") + 1, "character": 0},
                },
            }
            middle = text.count("\n") // 2
            visible = {
                **document,
                "range": {
                    "start": {"line": middle, "character": 0},
                    "end": {"line": middle + 60, "character": 0},
                },
            }
            hints = client.request("textDocument/inlayHint", whole) or []
            if len(hints) < models * 5:
                raise RuntimeError(f"{len(hints)} hints for {models} models: the cache is cold")
            timings: dict[str, list[float]] = {
                "inlayHint, whole file": [],
                "inlayHint, 60 lines": [],
                "codeLens": [],
                "codeLens/resolve": [],
            }
            for run in range(requests):
                timings["inlayHint, whole file"].append(
                    _timed(client, "textDocument/inlayHint", whole)[0]
                )
                timings["inlayHint, 60 lines"].append(
                    _timed(client, "textDocument/inlayHint", visible)[0]
                )
                elapsed, fresh = _timed(client, "textDocument/codeLens", document)
                timings["codeLens"].append(elapsed)
                lens = fresh[run % len(fresh)]
                timings["codeLens/resolve"].append(_timed(client, "codeLens/resolve", lens)[0])
        finally:
            client.close()
    return {
        "lines": text.count("\n"),
        "models": models,
        "lenses": len(lenses),
        "hints": len(hints),
        "profiles_seconds": warmed,
        "requests": {name: _stats(values) for name, values in timings.items()},
    }


def bench_tracer(runs: int) -> dict[str, Any]:
    # the worker and the source model, as the tests drive them
    sys.path.insert(0, str(ROOT / "server"))
    from torchls.cost.request import prepare
    from torchls.source.models import FileModels
    from torchls.source.project import Project
    from torchls.worker.client import WorkerClient, WorkerSettings

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        workspace = Path(folder)
        shutil.copytree(FIXTURES / "visionlib", workspace / "visionlib")
        (workspace / "resnet.py").write_text(RESNET_FILE)
        (workspace / "gpt.py").write_text(GPT_FILE)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "server"))
        worker = WorkerClient(
            WorkerSettings(
                command=(sys.executable,),
                workspace=str(workspace),
                allow_user_code=True,
                timeout_seconds=600,
                memory_limit_mb=0,
                env=env,
            )
        )
        loop = asyncio.new_event_loop()
        try:
            for name, file, target_name in (
                ("ResNet-50 (1, 3, 224, 224)", "resnet.py", "ResNet50"),
                ("GPT-2 size (1, 1024):long", "gpt.py", "GPT"),
            ):
                project = Project(str(workspace))
                module = project.module_file(str(workspace / file))
                assert module is not None
                models = FileModels(project, module)
                target = next(t for t in models.first_targets(50) if t.name == target_name)
                params = prepare(target, project, str(workspace / file)).params
                times: dict[bool, list[float]] = {True: [], False: []}
                hints = 0
                loop.run_until_complete(worker.run("profile", {**params, "thop": False}))
                for run in range(runs):
                    # each order as often: a run may warm what the next one uses
                    for traced in (False, True) if run % 2 == 0 else (True, False):
                        # the training measure (more forwards) is off in both
                        job = {**params, "trace_shapes": traced, "training": False}
                        started = time.perf_counter()
                        result = loop.run_until_complete(worker.run("profile", job))
                        times[traced].append(time.perf_counter() - started)
                        if not result.ok:
                            raise RuntimeError(f"{name}: {result.message}")
                        if traced:
                            hints = sum(len(f["hints"]) for f in result.value.get("shapes") or [])
                plain = statistics.median(times[False])
                traced_time = statistics.median(times[True])
                results[name] = {
                    "untraced_s": plain,
                    "traced_s": traced_time,
                    "overhead": traced_time / plain - 1,
                    "hints": hints,
                    "macs": result.value["macs"],
                }
        finally:
            loop.run_until_complete(worker.stop())
            loop.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-tracer", action="store_true")
    args = parser.parse_args()

    requests = bench_requests(args.lines, args.requests)
    print(
        f"{requests['lines']:,}-line file, {requests['models']} models, {requests['lenses']} "
        f"lenses, {requests['hints']} hints; profiling them all took "
        f"{requests['profiles_seconds']:.1f} s; then {args.requests} requests each:"
    )
    for name, numbers in requests["requests"].items():
        print(
            f"  {name:24} median {numbers['median_ms']:6.2f} ms   p95 {numbers['p95_ms']:6.2f} ms"
            f"   worst {numbers['max_ms']:6.2f} ms   (target < 20)"
        )
    tracer: dict[str, Any] = {}
    if not args.skip_tracer:
        tracer = bench_tracer(args.runs)
        print(f"Shape tracer: the profile job with and without it, medians of {args.runs}")
        for name, numbers in tracer.items():
            print(
                f"  {name:28} without {numbers['untraced_s']:6.2f} s   with "
                f"{numbers['traced_s']:6.2f} s   {numbers['overhead'] * 100:+5.1f}%   "
                f"({numbers['hints']} hints; target at most +30%)"
            )
    print(json.dumps({"requests": requests, "tracer": tracer}))


if __name__ == "__main__":
    main()
