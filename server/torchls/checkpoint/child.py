"""The checkpoint-reading child process: `python -I -S child.py MEMORY_MB PATH [MODE]`.

MODE "message" (default) prints one JSON object, {"summary": {...}} or {"error": "..."}, for a
caller that wants the data; MODE "viewer" lists a sharded checkpoint's index and shard problems in
details["shard_problems"] instead of refusing it, and prints {"summary": {...}} with an empty
tensor list, a newline and the tensors as rows (summary.tensor_rows_json), or {"error": "..."};
MODE "locate" prints {"locations": [...]} (torchls.checkpoint.locate). MODE "json" or "text"
prints `torchls inspect`'s final output itself (so that a large summary is not encoded, decoded
and encoded again), or the error on stderr with exit code 1.
"""

import gc
import json
import os
import resource
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
# After the standard library (`-I -S` leaves nothing else): the folder holding torchls holds
# other packages too, and none of them may stand in for a standard module.
sys.path.append(os.path.dirname(os.path.dirname(_here)))


def main() -> int:
    memory_mb = int(sys.argv[1])
    path = sys.argv[2]
    mode = sys.argv[3] if len(sys.argv) > 3 else "message"
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # A checkpoint of 50,000 tensors makes a million small objects; the cyclic garbage collector
    # would rescan them again and again (a third of the run time) to find no cycles. This process
    # lives for one read, under a memory limit, so it does without.
    gc.disable()
    from torchls.checkpoint import CheckpointError, read_checkpoint
    from torchls.checkpoint.reader import ReadBudget

    message: dict[str, object]
    if mode == "locate":  # where each tensor's bytes are, for `torchls diff --values`
        from torchls.checkpoint.locate import locate_tensors

        try:
            message = {"locations": locate_tensors(path)}
        except CheckpointError as exc:
            message = {"error": exc.reason}
        except Exception as exc:
            message = {"error": f"cannot locate its tensors ({type(exc).__name__}: {exc})"}
        sys.stdout.write(json.dumps(message, separators=(",", ":")))
        return 0
    try:
        summary = read_checkpoint(path, ReadBudget(shard_problems=mode == "viewer"))
    except CheckpointError as exc:
        if mode not in ("message", "viewer"):
            sys.stderr.write(f"torchls inspect: {exc}\n")
            return 1
        message = {"error": exc.reason}
    else:
        if mode == "json":
            # Indented only for a person at a terminal: json's indenting encoder is pure Python
            # and takes seconds for 50,000 tensors; the compact one is C.
            if sys.stdout.isatty():
                sys.stdout.write(json.dumps(summary.as_json(), indent=1) + "\n")
            else:
                from torchls.checkpoint.summary import summary_json

                sys.stdout.write(summary_json(summary) + "\n")
            return 0
        if mode == "text":
            from torchls.inspect_report import render_inspect

            sys.stdout.write(render_inspect(summary.as_json()))
            return 0
        if mode == "viewer":
            # The summary without its tensors, a newline, then the tensor table's rows: the
            # language server decodes the first line only and keeps the rows as text.
            from torchls.checkpoint.summary import summary_head_json, tensor_rows_json

            head = summary_head_json(summary)
            sys.stdout.write('{"summary":' + head + "}\n" + tensor_rows_json(summary))
            sys.stdout.flush()
            return 0
        message = {"summary": summary.as_json()}
    sys.stdout.write(json.dumps(message, separators=(",", ":")))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
