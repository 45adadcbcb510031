"""Reach: how many model classes of real repositories `torchls profile` builds and counts, and
whether its counts match torch itself.

    python bench/reach.py [REPO_PATH ...] [--corpus bench/reach_corpus.json] [--root DIR]
                          [--repos NAME,NAME] [--limit N] [--jobs 1] [--timeout 120] [--json]

With no REPO_PATH, every repository of the corpus found under --root (a folder of clones named
as in the corpus) is measured.

What it measures, per repository (a checkout at the path given; nothing about a repository is
special-cased here):

  found        the model classes torchls sees, by its own static analysis run in this process
               (`Project` + `FileModels.model_classes()`, what the hover offers), in every .py
               file except tests (test_*.py, *_test.py, conftest.py, tests/ folders) and
               vendored code (site-packages, venvs, third_party, build folders)
  as laid out  `python -m torchls profile FILE::Class --json` from the repository root
               succeeds with no help: no --args, no --input, no comment added
  with hints   it fails as laid out but succeeds with the --args/--input the corpus file lists
               for that class (what a user would type on the command line; the issue's target
               allows these and nothing else)
  failed       neither; the first line of the message is kept and grouped by cause
  exact        for each class that profiled, the same class is built again, with the same
               arguments, in a separate Python process that imports the repository's module
               the way `python -c "from pkg.mod import Class"` run from the root would, and is
               counted by torch itself: `sum(p.numel() for p in model.parameters())` and the
               FLOPs of one eval-mode forward under `torch.utils.flop_counter.FlopCounterMode`
               on real CPU tensors (random weights; index inputs are zeros) with the input
               shapes torchls reports; on the meta device when the weights would not fit in
               2 GB. Both must equal torchls's figures to the last digit. Attention runs on
               its math path there: on CPU tensors the fused scaled_dot_product_attention
               kernel is not counted by FlopCounterMode at all (0 FLOPs), the math path does
               the same products and is; likewise oneDNN is off there, whose fused LSTM/GRU
               kernel FlopCounterMode counts as 0 FLOPs (an LSTM's gate products are then
               counted as the matrix products they are).
               Where importing the real module would run script code (a top-level statement
               other than imports, definitions, plain assignments without I/O-looking calls
               and an `if __name__ == "__main__":` block, in that module or in a workspace
               module it imports), that module is executed instead as torchls's skeleton of
               it (source/skeleton.py: imports, definitions, the assignments they read and
               argparse with the script's defaults; never the training loop), as torchls's
               worker does; only the class's definition comes from torchls that way, the
               building and the counting are the same as above. Such classes' check_detail
               begins "class defined from torchls's skeleton of the script".
  not verifiable
               torch itself cannot build or run the class as torchls did (the reason is
               kept), or torchls's arguments cannot be rebuilt outside its worker. The
               verifying process also refuses, through an audit hook, any file write,
               directory creation, network connection or subprocess: the bench never runs a
               repository's training script.

Target (issue 15): at least 90% of the model classes of a typical research repository profile
as laid out or with at most --args/--input, and 100% of those that profile are exact.

The corpus file (bench/reach_corpus.json) names each repository's public GitHub source and the
commit measured, and the per-class hints; without it the bench runs with no hints. --python is
the interpreter that runs the repositories' code (torchls's worker and the check): it needs
torch and what the repositories import (torchvision, einops, ...); a module missing there is
counted apart, as the environment's failure, not torchls's. Each profile
starts a worker that imports torch (3-6 s), so --jobs 2 on two cores and --limit N (classes per
repository) keep a run short. The profile is run with --no-thop (thop's figure is not what is
measured). Ends with one JSON line (every class's outcome with --json).
"""

# ruff: noqa: E402 (the path is set before the imports)
from __future__ import annotations

import sys
from pathlib import Path

# `python bench/reach.py` puts bench/ first on sys.path, where bench/inspect.py (another bench)
# would stand in for the standard library's inspect.
BENCH = Path(__file__).resolve().parent
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == BENCH:
    sys.path.pop(0)

import argparse
import ast
import json
import os
import re
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any


def _server() -> Path:
    """The torchls source measured: --server DIR (e.g. an export of an older commit), read
    before the imports below, or this checkout's server/."""
    for index, arg in enumerate(sys.argv):
        if arg == "--server" and index + 1 < len(sys.argv):
            return Path(sys.argv[index + 1]).resolve()
        if arg.startswith("--server="):
            return Path(arg.partition("=")[2]).resolve()
    return BENCH.parent / "server"


SERVER = _server()
sys.path.insert(0, str(SERVER))

from torchls.source.models import FileModels
from torchls.source.project import ModuleFile, Project
from torchls.source.skeleton import skeleton

DEFAULT_CORPUS = BENCH / "reach_corpus.json"
PYTHON = [sys.executable]  # the interpreter of the user's code (--python)
SKIP_DIRS = {
    ".git",
    ".hg",
    "__pycache__",
    "node_modules",
    "site-packages",
    ".venv",
    "venv",
    "env",
    "third_party",
    "thirdparty",
    "vendor",
    "build",
    "dist",
    "test",
    "tests",
}
META_ABOVE_BYTES = 2 * 1024**3  # weights larger than this are built on the meta device

