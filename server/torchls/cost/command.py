"""`torchls profile FILE::Name`: the hover's report in a terminal, or as JSON.

The target is a model class (or a function that returns a model) defined at the top level of
FILE, or `package.module::name` for an installed library's constructor. The model is built and
counted by the same worker job as the hover, started with this interpreter or `--python`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from torchls.cost import report
from torchls.cost.request import prepare
from torchls.source.inputs import from_text
from torchls.source.models import FileModels, ModelTarget, models_of
from torchls.source.project import ModuleFile, Project
from torchls.source.spec import InputSpec, SpecError, substitute_json, symbol_of_json
from torchls.source.text import Span
from torchls.worker.client import WorkerClient, WorkerSettings

SCHEMA = "torchls.profile/1"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        help="FILE::Name (a model class or a function returning a model, at the top level of "
        "FILE) or package.module::name (an installed library's constructor)",
    )
    parser.add_argument(
        "--input",
        help="the forward's inputs, e.g. 1,3,224,224 or '(1, 128):long' or '(1, 3, 32, 32), "
        "(1, 10)'; a tuple '(35, 1):long, ((2, 1, 200), (2, 1, 200))'; by name "
        "'input_ids=(1, 128):long, attention_mask=(1, 128):long'; plain values beside them "
        "\"(1, 65, 64), fmap_dims={'h': 8, 'w': 8}, mode='eval'\"; dtypes long, int32, half, "
        "bfloat16, double, bool, complex64, ...",
    )
    parser.add_argument(
        "--args",
        help="constructor arguments, e.g. '(10, width=64)' or '(GPTConfig(n_layer=2),)' "
        "(calls of your classes, SimpleNamespace, Hugging Face configs); a class of the "
        "workspace the file does not import is found by its name: '(VanillaVAE(3, 128), {})'",
    )
    parser.add_argument(
        "--sweep",
        metavar="NAME=V1,V2,...",
        help="count at several sizes of a named dimension of --input and fit the exact "
        "polynomial, checked on one more size: --input '(1, L):long' --sweep L=128,256,512,1024 "
        f"(2 to {MAX_SWEEP_VALUES} values)",
    )
    parser.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=24.0,
        help="the GPU memory the largest training batch must fit, in GiB (24)",
    )
    parser.add_argument("--json", action="store_true", help=f"print the {SCHEMA} JSON")
    parser.add_argument("--python", help="the interpreter that has torch (default: this one)")
    parser.add_argument(
        "--workspace", help="the folder your code imports from (default: the current one)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds (120)")
    parser.add_argument("--memory-mb", type=int, default=8192, help="worker memory limit (8192)")
    parser.add_argument("--no-thop", action="store_true", help="skip the comparison with thop")


def run(args: argparse.Namespace) -> int:
    try:
        target, project, document = _target(args)
        override = _input_override(args.input)
    except UsageError as exc:
        print(f"torchls profile: {exc}", file=sys.stderr)
        return EXIT_USAGE
    prepared = prepare(target, project, document, input_override=override)
    params = dict(prepared.params)
    try:
        _settle_named_dimension(params, args.sweep)
    except UsageError as exc:
        print(f"torchls profile: {exc}", file=sys.stderr)
        return EXIT_USAGE
    params["thop"] = not args.no_thop
    params["front"] = "cli"  # messages say --args/--input, not a comment in a file
    workspace = str(Path(args.workspace or ".").resolve())
    settings = WorkerSettings(
        command=(args.python or sys.executable,),
        workspace=workspace,
        allow_user_code=True,  # the user asked for this file by name
        timeout_seconds=args.timeout,
        memory_limit_mb=args.memory_mb,
    )
    result, explained = asyncio.run(_run_job(settings, params, project, target))
    context = report.ReportContext(
        call=target.call_text(),
        args_source=target.args_source,
        kind=target.kind,
        problems=list(prepared.problems),
        gpu_memory_gb=args.gpu_memory_gb,
    )
    if args.json:
        payload: dict[str, Any] = {"schema": SCHEMA, "target": args.target, "ok": result.ok}
        if result.ok:
            payload["result"] = result.value
            payload["memory"] = report.memory(result.value)
        else:
            payload["error"] = {"kind": result.error_kind, "message": result.message}
            if explained:
                payload["error"]["explanation"] = explained
        payload["problems"] = list(prepared.problems)
        print(json.dumps(payload, indent=2))
    elif result.ok:
        print(report.text(result.value, context))
    else:
        message = str(result.message)
        if message.startswith("forward() failed") and "--input" not in message:
            message += "; if the input is not what forward() takes, pass --input '(...)'"
        print(f"torchls profile: {target.name}: {message}", file=sys.stderr)
        for line in explained:  # a shape error: where, why, and the fix, verified
            print(f"  {line}", file=sys.stderr)
        for problem in prepared.problems:
            print(f"  note: {problem}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


async def _run_job(
    settings: WorkerSettings, params: dict[str, Any], project: Project, target: ModelTarget
) -> tuple[Any, list[str]]:
    """The profile's result and, when its forward failed on a shape, the explanation's lines
    (the fix re-profiled on the edited text in memory first; no file is written)."""
    from torchls.lsp import shape_checks

    worker = WorkerClient(settings)
    try:
        result = await worker.run("profile", params)
        data = result.data if not result.ok and isinstance(result.data, dict) else {}
        found = data.get("shape_error")
        if not isinstance(found, dict):
            return result, []
        ref = target.ref if isinstance(target.ref, dict) else {}
        try:
            lines = await shape_checks.describe_and_verify(
                found,
                project,
                params,
                lambda job: worker.run("profile", {**job, "thop": False, "training": False}),
                shape_checks.model_class(project, ref),
            )
        except Exception as exc:  # the explanation is extra: the error above stands alone
            lines = [f"(torchls could not explain this shape error: {exc})"]
        return result, lines
    finally:
        await worker.stop()


MAX_SWEEP_VALUES = 12


def parse_sweep(text: str) -> tuple[str, list[int]]:
    """`L=128,256,512,1024` -> ("L", [128, 256, 512, 1024])."""
    name, separator, listed = text.partition("=")
    name = name.strip()
    if not separator or not name.isidentifier() or not name.isascii():
        raise UsageError(f"--sweep takes NAME=V1,V2,..., e.g. L=128,256,512,1024, not {text!r}")
    values: list[int] = []
    for part in listed.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or int(part) == 0:
            raise UsageError(f"--sweep {text}: {part!r} is not a positive whole number")
        if int(part) not in values:
            values.append(int(part))
    if not 2 <= len(values) <= MAX_SWEEP_VALUES:
        raise UsageError(f"--sweep {text}: give 2 to {MAX_SWEEP_VALUES} different values of {name}")
    return name, sorted(values)


def _settle_named_dimension(params: dict[str, Any], sweep: str | None) -> None:
    """A named dimension in the input (`(1, L):long`) is swept with --sweep, or takes the value
    written with it (`L=512`); the job gets `sweep` params, or concrete inputs."""
    inputs = params.get("inputs")
    symbol = symbol_of_json(inputs) if isinstance(inputs, dict) else None
    if sweep is None:
        if symbol is None:
            return
        nominal = inputs.get("nominal") if isinstance(inputs, dict) else None
        if not isinstance(nominal, int):
            raise UsageError(
                f"the input names a dimension {symbol}: give it a value, e.g. ({symbol}=512) in "
                f"--input, or sweep it with --sweep {symbol}=128,256,512,1024"
            )
        params["inputs"] = substitute_json(inputs or {}, symbol, nominal)
        return
    name, values = parse_sweep(sweep)
    if symbol is None:
        raise UsageError(
            f"--sweep {name}=...: the input has no dimension named {name}; write it in "
            f"--input, e.g. '(1, {name}):long' or '(1, 3, {name}, {name})'"
        )
    if symbol != name:
        raise UsageError(f"--sweep {name}=...: the input's named dimension is {symbol}, not {name}")
    params["sweep"] = {"symbol": name, "values": values}


def _input_override(text: str | None) -> InputSpec | None:
    if text is None:
        return None
    try:
        return from_text(text, "--input")
    except SpecError as exc:
        raise UsageError(str(exc)) from None


def _target(args: argparse.Namespace) -> tuple[ModelTarget, Project, str]:
    where, separator, name = str(args.target).rpartition("::")
    if not separator or not where or not name.isidentifier():
        raise UsageError(
            f"expected FILE::Name or package.module::name, not {args.target!r} "
            "(e.g. examples/model.py::SmallConvNet)"
        )
    project = Project(str(Path(args.workspace or ".").resolve()))
    file = Path(where)
    module: ModuleFile | None = None
    if file.is_file():
        module = project.module_file(str(file.resolve()))
        if module is None:
            raise UsageError(f"cannot read {where}")
    elif where.endswith(".py") or "/" in where:
        raise UsageError(f"{where} is not a file")
    elif all(part.isidentifier() for part in where.split(".")):
        # `unet::UNet`: a workspace package or module by its dotted name, as
        # `python -c "from unet import UNet"` from the workspace would find it
        module = project.find_module(where)
    if module is None:
        target = ModelTarget(
            kind="construction",
            name=name,
            span=Span(0, 0, 0, 0),
            line=0,
            ref={"import": f"{where}.{name}"},
            setting_key=name,
        )
        _apply_args(target, args.args, None)
        return target, project, where
    models = FileModels(project, module)
    if models.tree is None:
        raise UsageError(f"{where} is not valid Python")
    if name not in module.top_level_names():
        # a package's `__init__.py` that re-exports the class from its own submodule
        imported = module.imports().names.get(name)
        found = project.resolve_symbol(imported, module.path) if imported else None
        if found is None or "." in found[1] or found[1] not in found[0].top_level_names():
            raise UsageError(
                f"{where} defines no class or function {name!r} at the top level"
                + (" (nor imports one from this workspace)" if imported else "")
            )
        module, name = found
        models = models_of(project, module)
    tree = models.tree
    if tree is None:
        raise UsageError(f"{Path(module.path).name} is not valid Python")
    defined = {
        node.name: node for node in tree.body if hasattr(node, "name") and hasattr(node, "body")
    }
    if name not in defined:
        raise UsageError(f"{where} defines no class or function {name!r} at the top level")
    if name in models.classes:
        target = models.class_target(models.classes[name])
    else:
        target = ModelTarget(
            kind="class",
            name=name,
            span=Span(0, 0, 0, 0),
            line=defined[name].lineno,
            ref=models._file_ref(module, name),
            defining_file=module,
            setting_key=name,
        )
    _apply_args(target, args.args, models)
    return target, project, module.path


def _apply_args(target: ModelTarget, text: str | None, models: FileModels | None) -> None:
    """`--args '(GPTConfig(n_layer=2), dropout=0.0)'`: literals, and calls the hover makes too
    (your classes and functions, their methods, SimpleNamespace, Hugging Face configs), with
    names resolved as the target's own file (or the library module) would resolve them."""
    if text is None:
        return
    import ast

    from torchls.source.imports import dotted_name
    from torchls.source.values import keyword_dict, parse_argument_list, read_value

    call = parse_argument_list(text)
    if call is None:
        raise UsageError(f"--args must be an argument list like '(10, width=64)', not {text!r}")
    package = str(target.ref.get("import", "")).rpartition(".")[0]
    notes: list[str] = []

    def resolve(node: ast.expr) -> Any:
        found = models._resolve_written(node, notes) if models is not None else None
        if found is None and isinstance(node, ast.Name) and node.id == "SimpleNamespace":
            return {"ref": {"import": "types.SimpleNamespace"}}
        if found is None and models is None and (dotted := dotted_name(node)):
            # a library target: bare names are the library module's own (`GPT2Config`)
            where = f"{package}.{dotted}" if isinstance(node, ast.Name) and package else dotted
            return {"ref": {"import": where}}
        return found

    def read(node: ast.expr) -> Any:
        return read_value(node, resolve, lambda name, line: None)

    target.args = [read(arg) for arg in call.args if not isinstance(arg, ast.Starred)]
    target.kwargs = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            expanded = keyword_dict(read(keyword.value))
            if expanded is None:
                raise UsageError(f"--args: cannot read **{ast.unparse(keyword.value)}")
            target.kwargs.update(expanded)
        else:
            target.kwargs[keyword.arg] = read(keyword.value)
    unknown = [v for v in [*target.args, *target.kwargs.values()] if "unknown" in v]
    if len(target.args) != len(call.args):
        raise UsageError("--args cannot take *args; write the values out")
    if unknown:
        raise UsageError(
            f"--args: cannot read `{unknown[0]['unknown']}` ({unknown[0]['why']}); give "
            "literals, or calls of your own classes, SimpleNamespace or a Hugging Face config, "
            "e.g. '(GPTConfig(n_layer=2, n_embd=128),)'"
        )
    target.args_source = "--args"
    target.problems += list(dict.fromkeys(notes))
