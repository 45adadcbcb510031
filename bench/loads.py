"""Load checks on real code: what `torchls check` finds in public repositories, whether it is
right about checkpoints saved by those repositories' own models, and whether its fixes work.

    python bench/loads.py [REPO_PATH ...] [--corpus bench/reach_corpus.json] [--root DIR]
                          [--repos NAME,NAME] [--python PY] [--runs 3] [--variants all]
                          [--timeout 120] [--json]
    python bench/reach.py --loads ...   (the same, with reach.py's repository arguments)

Per repository (a checkout at the path given; nothing about a repository is special-cased), on
a copy in a temporary folder (the clone is never written to):

  check        `python -m torchls check . --format json --python PY` from the copy's root, as a
               user would run it: loads found, checked, not checked (grouped by the reason
               torchls gives), from memory, diagnostics by severity and code; the .py files it
               read; its wall time, the median of --runs runs. Each run is a cold start, as
               `torchls check` always is: it starts its own worker, which imports torch to
               learn the environment before any model is built.
  planted      every load torchls checks (`load_state_dict(torch.load(PATH)...)` with a path it
               reads and a model it resolves) gets checkpoints written at the path torchls
               looks at first. The model is built by the repository's own code in a separate
               process run with PY (the class torchls resolved, the arguments torchls read; the
               module's definitions only when importing it would run script code), random
               weights, and saved by torch:
                 own        its state_dict in the container the code reads (checkpoint['model']
                            gets {'model': sd, 'epoch': 3}); any error torchls reports there is
                            a false positive
                 module.    keys saved from nn.DataParallel / DistributedDataParallel
                 _orig_mod. keys saved from torch.compile
                 whole      the whole training checkpoint, when the code passes torch.load's
                            result to load_state_dict as it is
                 extra      a non-tensor entry beside the weights (['mask_values'] = [0, 1])
               A broken variant is detected when torchls reports an error at the load. Its
               fix is applied with `torchls check FILE --fix`; it works when (i) the re-check
               has no error left there and (ii) the fixed statements really load: the model is
               built again (other random weights) and the statements of the fixed file from the
               torch.load to the load_state_dict run in a separate process with PY; every
               weight of the model the receiver names afterwards must then equal the saved
               one. The statements see the globals of the model's module and the file's
               imports; of the names the script sets elsewhere, only those whose value is
               known are bound (the receiver, the path torchls read; map_location is the CPU),
               otherwise the site is reported as not executed, with the name.

Processes that run repository code refuse, through bench/reach.py's audit hook (imported, not
copied), any file write outside their scratch folder, directory creation, network connection or
subprocess. Ends with a table per repository and one JSON line (every site with --json).
"""

# ruff: noqa: E402 (the path is set before the imports)
from __future__ import annotations

import sys
from pathlib import Path

# `python bench/loads.py` puts bench/ first on sys.path, where bench/inspect.py (another bench)
# would stand in for the standard library's inspect.
BENCH = Path(__file__).resolve().parent
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == BENCH:
    sys.path.pop(0)

import argparse
import ast
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