# Calls that, in a top-level assignment, look like I/O, downloads, training or processes: a
# module with one is a script, and importing it is not something a benchmark may do.
RISKY_CALL = re.compile(
    r"load|open|download|save|read|write|mkdir|makedirs|dataloader|dataset|system|popen|"
    r"subprocess|run|fit|train|request|url|fetch|connect|wandb|init_process_group|"
    r"summarywriter|tensorboard|remove|rmtree|glob|listdir|input",
    re.IGNORECASE,
)
# Top-level calls that only set up the interpreter.
HARMLESS_CALL = re.compile(
    r"^(warnings\.|logging\.|torch\.manual_seed$|torch\.set_|torch\.backends\.|random\.seed$|"
    r"np\.random\.seed$|numpy\.random\.seed$|sys\.path\.|os\.environ|print$|"
    r"torch\._C\._jit|torch\.autograd\.set_)"
)

# Failure message (first line) -> cause, first match wins. What the other items of the issue
# fix, in the words of the issue.
CAUSES: list[tuple[str, str]] = [
    (r"timed out|timeout", "timed out"),
    (
        r"\(__init__\.py, line",
        "import of the workspace module (package layout, relative/star import, cycle)",
    ),
    (r"forward\(\) missing", "needs an input shape (--input)"),
    (r"name '\w+' is not defined", "module-level state dropped by the skeleton (NameError)"),
    (
        r"attempted relative import|No module named|cannot import name|ImportError|"
        r"ModuleNotFoundError|import \*|star import|circular import",
        "import of the workspace module (package layout, relative/star import, cycle)",
    ),
    (r"[Cc]onfig", "config object as an argument"),
    (
        r"needs `|missing \d+ required|required positional|--args",
        "needs constructor arguments (--args)",
    ),
    (r"input shape|--input|input=", "needs an input shape (--input)"),
    (r"meta|\.item\(\)|data-dependent|\.numpy\(\)|\.tolist\(\)", "breaks on the meta device"),
    (r"abstract|NotImplementedError", "abstract base class / not a complete model"),
    (r"forward\(\) failed", "forward() failed with the guessed or stated input"),
    (r"not callable", "resolution: a module where a callable was expected"),
]


@dataclass
class ClassResult:
    repo: str
    file: str  # relative to the repository
    name: str
    line: int
    missed: bool = False  # not listed by torchls's static analysis (no hover offered)
    outcome: str = "failed"  # "laid-out", "hints", "failed"
    message: str = ""  # first line of the failure
    cause: str = ""
    hint: dict[str, str] = field(default_factory=dict)
    hint_message: str = ""  # why it fails with the hints too
    params: int | None = None
    macs: int | None = None
    flops: int | None = None
    build: str = ""  # how torchls built it (meta, fake, cpu, ...)
    inputs: Any = None  # torchls's input spec, as reported
    seconds: float = 0.0
    check: str = ""  # "exact", "mismatch", "not verifiable", "" (not profiled)
    check_detail: str = ""
    torch_params: int | None = None
    torch_flops: int | None = None


# -- finding the classes -------------------------------------------------------------------------


def python_files(repo: Path) -> list[Path]:
    files: list[Path] = []
    for folder, dirs, names in os.walk(repo):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(names):
            if not name.endswith(".py") or name == "conftest.py":
                continue
            if name.startswith("test_") or name.endswith("_test.py"):
                continue
            files.append(Path(folder) / name)
    return files


@dataclass
class Found:
    file: Path
    name: str
    line: int
    module: str  # dotted name torchls imports the file under
    sys_path: str  # the folder that name is imported from
    args: list[Any]  # torchls's static reading of the arguments (JSON values)
    kwargs: dict[str, Any]
    args_source: str
    missed: bool = False  # a model class torchls's analysis does not list


# Base classes that make a class a model to anyone reading the code (by their last name): the
# classes torchls's analysis does not see as models but these do are counted as missed.
MODEL_BASES = {"Module", "LightningModule", "Sequential", "ModuleList", "ModuleDict"}


def _base_name(base: ast.expr) -> str:
    if isinstance(base, ast.Subscript):
        base = base.value
    if isinstance(base, ast.Attribute):
        return base.attr
    return base.id if isinstance(base, ast.Name) else ""


def model_classes(repo: Path) -> tuple[list[Found], Project]:
    project = Project(str(repo))
    found: list[Found] = []
    parsed: list[tuple[Path, ModuleFile, list[str]]] = []
    for path in python_files(repo):
        module = project.module_file(str(path))
        if module is None:
            continue
        try:
            models = FileModels(project, module)
            names = models.model_classes()
        except Exception as exc:  # torchls's analysis failing on a file is itself a finding
            print(f"  {path.relative_to(repo)}: analysis failed: {exc!r}", file=sys.stderr)
            names = []
        parsed.append((path, module, names))
        for name in names:
            node = models.classes[name]
            args: list[Any] = []
            kwargs: dict[str, Any] = {}
            source = "defaults"
            try:
                target = models.class_target(node)
                args, kwargs, source = target.args, target.kwargs, target.args_source
            except Exception as exc:
                source = f"analysis failed: {exc!r}"
            module_name, _, sys_path = project.module_name(str(path))
            found.append(
                Found(path, name, node.lineno, module_name, sys_path, args, kwargs, source)
            )
    found += _missed(parsed, {f.name for f in found}, project)
    found.sort(key=lambda f: (str(f.file), f.line))
    return found, project


