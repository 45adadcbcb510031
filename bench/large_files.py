"""Code actions and memory on very large files: a 50,000-line torch script, a 2 MB line, and a
file just under torchls's size limit.

    python bench/large_files.py [--lines 50000] [--requests 20] [--keystrokes 10]
                                [--max-file-kb KB]

Writes a scratch workspace with three files and drives the real server over stdio (the client
of bench/diagnostics.py):

  limit.py  the same code as big.py, cut to just under the size limit (torchls.maxFileSizeKB,
            default 512 KB): the largest file torchls analyses
  big.py    --lines lines of PyTorch code: model classes, training functions with loops,
            optimizers and load_state_dict calls, repeated with different names (what a file
            of generated experiments or a concatenated notebook looks like)
  line.py   one 2 MB line (a literal list), the shape of a minified or generated file

For each file: didOpen, then `textDocument/codeAction` at --requests cursor positions spread
over the file (what an editor sends on every cursor move), then --keystrokes incremental
didChange edits (a character typed), each followed at once by a code-action request at the
cursor, as an editor sends them; then one request 0.5 s after the last keystroke, when the
debounced re-check of the file has started (a request that has to wait for it). Prints the
median and the worst latency, whether the file was analysed (diagnostics other than the
size-limit note), and the server's resident memory after all that and its peak (VmRSS / VmHWM
from /proc). Targets (issue 14): code actions under 100 ms, the server under 200 MB.
`--max-file-kb` sets the limit (the server's default is 512): with 4096, big.py and line.py are
analysed too, which shows what the limit protects against. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diagnostics import Client, _is_ready

BLOCK = """\
class Net{i}(nn.Module):
    def __init__(self, width={w}):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))

    def forward(self, x):
        return self.body(x)


def train_{i}(loader, epochs=3):
    model = Net{i}()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
    model.load_state_dict(torch.load("net{i}.pt"))
    return model


"""
# What matters of VS Code's capabilities here: code actions are resolved lazily.
VSCODE_CAPABILITIES = {
    "textDocument": {
        "codeAction": {
            "codeActionLiteralSupport": {
                "codeActionKind": {
                    "valueSet": ["", "quickfix", "refactor", "refactor.rewrite", "source"]
                }
            },
            "resolveSupport": {"properties": ["edit"]},
            "dataSupport": True,
        },
        "synchronization": {"didSave": True},
    }
}
HEADER = "import torch\nfrom torch import nn\n\n\n"
DEFAULT_LIMIT_KB = 512  # torchls.config.InitOptions.max_file_size_kb


def make_files(folder: Path, lines: int, limit_kb: int) -> list[Path]:
    per_block = BLOCK.count("\n")
    blocks = [BLOCK.format(i=i, w=16 + i % 64) for i in range(max(1, lines // per_block))]
    big = folder / "big.py"
    big.write_text(HEADER + "".join(blocks))
    at_limit = folder / "limit.py"
    text = HEADER
    for block in blocks:
        if len(text) + len(block) > limit_kb * 1024 - 1024:
            break
        text += block
    at_limit.write_text(text)
    line = folder / "line.py"
    items = ", ".join(str(i % 1000) for i in range(2 * 1024 * 1024 // 5))
    line.write_text(f"import torch\nVALUES = [{items}]\n")
    return [at_limit, big, line]


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = row.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def code_actions(client: Client, uri: str, line: int, character: int) -> float:
    began = time.perf_counter()
    client.request(
        "textDocument/codeAction",
        {
            "textDocument": {"uri": uri},
            "range": {
                "start": {"line": line, "character": character},
                "end": {"line": line, "character": character},
            },
            "context": {"diagnostics": []},
        },
    )
    return time.perf_counter() - began


def bench_file(client: Client, path: Path, requests: int, keystrokes: int) -> dict[str, Any]:
    text = path.read_text()
    rows = text.split("\n")
    uri = path.as_uri()
    began = time.perf_counter()
    client.notify(
        "textDocument/didOpen",
        {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}},
    )
    positions = [(n * (len(rows) - 1) // max(1, requests - 1), 0) for n in range(requests)]
    first = code_actions(client, uri, *positions[0])
    open_to_first = time.perf_counter() - began
    listed = [code_actions(client, uri, line, col) for line, col in positions]
    typed = []
    line = len(rows) // 2
    for n in range(keystrokes):
        client.notify(
            "textDocument/didChange",
            {
                "textDocument": {"uri": uri, "version": 2 + n},
                "contentChanges": [
                    {
                        "range": {
                            "start": {"line": line, "character": 0},
                            "end": {"line": line, "character": 0},
                        },
                        "text": "#",
                    }
                ],
            },
        )
        typed.append(code_actions(client, uri, line, n + 1))
    time.sleep(0.5)  # past the 0.4 s debounce: the re-check of the last keystroke has begun
    during = code_actions(client, uri, line, 0)
    deadline = time.monotonic() + 120
    while (client.diagnostics.get(uri) or {}).get("version") != 1 + keystrokes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no diagnostics for the last version of {path.name}")
        time.sleep(0.05)
    diagnostics = client.diagnostics[uri]["diagnostics"]
    time.sleep(1)
    rss, peak = rss_mb(client.server.pid)
    client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    return {
        "lines": len(rows),
        "bytes": len(text.encode()),
        "open_to_first_code_actions_s": round(open_to_first, 4),
        "first_code_actions_s": round(first, 4),
        "code_actions_median_s": round(statistics.median(listed), 4),
        "code_actions_max_s": round(max(listed), 4),
        "after_keystroke_median_s": round(statistics.median(typed), 4) if typed else None,
        "after_keystroke_max_s": round(max(typed), 4) if typed else None,
        "analysed": not any(d.get("code") == "file-too-large" for d in diagnostics),
        "during_recheck_s": round(during, 4),
        "server_rss_mb": round(rss, 1),
        "server_peak_rss_mb": round(peak, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--keystrokes", type=int, default=10)
    parser.add_argument("--max-file-kb", type=int, default=None, help="torchls.maxFileSizeKB")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    options = {} if args.max_file_kb is None else {"maxFileSizeKB": args.max_file_kb}
    with tempfile.TemporaryDirectory(prefix="torchls-bench-large-") as scratch:
        folder = Path(scratch)
        for path in make_files(folder, args.lines, DEFAULT_LIMIT_KB):
            client = Client(folder, None, VSCODE_CAPABILITIES, options)
            try:
                client.wait_for(_is_ready)
                result = bench_file(client, path, args.requests, args.keystrokes)
            finally:
                client.close()
            results[path.name] = result
            print(
                f"{path.name}: {result['lines']:,} lines, {result['bytes'] / 1e6:.1f} MB | "
                f"code actions median {result['code_actions_median_s'] * 1000:.0f} ms, "
                f"max {result['code_actions_max_s'] * 1000:.0f} ms | after a keystroke "
                f"median {result['after_keystroke_median_s'] * 1000:.0f} ms, max "
                f"{result['after_keystroke_max_s'] * 1000:.0f} ms | 0.5 s after, during the "
                f"re-check {result['during_recheck_s'] * 1000:.0f} ms | "
                f"{'analysed' if result['analysed'] else 'over the size limit'} | server "
                f"{result['server_rss_mb']:.0f} MB (peak {result['server_peak_rss_mb']:.0f} MB)"
            )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