def _reach() -> Any:
    spec = importlib.util.spec_from_file_location("torchls_bench_reach", BENCH / "reach.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


reach = _reach()  # puts the server on sys.path too

from torchls.source.loads import LoadSite, find_load_sites
from torchls.source.models import FileModels
from torchls.source.project import Project
from torchls.source.skeleton import skeleton

PYTHON = [sys.executable]
SKIP_DIRS = {".git", ".hg", ".venv", "venv", "node_modules", "__pycache__", "site-packages"}
# What the code does to the keys after torch.load that the bench can undo when it saves.
INVERTIBLE = {"key", "strip", "add", "replace", "drop_keys", "drop_prefix", "drop_suffix"}
VARIANTS = ("module.", "_orig_mod.", "whole", "extra")
# reach.py's verifying process up to its own loop: the audit hook, the alarm, and how torchls's
# references and argument values are rebuilt. This bench's jobs follow it.
SANDBOX = reach.VERIFY[: reach.VERIFY.index('for case in job["classes"]')]

JOB = r"""
import types

def built():
    # The module that defines the class (its globals) and the model, as torchls builds it.
    ref = job["ref"]
    module = None
    if job.get("skeleton") is not None:
        # Importing the module would run its script: its definitions only, under its name.
        module = types.ModuleType(ref["module"])
        module.__file__ = ref["file"]
        sys.modules[ref["module"]] = module
        exec(compile(job["skeleton"], ref["file"], "exec"), module.__dict__)
    elif "module" in ref:
        if ref.get("sys_path") and ref["sys_path"] not in sys.path:
            sys.path.insert(0, ref["sys_path"])
        module = importlib.import_module(ref["module"])
    if module is None:
        made = resolve(ref)
    else:
        made = module
        for piece in ref["qualname"].split("."):
            made = getattr(made, piece)
    model = made(*[value_of(a) for a in job["args"]],
                 **{k: value_of(x) for k, x in job["kwargs"].items()})
    return dict(vars(module)) if module is not None else {}, model

def saved_keys(sd):
    for kind, value in reversed(job["rewrites"]):
        if kind == "strip":
            sd = {value + k: v for k, v in sd.items()}
        elif kind == "add":
            sd = {k[len(value):] if k.startswith(value) else k: v for k, v in sd.items()}
        elif kind == "replace":
            sd = {k.replace(value[1], value[0]): v for k, v in sd.items()}
    return sd

def container(sd, variant):
    sd = {variant.get("prefix", "") + k: v for k, v in saved_keys(sd).items()}
    if variant.get("extra"):
        sd["mask_values"] = [0, 1]
    keys = job["keys"]
    if variant.get("whole"):
        return {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.001}]},
                "epoch": 5, "best_val_loss": 1.25}
    for key in reversed(keys):
        sd = {key: sd}
    if keys:
        sd["epoch"] = 3
    return sd

def holder(dotted, model):
    # `self.model.load_state_dict(...)`: `self` is an object whose `model` is the model.
    pieces = dotted.split(".")
    value = model
    for piece in reversed(pieces[1:]):
        outer = types.SimpleNamespace()
        setattr(outer, piece, value)
        value = outer
    return pieces[0], value

out = {}
signal.alarm(int(job["timeout"]))
try:
    torch.manual_seed(job["seed"])
    with torch.device("cpu"):
        namespace, model = built()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if job["mode"] == "build":
        torch.save(sd, job["reference"])  # the weights themselves, to compare a load with
        for variant in job["variants"]:
            torch.save(container(sd, variant), variant["file"])
        out["keys"] = len(sd)
    else:
        os.chdir(job["cwd"])
        # The statements may name what the file defines or imports (a construction between the
        # torch.load and the load_state_dict): the class's module, then the file's imports.
        names = namespace
        for statement in job["imports"]:
            try:
                exec(statement, names)
            except Exception:
                pass
        names.update(job["names"])
        root, value = holder(job["receiver"], model)
        names[root] = value
        try:
            exec(compile(job["statements"], job["file"], "exec"), names)
        except NameError as exc:
            out["unexecuted"] = f"the statements read `{exc.name}`, set elsewhere in the script"
        if "unexecuted" not in out:
            reference = torch.load(job["reference"], weights_only=True)
            now = eval(job["receiver"], names).state_dict()  # the model the statements loaded
            equal = sum(1 for k, v in reference.items() if k in now and torch.equal(now[k], v))
            out["equal"], out["total"] = equal, len(reference)
except Unreadable as exc:
    out["unexecuted"] = f"cannot rebuild the arguments: {exc}"
except PermissionError as exc:
    out["unexecuted"] = str(exc)
except BaseException as exc:
    out["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
finally:
    signal.alarm(0)
print(json.dumps(out), flush=True)
"""


@dataclass
class Variant:
    name: str
    errors: list[str] = field(default_factory=list)  # torchls's errors at the load
    warnings: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)  # titles offered
    fixed_clean: bool | None = None  # no error there after `--fix`
    fixed_errors: list[str] = field(default_factory=list)
    works: bool | None = None  # the fixed statements load every weight
    detail: str = ""