def _missed(
    parsed: list[tuple[Path, ModuleFile, list[str]]], seen: set[str], project: Project
) -> list[Found]:
    """Top-level classes that subclass nn.Module by their bases' names (or a model class of the
    repository, by name) that torchls's analysis did not list: e.g. `nn` from a star import."""
    models = MODEL_BASES | seen
    candidates: list[tuple[Path, ast.ClassDef, ModuleFile]] = []
    for path, module, names in parsed:
        tree = module.tree()
        if tree is None:
            continue
        listed = set(names)
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name not in listed:
                candidates.append((path, node, module))
    missed: list[Found] = []
    taken: set[int] = set()
    grew = True
    while grew:  # a class whose base is a missed class is missed too
        grew = False
        for path, node, _module in candidates:
            if id(node) in taken or not any(_base_name(b) in models for b in node.bases):
                continue
            module_name, _, sys_path = project.module_name(str(path))
            missed.append(
                Found(path, node.name, node.lineno, module_name, sys_path, [], {}, "", True)
            )
            taken.add(id(node))
            models.add(node.name)
            grew = True
    return missed


# -- profiling with torchls ----------------------------------------------------------------------


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SERVER)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in the repositories
    return env


def profile(repo: Path, found: Found, hint: dict[str, str], timeout: float) -> dict[str, Any]:
    """torchls profile's JSON for one class, or {"ok": False, "error": {"message": ...}}."""
    relative = found.file.relative_to(repo).as_posix()
    command = [sys.executable, "-m", "torchls", "profile", f"{relative}::{found.name}"]
    command += ["--json", "--no-thop", "--workspace", str(repo), "--timeout", str(timeout)]
    command += ["--python", PYTHON[0]]
    if "args" in hint:
        command += ["--args", hint["args"]]
    if "input" in hint:
        command += ["--input", hint["input"]]
    try:
        done = subprocess.run(
            command,
            cwd=repo,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": {"message": f"timed out after {timeout + 30:.0f} s"}}
    try:
        payload: dict[str, Any] = json.loads(done.stdout)
        return payload
    except json.JSONDecodeError:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}, no output"
        return {"ok": False, "error": {"message": last}}


