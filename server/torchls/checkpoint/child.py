"""The checkpoint-reading child process: `python -I -S child.py MEMORY_MB PATH`.

Prints one JSON object: {"summary": {...}} or {"error": "one sentence"}.
"""

import json
import os
import resource
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(os.path.dirname(_here)))


def main() -> int:
    memory_mb = int(sys.argv[1])
    path = sys.argv[2]
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from torchls.checkpoint import CheckpointError, read_checkpoint

    message: dict[str, object]
    try:
        summary = read_checkpoint(path)
    except CheckpointError as exc:
        message = {"error": exc.reason}
    else:
        message = {"summary": summary.as_json()}
    sys.stdout.write(json.dumps(message, separators=(",", ":")))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