@dataclass
class SiteResult:
    file: str
    line: int
    call: str  # the load as written
    model: str  # what torchls builds
    planted: str = ""  # where, relative to the copy; "" when not planted
    not_planted: str = ""
    unseen: str = ""  # what torchls counts as checked and does not look at, silently
    variants: list[Variant] = field(default_factory=list)


@dataclass
class RepoResult:
    name: str
    commit: str
    files: int = 0
    check: dict[str, Any] = field(default_factory=dict)  # torchls check's summary
    seconds: list[float] = field(default_factory=list)
    unchecked: dict[str, int] = field(default_factory=dict)  # reason -> loads
    diagnostics: dict[str, int] = field(default_factory=dict)  # "severity code" -> count
    sites: list[SiteResult] = field(default_factory=list)
    problem: str = ""
    load_average: float = 0.0  # 1-minute, when the timed runs started

    @property
    def median(self) -> float | None:
        return round(statistics.median(self.seconds), 2) if self.seconds else None


# -- running torchls -----------------------------------------------------------------------------


def environment() -> dict[str, str]:
    env: dict[str, str] = reach.environment()
    return env


def torchls_check(
    copy: Path, paths: list[str], timeout: float, fix: bool = False
) -> tuple[dict[str, Any] | None, float, str]:
    """`torchls check`'s JSON, its wall time, and its last stderr line."""
    command = [sys.executable, "-m", "torchls", "check", *paths, "--format", "json"]
    command += ["--python", PYTHON[0], "--timeout", str(timeout)]
    if fix:
        command.append("--fix")
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            cwd=copy,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=timeout * 4 + 60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - started, "timed out"
    elapsed = time.monotonic() - started
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    try:
        return json.loads(done.stdout), elapsed, lines[-1] if lines else ""
    except json.JSONDecodeError:
        return None, elapsed, lines[-1] if lines else f"exit status {done.returncode}"