def first_line(text: str) -> str:
    lines = [line for line in str(text).splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


def cause_of(message: str) -> str:
    for pattern, cause in CAUSES:
        if re.search(pattern, message):
            return cause
    return "other"


def record(result: ClassResult, payload: dict[str, Any], repo: Path) -> bool:
    if not payload.get("ok"):
        result.message = first_line(payload.get("error", {}).get("message", ""))
        result.cause = cause_of(result.message)
        missing = re.search(r"No module named '(\w+)", result.message)
        if missing and not _in_repo(repo, missing.group(1)):
            result.cause = "a dependency missing from --python's environment (not torchls's)"
        return False
    value = payload["result"]
    result.params = value.get("parameters", {}).get("total")
    result.macs = value.get("macs")
    result.flops = value.get("flops")
    result.build = str(value.get("build", ""))
    result.inputs = value.get("inputs")
    result.message = result.cause = ""
    return True


def _in_repo(repo: Path, name: str) -> bool:
    """Whether a top-level module `name` is the repository's own (a file or folder in it)."""
    for _folder, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        if name in dirs or f"{name}.py" in files:
            return True
    return False


# -- is importing the real module safe? ----------------------------------------------------------


def _dotted(node: ast.expr) -> str:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    elif isinstance(node, ast.Call):
        parts.append(_dotted(node.func) + "()")
    return ".".join(reversed(parts))


def _is_main_guard(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


DEFINITIONS = (
    ast.Import,
    ast.ImportFrom,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Pass,
    ast.Global,
)


def script_code(body: list[ast.stmt]) -> str | None:
    """The first top-level statement that makes importing the module run a script, or None."""
    for stmt in body:
        if isinstance(stmt, DEFINITIONS):
            continue
        if isinstance(stmt, ast.Expr):
            if isinstance(stmt.value, ast.Constant):
                continue
            if isinstance(stmt.value, ast.Call) and HARMLESS_CALL.match(_dotted(stmt.value.func)):
                continue
            return f"line {stmt.lineno}: a top-level expression"
        if isinstance(stmt, ast.If):
            if _is_main_guard(stmt.test):
                continue
            inner = script_code(stmt.body) or script_code(stmt.orelse)
            if inner:
                return inner
            continue
        if isinstance(stmt, ast.Try):
            handlers = [s for h in stmt.handlers for s in h.body]
            inner = script_code(stmt.body + handlers + stmt.orelse + stmt.finalbody)
            if inner:
                return inner
            continue
        if isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
            for node in ast.walk(stmt):
                if isinstance(node, ast.Call) and RISKY_CALL.search(_dotted(node.func)):
                    return f"line {stmt.lineno}: calls {_dotted(node.func)}"
            continue
        return f"line {stmt.lineno}: a top-level {type(stmt).__name__.lower()}"
    return None


def _imported_modules(module: ModuleFile) -> list[str]:
    tree = module.tree()
    if tree is None:
        return []
    package = module.module.split(".")
    if not module.is_package:
        package = package[:-1]
    names: list[str] = []
    # Only what runs at import: top-level statements, and those in top-level if/try blocks.
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        stmt = stack.pop()
        if isinstance(stmt, ast.Import):
            names += [alias.name for alias in stmt.names]
        elif isinstance(stmt, ast.ImportFrom):
            base = package[: len(package) - stmt.level + 1] if stmt.level else []
            prefix = ".".join([*base, *([stmt.module] if stmt.module else [])])
            names.append(prefix)
            names += [f"{prefix}.{alias.name}" for alias in stmt.names if alias.name != "*"]
        elif isinstance(stmt, ast.If) and not _is_main_guard(stmt.test):
            stack += stmt.body + stmt.orelse
        elif isinstance(stmt, ast.Try):
            stack += stmt.body + [s for h in stmt.handlers for s in h.body] + stmt.orelse
    return [name.strip(".") for name in names if name.strip(".")]


def _import_closure(project: Project, found: Found) -> Iterator[tuple[str, ModuleFile]]:
    """The workspace modules importing the class's module runs (it first), with their names;
    installed libraries are not followed."""
    parts = found.module.split(".")
    # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
    todo = [".".join(parts[:i]) for i in range(1, len(parts))] + [found.module]
    seen: set[str] = set()
    start = str(found.file)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        module = project.find_module(name, start)
        if module is None:
            continue  # not the workspace's: an installed library
        yield name, module
        for dotted in _imported_modules(module):
            pieces = dotted.split(".")
            todo += [".".join(pieces[:i]) for i in range(1, len(pieces) + 1)]


def import_is_safe(project: Project, found: Found) -> str | None:
    """Why importing the class's module (and the workspace modules that import runs) would
    run script code, or None when it only defines things."""
    for name, module in _import_closure(project, found):
        tree = module.tree()
        if tree is None:
            return f"{name}: not valid Python"
        why = script_code(tree.body)
        if why:
            return f"{Path(module.path).name} {why}"
    return None


VIA_SKELETON = "class defined from torchls's skeleton of the script (importing it runs script code)"


def skeleton_plan(project: Project, found: Found) -> dict[str, list[int]]:
    """For each module of the import closure whose import would run script code, by path: the
    top-level statements (indexes into its body) torchls's skeleton of it keeps, which the
    checking process executes in place of the file, as torchls's worker does. Only the class's
    definition comes through torchls this way: building and counting stay torch's."""
    plan: dict[str, list[int]] = {}
    for _name, module in _import_closure(project, found):
        tree = ast.parse(module.text, filename=module.path)
        if script_code(tree.body) is None:
            continue  # imported as it is, as for any module that only defines things
        kept = {id(statement) for statement in skeleton(tree)[0].body}
        plan[module.path] = [i for i, stmt in enumerate(tree.body) if id(stmt) in kept]
    return plan


# -- checking the counts with torch itself -------------------------------------------------------

VERIFY = r"""
import json, os, signal, sys

SCRATCH = os.path.realpath(os.environ["TMPDIR"])

def refuse(event, args):
    if event == "open":
        mode = args[1] if len(args) > 1 else "r"
        flags = args[2] if len(args) > 2 else 0
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        )
        where = args[0]
        inside = isinstance(where, str) and os.path.realpath(where).startswith(SCRATCH + os.sep)
        if writes and not inside:
            raise PermissionError(f"the bench refuses to write {where!r}")
    elif event in ("os.mkdir", "os.remove", "os.rename", "os.rmdir", "shutil.rmtree",
                   "socket.connect", "subprocess.Popen", "os.system", "os.exec", "os.spawn",
                   "os.posix_spawn", "os.fork", "urllib.Request"):
        raise PermissionError(f"the bench refuses {event}")

job = json.load(sys.stdin)
import importlib
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

# The CPU's fused attention kernel, which a model may pick itself inside its forward (`with
# torch.backends.cuda.sdp_kernel(enable_flash=True, ...)` overrides the math path chosen
# below), has no FlopCounterMode formula and counts 0: it does the products the math path does,
# so it is given the formula of the other fused kernels.
try:
    from torch.utils.flop_counter import register_flop_formula, sdpa_flop_count

    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_flash_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)
except (AttributeError, ImportError, RuntimeError, ValueError):
    pass  # no such kernel in this torch, or torch counts it already

# torch imports and caches parts of itself on first use: do that before the hook is on.
with torch.enable_grad(), FlopCounterMode(display=False):
    torch.nn.Linear(2, 2)(torch.ones(1, 2))
sys.argv = [job["file"]]
os.chdir(job["repo"])
for folder in (job["repo"], job["sys_path"]):
    if folder not in sys.path:
        sys.path.insert(0, folder)
sys.addaudithook(refuse)

# A module whose import would run script code is executed as torchls's skeleton of it (the
# top-level statements the bench lists, by index into the file's body): its definitions, the
# state they read and argparse with the script's defaults, never its training loop.
import ast
import importlib.abc
import importlib.machinery

SKELETONS = {os.path.realpath(path): kept for path, kept in job.get("skeletons", {}).items()}

class Skeletons(importlib.abc.MetaPathFinder, importlib.abc.Loader):

    def find_spec(self, fullname, path, target=None):
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        origin = getattr(spec, "origin", None)
        if not origin or os.path.realpath(origin) not in SKELETONS:
            return None
        spec.loader = self
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        path = module.__file__
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read(), filename=path)
        body = [tree.body[index] for index in SKELETONS[os.path.realpath(path)]]
        code = compile(ast.Module(body=body, type_ignores=[]), path, "exec")
        exec(code, module.__dict__)  # sys.argv is [the file]: argparse gives its defaults

if SKELETONS:
    sys.meta_path.insert(0, Skeletons())

def alarm(signum, frame):
    raise TimeoutError("timed out")
signal.signal(signal.SIGALRM, alarm)

def resolve(ref):
    if "import" in ref:
        pieces = ref["import"].split(".")
        for cut in range(len(pieces), 0, -1):
            try:
                value = importlib.import_module(".".join(pieces[:cut]))
            except ImportError:
                continue
            for piece in pieces[cut:]:
                value = getattr(value, piece)
            return value
        raise ImportError(ref["import"])
    if ref.get("sys_path") and ref["sys_path"] not in sys.path:
        sys.path.insert(0, ref["sys_path"])
    value = importlib.import_module(ref["module"])
    for piece in ref["qualname"].split("."):
        value = getattr(value, piece)
    return value

class Unreadable(Exception):
    pass

# The names of typed arguments, as eval's locals: the module's own first (eval looks here before
# its globals), then builtins; a name the module does not bind (`VanillaVAE(3, 128)` for a
# wrapper that imports only the base class) is what `from <its package> import Name` gives,
# else the one class of that name defined in the repository, imported by its dotted path.
class Elsewhere(dict):

    def __init__(self, namespace, module, repo):
        super().__init__()
        self.namespace, self.module, self.repo = namespace, module, repo

    def __missing__(self, name):
        if name in self.namespace:
            return self.namespace[name]
        import builtins
        if hasattr(builtins, name):
            return getattr(builtins, name)
        parts = self.module.split(".")[:-1]
        for cut in range(len(parts), 0, -1):
            try:
                return getattr(importlib.import_module(".".join(parts[:cut])), name)
            except (ImportError, AttributeError):
                continue
        import re
        pattern = re.compile(rf"^class\s+{name}\b", re.M)
        found = []
        for folder, folders, files in os.walk(self.repo):
            folders[:] = [f for f in folders if not f.startswith(".")]
            for file in files:
                path = os.path.join(folder, file)
                if file.endswith(".py") and pattern.search(open(path, errors="replace").read()):
                    found.append(os.path.relpath(path, self.repo)[:-3].replace(os.sep, "."))
        if len(found) != 1:
            raise NameError(f"{name}: {len(found)} classes of that name in the repository")
        return getattr(importlib.import_module(found[0]), name)

def value_of(v):
    if "literal" in v:
        return v["literal"]
    for kind, make in (("tuple", tuple), ("list", list), ("set", set)):
        if kind in v:
            return make(value_of(item) for item in v[kind])
    if "dict" in v:
        return {value_of(k): value_of(x) for k, x in v["dict"]}
    if "ref" in v:
        return resolve(v["ref"])
    if "call" in v:
        call = v["call"]
        made = resolve(call["ref"])(
            *[value_of(a) for a in call["args"]],
            **{k: value_of(x) for k, x in call["kwargs"].items()},
        )
        for key, x in (v.get("setattr") or {}).items():  # config.n_layer = 12 after the call
            setattr(made, key, value_of(x))
        return made
    if "unknown" in v:  # the server could not read it statically, and says why
        raise Unreadable(f"an argument torchls cannot read: {v.get('why') or v['unknown']}")
    raise Unreadable(f"a value torchls reads as {sorted(v)}")

def tensor(spec, device):
    dtype = getattr(torch, spec.get("dtype", "float32"))
    shape = tuple(spec["shape"])
    if device == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)

def inputs_of(spec, device):
    def make(item):
        if isinstance(item, dict) and "value" in item:  # mode="val", fmap_dims={...}
            return item["value"]
        if isinstance(item, dict) and "shape" in item:
            return tensor(item, device)
        if isinstance(item, dict) and "tuple" in item:  # an LSTM's (h, c)
            return tuple(make(x) for x in item["tuple"])
        if isinstance(item, (list, tuple)):
            return tuple(make(x) for x in item)
        raise Unreadable(f"an input torchls describes as {item!r}"[:120])
    args = [make(item) for item in spec.get("tensors", [])]
    kwargs = {k: make(x) for k, x in (spec.get("kwargs") or {}).items()}
    return args, kwargs

for case in job["classes"]:
    out = {"name": case["name"]}
    signal.alarm(int(job["timeout"]))
    try:
        torch.manual_seed(0)
        module = importlib.import_module(job["module"])
        cls = getattr(module, case["name"])
        device = "meta" if case["meta"] else "cpu"
        with torch.device(device):
            if case.get("args_text") is not None:
                model = eval(case["name"] + case["args_text"], dict(vars(module)),
                             Elsewhere(vars(module), job["module"], job["repo"]))
            else:
                model = cls(*[value_of(a) for a in case["args"]],
                            **{k: value_of(x) for k, x in case["kwargs"].items()})
        out["params"] = sum(p.numel() for p in model.parameters())
        args, kwargs = inputs_of(case["inputs"] or {}, device)
        model.eval()
        counter = FlopCounterMode(display=False)
        # On CPU tensors, scaled_dot_product_attention runs a fused kernel FlopCounterMode has
        # no formula for (it counts 0); its math path does the same products and is counted.
        # So do LSTM/GRU layers: oneDNN's fused RNN kernel is counted as 0, the plain path's
        # matrix products (the same work) are counted.
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), \
                torch.backends.mkldnn.flags(enabled=False), counter:
            model(*args, **kwargs)
        out["flops"] = int(counter.get_total_flops())
        out["device"] = device
    except Unreadable as exc:
        out["unverifiable"] = f"cannot rebuild the arguments: {exc}"
    except PermissionError as exc:
        out["unverifiable"] = str(exc)
    except BaseException as exc:
        out["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    finally:
        signal.alarm(0)
    print(json.dumps(out), flush=True)
"""


def verify(
    repo: Path,
    found: list[Found],
    results: list[ClassResult],
    timeout: float,
    skeletons: dict[str, list[int]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Torch's own counts for the profiled classes of one module, by class name; the modules
    of `skeletons` (see skeleton_plan) are executed as torchls's skeletons of them."""
    first = found[0]
    cases = []
    for item, result in zip(found, results, strict=True):
        fits = (result.params or 0) * 4 <= META_ABOVE_BYTES
        case: dict[str, Any] = {
            "name": item.name,
            "inputs": result.inputs,
            "meta": not fits,
            "args": item.args,
            "kwargs": item.kwargs,
        }
        if result.outcome == "hints" and "args" in result.hint:
            case["args_text"] = result.hint["args"]  # what the user typed, as Python reads it
        cases.append(case)
    job = {
        "repo": str(repo),
        "file": str(first.file),
        "module": first.module,
        "sys_path": first.sys_path,
        "timeout": timeout,
        "classes": cases,
        "skeletons": skeletons or {},
    }
    with tempfile.TemporaryDirectory(prefix="torchls-reach-") as scratch:
        script = Path(scratch) / "verify.py"
        script.write_text(VERIFY)
        env = environment()
        env.pop("PYTHONPATH")  # torch's counts, with no torchls on the path
        env["TMPDIR"] = scratch  # the one place the checking process may write
        try:
            done = subprocess.run(
                [PYTHON[0], str(script)],
                input=json.dumps(job),
                cwd=scratch,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout * len(cases) + 60,
                check=False,
            )
            output = done.stdout
            trouble = first_line(done.stderr.strip().splitlines()[-1]) if done.stderr else ""
        except subprocess.TimeoutExpired as exc:
            output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            trouble = "timed out"
    answers: dict[str, dict[str, Any]] = {}
    for line in output.splitlines():
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            continue
        answers[answer["name"]] = answer
    for item in found:
        answers.setdefault(item.name, {"error": f"the checking process ended: {trouble}"})
    return answers


def judge(result: ClassResult, answer: dict[str, Any]) -> None:
    if "unverifiable" in answer:
        result.check, result.check_detail = "not verifiable", answer["unverifiable"]
        return
    if "error" in answer:
        result.check = "not verifiable"
        result.check_detail = f"torch itself could not build or run it: {answer['error']}"
        return
    result.torch_params, result.torch_flops = answer["params"], answer["flops"]
    wrong = []
    if result.params != result.torch_params:
        wrong.append(f"params torchls {result.params:,} vs torch {result.torch_params:,}")
    if result.flops != result.torch_flops:
        flops = result.flops if result.flops is not None else -1
        wrong.append(f"FLOPs torchls {flops:,} vs torch {result.torch_flops:,}")
    result.check = "mismatch" if wrong else "exact"
    result.check_detail = "; ".join(wrong) or f"on {answer.get('device', 'cpu')}"


# -- one repository ------------------------------------------------------------------------------


def measure(
    repo: Path, hints: dict[str, dict[str, str]], args: argparse.Namespace
) -> list[ClassResult]:
    found, project = model_classes(repo)
    if args.limit and len(found) > args.limit:
        # Evenly spread over the repository (files in path order), not its first files only.
        step = len(found) / args.limit
        found = [found[int(i * step)] for i in range(args.limit)]
    name = repo.name
    print(f"{name}: {len(found)} model classes", file=sys.stderr)
    results = [
        ClassResult(name, f.file.relative_to(repo).as_posix(), f.name, f.line, f.missed)
        for f in found
    ]

    def one(index: int) -> None:
        item, result = found[index], results[index]
        started = time.monotonic()
        if record(result, profile(repo, item, {}, args.timeout), repo):
            result.outcome = "laid-out"
        else:
            hint = hints.get(f"{result.file}::{result.name}")
            if hint:
                result.hint = dict(hint)
                first_failure = (result.message, result.cause)
                if record(result, profile(repo, item, hint, args.timeout), repo):
                    result.outcome = "hints"
                else:  # keep why it fails as laid out: that is what the issue fixes
                    result.hint_message = result.message
                    result.message, result.cause = first_failure
        result.seconds = round(time.monotonic() - started, 1)
        state = result.outcome if result.outcome != "failed" else f"failed: {result.message}"
        print(f"  {result.file}::{result.name}: {state} ({result.seconds} s)", file=sys.stderr)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, range(len(found))))

    by_module: dict[str, list[int]] = defaultdict(list)
    scripts: dict[str, str] = {}  # by file: why importing it runs script code
    for index, result in enumerate(results):
        if result.outcome == "failed":
            continue
        why = import_is_safe(project, found[index])
        if why:
            scripts[str(found[index].file)] = why
        # By file: many scripts' folders hold a top-level `models.py`, each its own module.
        by_module[str(found[index].file)].append(index)

    def check(indexes: list[int]) -> None:
        why = scripts.get(str(found[indexes[0]].file))
        plan = None
        if why:
            try:
                plan = skeleton_plan(project, found[indexes[0]])
            except (OSError, SyntaxError, ValueError, RecursionError) as exc:
                detail = f"importing it runs script code: {why}; no skeleton of it: {exc!r}"
                for i in indexes:
                    results[i].check, results[i].check_detail = "not verifiable", detail
                return
        answers = verify(
            repo, [found[i] for i in indexes], [results[i] for i in indexes], 300, plan
        )
        for i in indexes:
            judge(results[i], answers[found[i].name])
            if why:  # say how the reference got the class, with the reason
                results[i].check_detail = f"{VIA_SKELETON}: {why}; {results[i].check_detail}"

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(check, by_module.values()))
    return results


# -- the report ----------------------------------------------------------------------------------


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def summary(results: list[ClassResult]) -> dict[str, int]:
    outcome = Counter(r.outcome for r in results)
    check = Counter(r.check for r in results)
    return {
        "found": len(results),
        "missed": sum(r.missed for r in results),
        "laid_out": outcome["laid-out"],
        "hints": outcome["hints"],
        "failed": outcome["failed"],
        "exact": check["exact"],
        "mismatch": check["mismatch"],
        "not_verifiable": check["not verifiable"],
    }


def report(by_repo: dict[str, list[ClassResult]]) -> None:
    header = f"{'repository':<28}{'found':>6}{'missed':>8}{'laid out':>10}{'hints':>7}{'failed':>8}"
    header += f"{'exact':>7}{'mismatch':>10}{'unverif.':>10}{'profiled':>10}"
    print(header)
    print("-" * len(header))
    everything: list[ClassResult] = []
    for name, results in by_repo.items():
        everything += results
        s = summary(results)
        profiled = share(s["laid_out"] + s["hints"], s["found"])
        print(
            f"{name:<28}{s['found']:>6}{s['missed']:>8}{s['laid_out']:>10}{s['hints']:>7}{s['failed']:>8}"
            f"{s['exact']:>7}{s['mismatch']:>10}{s['not_verifiable']:>10}{profiled:>10}"
        )
    s = summary(everything)
    print("-" * len(header))
    print(
        f"{'all':<28}{s['found']:>6}{s['missed']:>8}{s['laid_out']:>10}{s['hints']:>7}{s['failed']:>8}"
        f"{s['exact']:>7}{s['mismatch']:>10}{s['not_verifiable']:>10}"
        f"{share(s['laid_out'] + s['hints'], s['found']):>10}"
    )
    print()
    checked = s["exact"] + s["mismatch"]
    print(
        f"profiled as laid out: {s['laid_out']}/{s['found']} "
        f"({share(s['laid_out'], s['found'])}); with --args/--input hints: "
        f"{s['laid_out'] + s['hints']}/{s['found']} "
        f"({share(s['laid_out'] + s['hints'], s['found'])}); target 90%"
    )
    print(
        f"exact against torch: {s['exact']}/{checked} checked ({share(s['exact'], checked)}); "
        f"{s['not_verifiable']} profiled but not verifiable; target 100%"
    )
    per_repo = [
        share(summary(r)["laid_out"] + summary(r)["hints"], len(r)) for r in by_repo.values()
    ]
    print(f"per repository profiled: {', '.join(per_repo)}")

    missed = [r for r in everything if r.missed]
    if missed:
        print(
            f"\n{len(missed)} model classes not listed by torchls's static analysis (no hover; "
            "profiled by FILE::Class all the same), e.g. "
            + ", ".join(f"{r.repo}/{r.file}::{r.name}" for r in missed[:4])
        )
    failed = [r for r in everything if r.outcome == "failed"]
    if failed:
        print("\nfailures by cause (as laid out):")
        groups: dict[str, list[ClassResult]] = defaultdict(list)
        for r in failed:
            groups[r.cause].append(r)
        for cause, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            print(f"\n  {len(items):>3}  {cause}")
            messages = Counter(_normalise(r.message) for r in items)
            for message, count in messages.most_common(6):
                example = next(r for r in items if _normalise(r.message) == message)
                print(f"       {count:>3} x {message}")
                print(f"             e.g. {example.repo}/{example.file}::{example.name}")
            if len(messages) > 6:
                print(f"       ... and {len(messages) - 6} other messages")
    hinted = [r for r in failed if r.hint_message]
    if hinted:
        print("\nfailing with the corpus's --args/--input too:")
        for r in hinted:
            print(f"  {r.repo}/{r.file}::{r.name}: {r.hint_message}")
    wrong = [r for r in everything if r.check == "mismatch"]
    if wrong:
        print("\nmismatches against torch:")
        for r in wrong:
            print(f"  {r.repo}/{r.file}::{r.name}: {r.check_detail}")
    unverifiable = [r for r in everything if r.check == "not verifiable"]
    if unverifiable:
        print("\nprofiled but not verifiable:")
        reasons = Counter(_normalise(r.check_detail) for r in unverifiable)
        for reason, count in reasons.most_common():
            example = next(r for r in unverifiable if _normalise(r.check_detail) == reason)
            print(f"  {count:>3} x {reason}")
            print(f"        e.g. {example.repo}/{example.file}::{example.name}")


def _normalise(message: str) -> str:
    """Messages that differ only in names, numbers and lines, as one."""
    message = re.sub(r"line \d+", "line N", message)
    message = re.sub(r"\d+(\.\d+)?", "N", message)
    return message[:160]


# -- main ----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repos", nargs="*", type=Path, help="repository checkouts")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/work/scratch/repos"),
        help="where the corpus's clones are, by name (used when no REPO_PATH is given)",
    )
    parser.add_argument("--repos", dest="only", help="only these repositories (names, commas)")
    parser.add_argument(
        "--limit", type=int, default=0, help="classes per repository, evenly spread (0: all)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="profiles at once (1)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per profile")
    parser.add_argument("--json", action="store_true", help="every class's outcome as JSON too")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter that has torch and the repositories' own dependencies "
        "(torchvision, einops, ...): runs torchls's worker (--python) and the check",
    )
    parser.add_argument(
        "--server",
        type=Path,
        default=SERVER,
        help="the torchls server folder to measure (default: this checkout's server/)",
    )
    parser.add_argument(
        "--loads",
        action="store_true",
        help="measure the load checks instead (bench/loads.py, on the same repositories)",
    )
    args = parser.parse_args()
    PYTHON[0] = args.python

    corpus: dict[str, Any] = {}
    if args.corpus.is_file():
        corpus = json.loads(args.corpus.read_text()).get("repositories", {})
    elif args.corpus != DEFAULT_CORPUS:
        parser.error(f"{args.corpus}: no such file")
    repos: list[Path] = [p.resolve() for p in args.repos]
    if not repos:
        repos = [args.root / name for name in corpus if (args.root / name).is_dir()]
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        repos = [p for p in repos if p.name in wanted]
    if not repos:
        parser.error("no repository to measure (give REPO_PATH, or --root with the corpus's)")
    if args.loads:
        command = [sys.executable, str(BENCH / "loads.py"), *map(str, repos)]
        command += ["--python", args.python, "--timeout", str(args.timeout)]
        command += ["--server", str(SERVER), *["--json"] * args.json]
        return subprocess.run(command, check=False).returncode

    started = time.monotonic()
    by_repo: dict[str, list[ClassResult]] = {}
    commits: dict[str, str] = {}
    for repo in repos:
        if not repo.is_dir():
            parser.error(f"{repo}: not a folder")
        entry = corpus.get(repo.name, {})
        head = _head(repo)
        commits[repo.name] = head
        if entry.get("commit") and head and entry["commit"] != head:
            print(
                f"{repo.name}: at {head[:10]}, the corpus measured {entry['commit'][:10]}",
                file=sys.stderr,
            )
        by_repo[repo.name] = measure(repo, entry.get("hints", {}), args)
    elapsed = time.monotonic() - started

    print()
    report(by_repo)
    everything = [r for results in by_repo.values() for r in results]
    s = summary(everything)
    print(f"\n{len(everything)} classes in {elapsed / 60:.1f} min (--jobs {args.jobs}), {SERVER}")
    line: dict[str, Any] = {
        "bench": "reach",
        "repositories": {name: summary(r) for name, r in by_repo.items()},
        "commits": commits,
        "server": str(SERVER),
        "total": s,
        "profiled_share": round((s["laid_out"] + s["hints"]) / s["found"], 4) if s["found"] else 0,
        "laid_out_share": round(s["laid_out"] / s["found"], 4) if s["found"] else 0,
        "exact_share": (
            round(s["exact"] / (s["exact"] + s["mismatch"]), 4)
            if s["exact"] + s["mismatch"]
            else None
        ),
        "causes": dict(Counter(r.cause for r in everything if r.outcome == "failed")),
        "seconds": round(elapsed),
    }
    if args.json:
        line["classes"] = [asdict(r) for r in everything]
    print(json.dumps(line))
    return 0


def _head(repo: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