def run_job(job: dict[str, Any], scratch: Path, timeout: float) -> dict[str, Any]:
    """One job of repository code in the sandboxed process; writes only under `scratch`."""
    script = scratch / "job.py"
    script.write_text(SANDBOX + JOB)
    env = environment()
    env.pop("PYTHONPATH", None)  # the repository's code and torch, no torchls
    env["TMPDIR"] = str(scratch)
    try:
        done = subprocess.run(
            [PYTHON[0], str(script)],
            input=json.dumps({**job, "timeout": timeout}),
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout + 60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    for line in reversed(done.stdout.splitlines()):
        try:
            answer: dict[str, Any] = json.loads(line)
            return answer
        except json.JSONDecodeError:
            continue
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return {"error": f"the process ended: {lines[-1] if lines else done.returncode}"}


# -- the sites -----------------------------------------------------------------------------------


def python_files(root: Path) -> list[Path]:
    """What `torchls check .` reads."""
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        files += [Path(folder) / n for n in sorted(names) if n.endswith(".py")]
    return files


def sites_of(copy: Path, path: Path) -> tuple[FileModels | None, list[LoadSite]]:
    project = Project(str(copy))
    module = project.module_file(str(path))
    if module is None:
        return None, []
    models = FileModels(project, module)
    return models, find_load_sites(models, str(copy))


def why_not_planted(site: LoadSite) -> str | None:
    if site.in_memory:
        return "a state dict from memory (no file)"
    if site.unchecked is not None:
        return "torchls does not check it"
    if site.kind != "load_state_dict" or site.loader != "torch.load":
        return f"a {site.kind} load ({site.loader or 'no torch.load'}): not planted by this bench"
    if site.model is None:
        return "torchls does not resolve the model it loads into"
    if not site.candidates or site.path is None:
        return "no path torchls reads"
    if site.keys_unknown:
        return f"torchls does not follow the keys: {site.keys_unknown}"
    for step in site.steps:
        if step.kind not in INVERTIBLE:
            return f"a `{step.kind}` step the bench cannot invert"
    return None


def unseen(site: LoadSite) -> str:
    """What a load torchls counts as checked leaves unchecked without a word: no file path it
    reads (nothing is checked), or a model it does not resolve (the keys are not compared)."""
    if site.unchecked is not None or site.in_memory:
        return ""
    if site.path is None or not site.candidates:
        return "no file path torchls reads: nothing checked"
    if site.model is None and site.kind == "load_state_dict":
        return "the model is not resolved: the keys are not compared"
    return ""


def build_job(copy: Path, site: LoadSite) -> dict[str, Any]:
    """How the sandboxed process builds the model torchls builds."""
    target = site.model
    assert target is not None
    ref = dict(target.ref)
    job: dict[str, Any] = {
        "repo": str(copy),
        "file": str(ref.get("file", copy)),
        "sys_path": str(ref.get("sys_path", copy)),
        "ref": ref,
        "args": target.args,
        "kwargs": target.kwargs,
        "keys": [str(step.value) for step in site.steps if step.kind == "key"],
        "rewrites": [
            [step.kind, step.value]
            for step in site.steps
            if step.kind in {"strip", "add", "replace"}
        ],
        "skeleton": None,
    }
    if "file" in ref:
        project = Project(str(copy))
        found = reach.Found(
            Path(ref["file"]), target.name, target.line, ref["module"], ref["sys_path"], [], {}, ""
        )
        if reach.import_is_safe(project, found):
            module = project.module_file(ref["file"])
            tree = module.tree() if module is not None else None
            if tree is not None:
                job["skeleton"] = ast.unparse(skeleton(tree)[0])
    return job


def statements(path: Path, site: LoadSite) -> tuple[str, list[str], str] | str:
    """From the fixed file: the statements from the torch.load to the load_state_dict, the
    file's top-level imports, and the name of the path when torch.load is given a name; or
    why they cannot be taken."""
    text = path.read_text()
    tree = ast.parse(text)
    first = (site.loader_span.start_line if site.loader_span else site.span.start_line) + 1
    last = site.span.end_line + 1
    best: list[ast.stmt] | None = None
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if not isinstance(body, list) or not body or not isinstance(body[0], ast.stmt):
                continue
            if any(s.lineno <= first <= (s.end_lineno or s.lineno) for s in body) and any(
                s.lineno <= last <= (s.end_lineno or s.lineno) for s in body
            ):
                best = body  # ast.walk goes outside in: the innermost block wins
    if best is None:
        return "the torch.load and the load_state_dict are in different blocks"
    lines = text.splitlines()
    start = next(s for s in best if s.lineno <= first <= (s.end_lineno or s.lineno))
    end = next(s for s in best if s.lineno <= last <= (s.end_lineno or s.lineno))
    if isinstance(start, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return "the load is inside a definition the bench does not call"
    code = textwrap.dedent("\n".join(lines[start.lineno - 1 : end.end_lineno]))
    imports = [ast.unparse(s) for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
    path_name = ""
    loader = next(
        (
            n
            for n in ast.walk(ast.parse(code))
            if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("load") and n.args
        ),
        None,
    )
    if loader is not None and isinstance(loader.args[0], ast.Name):
        path_name = loader.args[0].id
    return code, imports, path_name


# -- one repository ------------------------------------------------------------------------------


def measure(repo: Path, args: argparse.Namespace) -> RepoResult:
    result = RepoResult(repo.name, reach._head(repo))
    with tempfile.TemporaryDirectory(prefix="torchls-loads-") as temporary:
        copy = Path(temporary) / repo.name
        shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(".git"), symlinks=True)
        result.files = len(python_files(copy))
        payload: dict[str, Any] | None = None
        result.load_average = round(os.getloadavg()[0], 2)  # the machine is shared
        for _ in range(args.runs):
            answer, seconds, last = torchls_check(copy, ["."], args.timeout)
            result.seconds.append(round(seconds, 2))
            payload = payload or answer
            if answer is None:
                result.problem = f"torchls check failed: {last}"
                break
        print(
            f"{repo.name}: {result.files} files, check {result.median} s "
            f"(median of {len(result.seconds)})",
            file=sys.stderr,
        )
        if payload is None:
            return result
        result.check = {k: v for k, v in payload.items() if isinstance(v, int)}
        reasons: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        for item in payload["diagnostics"]:
            kinds[f"{item['severity']} {item['code']}"] += 1
            if item["code"] == "unchecked":
                reasons[_reason(item["message"])] += 1
        result.unchecked, result.diagnostics = dict(reasons), dict(kinds)
        scratch = Path(temporary) / "scratch"
        scratch.mkdir()
        for path in python_files(copy):
            _, sites = sites_of(copy, path)
            for site in sites:
                result.sites.append(plant(copy, path, site, scratch, args))
    return result


def _reason(message: str) -> str:
    message = message.removeprefix("torchls cannot check this load: ")
    message = message.removeprefix("torchls cannot check the keys of this load: ")
    message = re.sub(r"`[^`]*`", "`X`", message)
    return re.sub(r"\d+", "N", message).rstrip(".")[:150]


def plant(
    copy: Path, path: Path, site: LoadSite, scratch: Path, args: argparse.Namespace
) -> SiteResult:
    relative = path.relative_to(copy).as_posix()
    text = path.read_text()
    lines = text.splitlines()
    call = lines[site.span.start_line].strip()[:100] if site.span.start_line < len(lines) else ""
    result = SiteResult(relative, site.line, call, site.model.call_text() if site.model else "")
    result.unseen = unseen(site)
    why = why_not_planted(site)
    if why:
        result.not_planted = why
        return result
    where = Path(site.candidates[0])
    result.planted = os.path.relpath(where, copy)
    wanted = ["own", *[v for v in VARIANTS if v in args.variants]]
    if site.steps and any(step.kind == "key" for step in site.steps):
        wanted = [v for v in wanted if v != "whole"]  # the code already picks the weights
    taken = len(list(scratch.glob("*.pt")))
    files = {name: scratch / f"{taken + i}.pt" for i, name in enumerate(wanted)}
    specs = []
    for name, file in files.items():
        spec: dict[str, Any] = {"file": str(file)}
        if name in ("module.", "_orig_mod."):
            spec["prefix"] = name
        spec["whole"] = name == "whole"
        spec["extra"] = name == "extra"
        specs.append(spec)
    reference = scratch / f"{taken + len(wanted)}.pt"
    job = {**build_job(copy, site), "mode": "build", "seed": 0, "variants": specs}
    job["reference"] = str(reference)
    built = run_job(job, scratch, args.timeout)
    if "keys" not in built:
        result.not_planted = "the repository code could not build it: " + str(
            built.get("unexecuted") or built.get("error")
        )
        return result
    print(f"  {relative}:{site.line}: planting {', '.join(wanted)}", file=sys.stderr)
    for name, file in files.items():
        variant = Variant(name)
        result.variants.append(variant)
        where.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, where)
        try:
            one_variant(copy, path, text, site, variant, job, args, scratch)
        finally:
            _write(path, text)
            where.unlink(missing_ok=True)
    return result


def one_variant(
    copy: Path,
    path: Path,
    original: str,
    site: LoadSite,
    variant: Variant,
    job: dict[str, Any],
    args: argparse.Namespace,
    scratch: Path,
) -> None:
    relative = path.relative_to(copy).as_posix()
    first = (site.loader_span.start_line if site.loader_span else site.span.start_line) + 1
    last = site.span.end_line + 1

    def at_site(payload: dict[str, Any] | None, start: int, end: int) -> list[dict[str, Any]]:
        if payload is None:
            return []
        return [
            d
            for d in payload["diagnostics"]
            if d["file"] == relative and start <= d["line"] <= end and d["code"] != "unchecked"
        ]

    before, _, last_line = torchls_check(copy, [relative], args.timeout)
    if before is None:
        variant.detail = f"torchls check failed: {last_line}"
        return
    found = at_site(before, first, last)
    variant.errors = [d["message"] for d in found if d["severity"] == "error"]
    variant.warnings = [d["message"] for d in found if d["severity"] == "warning"]
    variant.fixes = sorted({title for d in found for title in d["fixes"]})
    if variant.name == "own" or not variant.errors:
        return
    after, _, last_line = torchls_check(copy, [relative], args.timeout, fix=True)
    if after is None:
        variant.detail = f"torchls check --fix failed: {last_line}"
        return
    if path.read_text() == original:
        variant.fixed_clean = False
        variant.detail = "--fix changed nothing"
        return
    _, fixed_sites = sites_of(copy, path)
    same = [s for s in fixed_sites if s.kind == site.kind and s.model_text == site.model_text]
    if not same:
        variant.fixed_clean = False
        variant.detail = "the load is gone from the fixed file"
        return
    fixed = min(same, key=lambda s: abs(s.line - site.line))
    start = (fixed.loader_span.start_line if fixed.loader_span else fixed.span.start_line) + 1
    left = [d for d in at_site(after, start, fixed.span.end_line + 1) if d["severity"] == "error"]
    variant.fixed_errors = [d["message"] for d in left]
    variant.fixed_clean = not left
    taken = statements(path, fixed)
    if isinstance(taken, str):
        variant.detail = f"not executed: {taken}"
        return
    code, imports, path_name = taken
    names: dict[str, Any] = {}
    if path_name and site.path:
        names[path_name] = site.path
    cwd = _base(site)
    if cwd is None:
        variant.detail = "not executed: the path is not relative to a folder the bench knows"
        return
    code = _cpu(code)
    run = {
        **job,
        "mode": "run",
        "seed": 1,
        "cwd": cwd,
        "imports": imports,
        "names": names,
        "receiver": fixed.model_text,
        "statements": code,
        "file": str(path),
    }
    answer = run_job(run, scratch, args.timeout)
    if "unexecuted" in answer:
        variant.detail = f"not executed: {answer['unexecuted']}"
    elif "error" in answer:
        variant.works = False
        variant.detail = f"the fixed load raises {answer['error']}"
    else:
        variant.works = answer["equal"] == answer["total"]
        variant.detail = f"{answer['equal']}/{answer['total']} weights loaded"


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _base(site: LoadSite) -> str | None:
    """The folder the load's relative path is read from (the file's or the workspace's)."""
    assert site.path is not None
    written, found = Path(site.path), Path(site.candidates[0])
    if written.is_absolute():
        return "/"
    parts = len(written.parts)
    if found.parts[-parts:] != written.parts:
        return None
    return str(Path(*found.parts[:-parts]))


def _cpu(code: str) -> str:
    """map_location on the CPU, whatever device name the script computed elsewhere."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "map_location":
                    keyword.value = ast.Constant("cpu")
    return ast.unparse(tree)


# -- the report ----------------------------------------------------------------------------------


def counts(result: RepoResult) -> dict[str, Any]:
    planted = [s for s in result.sites if s.variants]
    own = [v for s in planted for v in s.variants if v.name == "own"]
    broken = [v for s in planted for v in s.variants if v.name != "own"]
    return {
        "files": result.files,
        "loads": result.check.get("loads", 0),
        "checked": result.check.get("checked", 0),
        "not_checked": result.check.get("not_checked", 0),
        "in_memory": result.check.get("in_memory", 0),
        "errors": result.check.get("errors", 0),
        "warnings": result.check.get("warnings", 0),
        "check_seconds": result.median,
        "planted_sites": len(planted),
        "false_positives": sum(1 for v in own if v.errors),
        "broken": len(broken),
        "detected": sum(1 for v in broken if v.errors),
        "fix_offered": sum(1 for v in broken if v.fixes),
        "fixed_clean": sum(1 for v in broken if v.fixed_clean),
        "fixed_working": sum(1 for v in broken if v.works),
        "not_executed": sum(1 for v in broken if v.fixed_clean and v.works is None),
        "checked_no_path": sum(1 for s in result.sites if s.unseen.startswith("no file")),
        "checked_no_model": sum(1 for s in result.sites if s.unseen.startswith("the model")),
    }


COLUMNS = [
    ("repository", "", 28),
    ("commit", "", 12),
    ("files", "files", 6),
    ("loads", "loads", 6),
    ("checked", "checked", 8),
    ("unchk", "not_checked", 6),
    ("err", "errors", 5),
    ("warn", "warnings", 5),
    ("check s", "check_seconds", 8),
    ("planted", "planted_sites", 8),
    ("FP", "false_positives", 4),
    ("broken", "broken", 7),
    ("found", "detected", 6),
    ("fix", "fix_offered", 4),
    ("clean", "fixed_clean", 6),
    ("works", "fixed_working", 6),
]


def report(results: list[RepoResult], runs: int) -> None:
    header = "".join(
        f"{title:<{width}}" if not key else f"{title:>{width}}" for title, key, width in COLUMNS
    )
    print(header)
    print("-" * len(header))
    for result in results:
        row = counts(result)
        cells = [f"{result.name:<28}", f"{result.commit[:10]:<12}"]
        cells += [f"{row[key]!s:>{width}}" for _, key, width in COLUMNS[2:]]
        print("".join(cells))
    print("-" * len(header))
    total = totals(results)
    cells = [f"{'all':<28}", f"{'':<12}"]
    cells += [
        f"{total.get(key, '')!s:>{width}}" if key != "check_seconds" else f"{'':>{width}}"
        for _, key, width in COLUMNS[2:]
    ]
    print("".join(cells))
    print(
        f"\ncheck s: wall time of `torchls check . --format json` on the copy, median of {runs} "
        "runs, each a cold start (its own worker, which imports torch for the environment probe);"
        f" {os.cpu_count()} cores, shared: the runs, and the 1-minute load average before them:"
    )
    for result in results:
        runs_text = ", ".join(f"{s:.2f}" for s in result.seconds)
        print(f"  {result.name}: {result.files} files, {runs_text} s; load {result.load_average}")
    for result in results:
        if result.problem:
            print(f"{result.name}: {result.problem}")
    reasons: Counter[str] = Counter()
    for result in results:
        reasons.update(result.unchecked)
    if reasons:
        print("\nnot checked, by the reason torchls gives:")
        for reason, count in reasons.most_common():
            print(f"  {count:>4} x {reason}")
    kinds: Counter[str] = Counter()
    for result in results:
        kinds.update({k: v for k, v in result.diagnostics.items() if "unchecked" not in k})
    if kinds:
        print("\nother diagnostics, by severity and code:")
        for kind, count in kinds.most_common():
            print(f"  {count:>4} x {kind}")
    silent = [(r.name, s) for r in results for s in r.sites if s.unseen]
    if silent:
        print("\ncounted as checked by torchls, with nothing said about what it did not check:")
        for why, count in Counter(s.unseen for _, s in silent).most_common():
            name, example = next((n, s) for n, s in silent if s.unseen == why)
            print(f"  {count:>4} x {why}")
            print(f"         e.g. {name}/{example.file}:{example.line}: {example.call}")
    unplanted: Counter[str] = Counter()
    for result in results:
        unplanted.update(
            re.sub(r"'[^']*'", "'...'", s.not_planted) for s in result.sites if s.not_planted
        )
    if unplanted:
        print("\nloads with no planted checkpoint, by why:")
        for why, count in unplanted.most_common():
            print(f"  {count:>4} x {why}")
    for result in results:
        for site in result.sites:
            if not site.variants:
                continue
            print(f"\n{result.name}/{site.file}:{site.line}: {site.call}")
            print(f"  model {site.model}, checkpoint planted at {site.planted}")
            for v in site.variants:
                if v.name == "own":
                    state = "FALSE POSITIVE: " + "; ".join(v.errors) if v.errors else "no error"
                    if v.warnings:
                        state += f" (warnings: {'; '.join(v.warnings)})"
                else:
                    state = "detected" if v.errors else "NOT DETECTED"
                    if v.errors:
                        state += f": {v.errors[0][:140]}"
                    if v.fixes:
                        state += f"\n      fixes offered: {'; '.join(v.fixes)}"
                    if v.fixed_clean is not None:
                        state += "\n      after --fix: " + (
                            "clean" if v.fixed_clean else "still " + "; ".join(v.fixed_errors)
                        )
                    if v.works is not None or v.detail:
                        works = {True: "works", False: "FAILS", None: ""}[v.works]
                        state += f"; {works} {v.detail}".rstrip()
                print(f"    {v.name:<11} {state}")


def totals(results: list[RepoResult]) -> dict[str, Any]:
    total: Counter[str] = Counter()
    for result in results:
        total.update({k: v for k, v in counts(result).items() if isinstance(v, int)})
    return dict(total)


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repos", nargs="*", type=Path, help="repository checkouts")
    parser.add_argument("--corpus", type=Path, default=reach.DEFAULT_CORPUS)
    parser.add_argument("--root", type=Path, default=Path("/work/scratch/repos"))
    parser.add_argument("--repos", dest="only", help="only these repositories (names, commas)")
    parser.add_argument("--python", default=sys.executable, help="the repositories' interpreter")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of torchls check (3)")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"broken checkpoints to plant (default: {','.join(VARIANTS)})",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per model (120)")
    parser.add_argument("--json", action="store_true", help="every site's outcome as JSON too")
    parser.add_argument(
        "--server",
        type=Path,
        default=reach.SERVER,
        help="the torchls server folder to measure, as bench/reach.py reads it (default: "
        "this checkout's server/)",
    )
    args = parser.parse_args(argv)
    PYTHON[0] = args.python
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    repos: list[Path] = [p.resolve() for p in args.repos]
    if not repos:
        corpus = {}
        if args.corpus.is_file():
            corpus = json.loads(args.corpus.read_text()).get("repositories", {})
        repos = [args.root / name for name in corpus if (args.root / name).is_dir()]
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        repos = [p for p in repos if p.name in wanted]
    if not repos:
        parser.error("no repository to measure (give REPO_PATH, or --root with the corpus's)")
    started = time.monotonic()
    results = []
    for repo in repos:
        if not repo.is_dir():
            parser.error(f"{repo}: not a folder")
        results.append(measure(repo, args))
    print()
    report(results, args.runs)
    line: dict[str, Any] = {
        "bench": "loads",
        "repositories": {r.name: counts(r) for r in results},
        "commits": {r.name: r.commit for r in results},
        "check_seconds": {r.name: r.seconds for r in results},
        "load_average": {r.name: r.load_average for r in results},
        "cores": os.cpu_count(),
        "unchecked_reasons": {r.name: r.unchecked for r in results},
        "total": totals(results),
        "false_positives": [
            f"{r.name}/{s.file}:{s.line}: {e}"
            for r in results
            for s in r.sites
            for v in s.variants
            if v.name == "own"
            for e in v.errors
        ],
        "python": args.python,
        "server": str(reach.SERVER),
        "seconds": round(time.monotonic() - started),
    }
    if args.json:
        line["sites"] = {r.name: [asdict(s) for s in r.sites] for r in results}
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
