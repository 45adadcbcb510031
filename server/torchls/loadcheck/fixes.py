"""Quick fixes for a load site, each one checked before it is offered.

A fix is a set of text edits to the load (the `load_state_dict` call and the `torch.load` call
that feeds it). Every candidate is applied to the source text, the edited file is read again,
and the comparison runs again on the edited site with the same checkpoint and model: only fixes
after which the load no longer raises are offered, and `strict=False` never where it would load
nothing or where a shape mismatch makes it raise anyway.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torchls.compare import compare
from torchls.convert.run import Options, default_output
from torchls.loadcheck.analysis import (
    NOT_A_TENSOR,
    Checkpoint,
    ModelKeys,
    Outcome,
    apply_step,
    effective_model,
    tied_missing,
)
from torchls.source.loads import LoadSite, Step
from torchls.source.text import Span, line_ending, offset_at, position_at

# Re-reads the edited text: the site that starts where the original started (or at the given
# 0-based line and column, where an edit moved it), and its outcome.
Recheck = Callable[[str, "tuple[int, int] | None"], tuple[LoadSite, Outcome] | None]
THOP_SUFFIXES = ("total_ops", "total_params")
KEY_CODES = {"keys", "shapes", "nested", "partial"}


@dataclass(frozen=True)
class Edit:
    span: Span
    text: str


@dataclass
class Fix:
    title: str
    edit: Edit  # one edit, so that one undo takes it back
    fixes: list[str] = field(default_factory=list)  # the finding codes it removes
    preferred: bool = False
    # False: it makes the load work by trusting the file (weights_only=False); `torchls check
    # --fix` never applies such a fix.
    safe: bool = True
    trusted_globals: bool = False  # safe_globals([...]): the file's classes, named


@dataclass
class _Candidate:
    titles: list[str]
    text: str  # the whole edited file
    risky: bool = False  # weights_only=False: never the preferred fix
    trusting: bool = False  # allows named globals: fine to prefer, never applied by --fix
    at: tuple[int, int] | None = None  # where the load starts in `text`, when it moved


def propose(
    site: LoadSite,
    outcome: Outcome,
    checkpoint: Checkpoint | None,
    model: ModelKeys | None,
    text: str,
    recheck: Recheck,
) -> list[Fix]:
    """The fixes after which this load raises nothing (and, when the keys were wrong, loads some
    of the model): each problem's fix alone when it is the only problem, and together when a
    load has several (`torch.load` refusing the file *and* a prefix)."""
    if not outcome.findings or checkpoint is None:
        return []
    model = effective_model(site, model)
    codes = sorted({f.code for f in outcome.findings if f.severity in {"error", "warning"}})
    stages = [_Candidate([], text)]
    for loader_fix in _loader_fixes(site, outcome, text):
        stages.append(loader_fix)
    trusted = _safe_globals_fix(site, outcome, checkpoint, text)
    if len(stages) == 3:  # both: weights_only=False and map_location
        both = _loader_fixes(site, outcome, text, combined=True)
        stages += both
    candidates = [stage for stage in stages[1:]]
    if trusted is not None:
        candidates.insert(0, trusted)
    for stage in stages:
        found = (site, outcome) if stage.text == text else recheck(stage.text, stage.at)
        if found is None:
            continue
        stage_site, stage_outcome = found
        for key_fix in _key_fixes(stage_site, stage_outcome, checkpoint, model, stage.text):
            candidates.append(_Candidate(stage.titles + key_fix.titles, key_fix.text, stage.risky))
    offered: list[Fix] = []
    wanted_keys = any(code in KEY_CODES for code in codes)
    for candidate in candidates:
        after = recheck(candidate.text, candidate.at)
        if after is None:
            continue
        result = after[1]
        if result.errors:
            continue
        if wanted_keys and result.comparison is not None and result.filled <= 0.0:
            continue  # raises nothing, but loads nothing either
        title = ", ".join(candidate.titles)
        fix = Fix(title[:1].upper() + title[1:], diff(text, candidate.text), codes)
        fix.safe = not (candidate.risky or candidate.trusting)
        fix.trusted_globals = candidate.trusting
        clean = not any(f.severity in {"error", "warning"} for f in result.findings)
        if clean and not candidate.risky and not any(f.preferred for f in offered):
            fix.preferred = True
        offered.append(fix)
    return offered


def _loader_fixes(
    site: LoadSite, outcome: Outcome, text: str, combined: bool = False
) -> list[_Candidate]:
    """torch.load's own problems: weights_only=False for a refused file, map_location for CUDA
    storages; with `combined`, both in one."""
    if site.loader not in {"torch.load", "lightning"}:
        return []
    edits: list[tuple[str, str, str, bool]] = []
    if outcome.has("weights-only"):
        edits.append(
            (
                "weights_only",
                "False",
                "load with weights_only=False (this runs code from the file: only for "
                "checkpoints you trust)",
                True,
            )
        )
    if outcome.has("cuda"):
        edits.append(("map_location", '"cpu"', 'load onto the CPU: map_location="cpu"', False))
    if combined:
        if len(edits) < 2:
            return []
        keyword_edits = [_loader_keyword(site, name, value) for name, value, _, _ in edits]
        if any(edit is None for edit in keyword_edits):
            return []
        new_text = apply_edits(text, [e for e in keyword_edits if e is not None])
        return [_Candidate([e[2] for e in edits], new_text, True)]
    candidates = []
    for name, value, title, risky in edits:
        edit = _loader_keyword(site, name, value)
        if edit is not None:
            candidates.append(_Candidate([title], apply_edits(text, [edit]), risky))
    return candidates


def _safe_globals_fix(
    site: LoadSite, outcome: Outcome, checkpoint: Checkpoint | None, text: str
) -> _Candidate | None:
    """A torch.load refused by weights_only (alone, or feeding `load_state_dict`): its statement
    wrapped in `with torch.serialization.safe_globals([...]):` naming exactly the globals the
    file needs, through the file's imports or a qualified import added above. Only where each
    global is a class (a function such as os.system, or numpy's scalar rebuilder whose dtype
    classes the reader cannot see, is never allowed this way) and none runs code."""
    if (
        site.loader != "torch.load"
        or site.loader_call is None
        or checkpoint is None
        or not outcome.has("weights-only")
        or "torch" not in site.imports.values()
    ):
        return None
    verdict = checkpoint.weights_only or {}
    if verdict.get("unsupported_opcodes") or verdict.get("dangerous_globals"):
        return None
    needed = [str(name) for name in verdict.get("refused_globals") or []]
    if not needed or not all(_is_class_name(name) for name in needed):
        return None
    lines = text.splitlines(keepends=True)
    found = _statement_and_imports(text, site)
    if found is None:
        return None
    (first, last), after_imports = found
    if last >= len(lines):
        return None
    torch_name = next(name for name, dotted in site.imports.items() if dotted == "torch")
    named: list[str] = []
    added: list[str] = []
    for global_name in needed:
        name = _named_by_imports(global_name, site.imports, torch_name)
        if name is None:
            module = global_name.rpartition(".")[0]
            if not module or not all(part.isidentifier() for part in module.split(".")):
                return None
            if module not in added:
                added.append(module)
            name = global_name
        named.append(name)
    indent = lines[first][: len(lines[first]) - len(lines[first].lstrip(" \t"))]
    ending = line_ending(text)
    head = f"{indent}with {torch_name}.serialization.safe_globals([{', '.join(named)}]):{ending}"
    body = "".join(f"    {line}" if line.strip() else line for line in lines[first : last + 1])
    if not body.endswith(("\n", "\r")):
        body += ending
    imports = "".join(f"import {module}{ending}" for module in added)
    new_lines = list(lines)
    new_lines[first : last + 1] = [head + body]
    if imports:
        if after_imports > 0 and not new_lines[after_imports - 1].endswith(("\n", "\r")):
            new_lines[after_imports - 1] += ending
        new_lines.insert(after_imports, imports)
    # The added imports and the `with` line move the load down; inside the block, right too.
    start_line, start_char = site.span.start_line, site.span.start_char
    shift = len(added) + (1 if start_line >= first else 0)
    moved = (start_line + shift, start_char + 4 if first <= start_line <= last else start_char)
    count = len(needed)
    title = f"allow the file's {count} global{'s' if count != 1 else ''}: " + (
        "torch.serialization.safe_globals([...]) around the load (only for a file you trust)"
    )
    return _Candidate([title], "".join(new_lines), trusting=True, at=moved)


# What `torchls convert weights-only` turns into plain data (worker/convert.py imports these for
# real, and nothing else the file names): a file refused only for these can be made clean.
_PLAIN_DATA = {
    "argparse.Namespace", "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath",
    "pathlib.PurePath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath",
    "pathlib._local.PosixPath", "pathlib._local.WindowsPath",
    "numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
}  # fmt: skip


def cleanable(checkpoint: Checkpoint | None) -> bool:
    """Whether the weights-only conversion can succeed on this file: weights_only refuses it
    only for plain-data globals it replaces, and nothing in it runs code."""
    verdict = (checkpoint.weights_only if checkpoint is not None else None) or {}
    refused = [str(name) for name in verdict.get("refused_globals") or []]
    if not refused or verdict.get("dangerous_globals") or verdict.get("unsupported_opcodes"):
        return False
    return all(
        name in _PLAIN_DATA or (name.startswith("numpy.dtypes.") and name.endswith("DType"))
        for name in refused
    )


def clean_name(checkpoint: Path) -> str:
    """The weights-only conversion's file name for `checkpoint` (`ckpt.pt` -> `ckpt.clean.pt`)."""
    return default_output(checkpoint, Options(kind="weights-only")).name


# numpy's pickles rebuild scalars and arrays through these functions, and name their dtype
# classes (numpy.dtypes.Float64DType) only inside the dtype's arguments: allowing the names the
# reader lists would not make the load work.
_NOT_CLASSES = {"numpy.dtype"}


def _is_class_name(dotted: str) -> bool:
    """Whether a refused global names a class by Python's naming convention (`Namespace`,
    `UNetish`), as opposed to a function (`os.system`, `numpy.core.multiarray.scalar`)."""
    last = dotted.rpartition(".")[2]
    return dotted not in _NOT_CLASSES and last[:1].isupper()


def _statement_and_imports(text: str, site: LoadSite) -> tuple[tuple[int, int], int] | None:
    """The 0-based first and last line of the simple statement holding the site's torch.load
    call, and the line after the file's leading imports (where an added import goes)."""
    if site.statement_lines is not None and site.kind == "torch_load":
        lines: tuple[int, int] | None = site.statement_lines
    else:
        lines = None
    try:
        module = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    loader = site.loader_call
    if lines is None and loader is not None:
        for node in ast.walk(module):
            if not isinstance(node, (ast.Assign, ast.AnnAssign, ast.Expr, ast.Return)):
                continue
            end = node.end_lineno or node.lineno
            inside = node.lineno <= loader.lineno and (loader.end_lineno or loader.lineno) <= end
            if inside and any(
                isinstance(inner, ast.Call)
                and inner.lineno == loader.lineno
                and inner.col_offset == loader.col_offset
                for inner in ast.walk(node)
            ):
                lines = (node.lineno - 1, end - 1)
                break
    if lines is None:
        return None
    after = 0
    body = module.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        after = body[0].end_lineno or 0  # below the module's docstring
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and node.lineno - 1 < lines[0]:
            after = max(after, node.end_lineno or node.lineno)
    return lines, after


def _named_by_imports(dotted: str, imports: dict[str, str], torch_name: str) -> str | None:
    """How the file can write the global `dotted`: through a name it imports (`from model
    import Net` -> `Net`; `import model` -> `model.Net`), or through torch for torch's own."""
    best: str | None = None
    for bound, target in imports.items():
        if dotted == target:
            return bound
        if dotted.startswith(target + "."):
            candidate = bound + dotted[len(target) :]
            if best is None or len(candidate) < len(best):
                best = candidate
    if best is None and dotted.startswith("torch."):
        best = torch_name + dotted[len("torch") :]
    return best


# -- the keys ---------------------------------------------------------------------------------


def _key_fixes(
    site: LoadSite,
    outcome: Outcome,
    checkpoint: Checkpoint,
    model: ModelKeys | None,
    text: str,
) -> list[_Candidate]:
    if not any(outcome.has(code) for code in KEY_CODES):
        return []
    if site.kind == "from_pretrained":
        if not outcome.has("shapes"):
            return []
        edit = (
            Edit(site.strict_span, "True")
            if site.strict_span is not None
            else None
            if site.open_loader
            else _insert(site.call_end, ", ignore_mismatched_sizes=True")
        )
        if edit is None:
            return []
        return [
            _Candidate(
                ["initialize the mismatched weights anew: ignore_mismatched_sizes=True"],
                apply_edits(text, [edit]),
            )
        ]
    if model is None or outcome.loaded is None:
        return []
    fixes: list[_Candidate] = []
    rewrites_now = [s for s in site.steps if s.kind != "key"]
    plan = _repair_plan(site, outcome, checkpoint, model)
    if plan is not None and site.kind == "load_state_dict" and not rewrites_now:
        select, steps, titles, after_keys = plan
        comparison = compare(model.keys, after_keys)
        argument = _rewritten_argument(site.argument_text, select, steps)
        if titles and not comparison.mismatched:
            if comparison.loads_strict or site.strict is False:
                fixes.append(_argument_fix(site, text, argument, titles, strict=False))
            elif comparison.missing and not comparison.unexpected:
                tied = tied_missing(comparison, model, after_keys)
                extra = (
                    "strict=False (tied weights fill the rest)"
                    if len(tied) == len(comparison.missing)
                    else "strict=False"
                )
                fixes.append(_argument_fix(site, text, argument, [*titles, extra], strict=True))
        head = _head(comparison, model) if comparison.mismatched else None
        if head is not None:
            prefix = _original_prefix(head + ".", steps)
            drop = _tests_first([*steps, Step("drop_prefix", (prefix,))])
            argument = _rewritten_argument(site.argument_text, select, drop)
            fixes.append(
                _argument_fix(
                    site,
                    text,
                    argument,
                    [*titles, f"skip the head `{head}` (its shape differs)", "strict=False"],
                    strict=True,
                )
            )
    current = outcome.comparison
    strays = _non_tensor_entries(outcome)
    if strays and site.kind == "load_state_dict" and current is not None and not rewrites_now:
        # `sd["mask_values"] = [0, 1]` saved beside the weights: drop exactly those entries,
        # which keeps strict loading for everything else.
        argument = _rewritten_argument(site.argument_text, [], [Step("drop_keys", strays)])
        entries = ", ".join(f"`{key}`" for key in strays)
        noun = "entry" if len(strays) == 1 else "entries"
        title = f"drop the non-tensor {noun} {entries}"
        fixes.append(_argument_fix(site, text, argument, [title], strict=False))
    if (
        site.strict is not False
        and current is not None
        and not current.mismatched
        and outcome.filled > 0.0
        and not outcome.nested
    ):
        share = (
            "" if outcome.filled >= 1.0 else f" (loads {outcome.filled * 100:.0f}% of the model)"
        )
        edit = _strict_edit(site)
        if edit is not None:
            fixes.append(_Candidate([f"load with strict=False{share}"], apply_edits(text, [edit])))
    return fixes


def _non_tensor_entries(outcome: Outcome) -> tuple[str, ...]:
    """The unexpected keys whose values are not tensors (lists, numbers saved with the
    weights), when they are all the load has wrong."""
    comparison, loaded = outcome.comparison, outcome.loaded or {}
    if comparison is None or comparison.missing or comparison.mismatched:
        return ()
    strays = [key for key in comparison.unexpected if loaded.get(key) == NOT_A_TENSOR]
    if not strays or len(strays) != len(comparison.unexpected):
        return ()
    return tuple(sorted(strays))


def _repair_plan(
    site: LoadSite, outcome: Outcome, checkpoint: Checkpoint, model: ModelKeys
) -> tuple[list[str], list[Step], list[str], dict[str, tuple[int, ...]]] | None:
    """Select the nested state dict, rename, drop strays: (subscripts, steps, titles, keys)."""
    select: list[str] = []
    titles: list[str] = []
    keys = dict(outcome.loaded or {})
    if outcome.nested is not None:
        select = re.findall(r"\['((?:[^'\\]|\\.)*)'\]", outcome.nested[len(outcome.container) :])
        if not select:
            return None
        container = checkpoint.containers.get(outcome.nested)
        if container is None:
            return None
        keys = dict(container.tensors)
        titles.append("load the nested " + "".join(f"[{json.dumps(k)}]" for k in select))
    steps: list[Step] = []
    comparison = compare(model.keys, keys)
    fix = comparison.prefix_fix
    if fix is not None:
        step = Step("strip", fix.strip) if fix.strip else Step("add", fix.add)
        keys = apply_step(keys, step)
        steps.append(step)
        titles.append(
            f"strip the `{fix.strip}` prefix" if fix.strip else f"add the `{fix.add}` prefix"
        )
        comparison = compare(model.keys, keys)
    if comparison.stray:
        stray = sorted(set(comparison.stray))
        if all(k.rsplit(".", 1)[-1] in THOP_SUFFIXES for k in stray):
            drop = Step("drop_suffix", THOP_SUFFIXES)
            titles.append("drop thop's total_ops/total_params")
        else:
            drop = Step("drop_keys", tuple(_original_key(k, steps) for k in stray[:20]))
            titles.append(f"drop {len(stray)} stale key{'s' if len(stray) > 1 else ''}")
            if len(stray) > 20:
                return None
        keys = apply_step(keys, drop)
        steps.insert(0, drop)  # tests run on the original key, before the rename
    return select, _tests_first(steps), titles, keys


def _tests_first(steps: list[Step]) -> list[Step]:
    tests = [s for s in steps if s.kind.startswith("drop") or s.kind == "keep_prefix"]
    return tests + [s for s in steps if s not in tests]


def _original_key(key: str, steps: list[Step]) -> str:
    for step in steps:
        if step.kind == "strip":
            key = step.value + key
        elif step.kind == "add" and key.startswith(step.value):
            key = key[len(step.value) :]
    return key


def _original_prefix(prefix: str, steps: list[Step]) -> str:
    return _original_key(prefix, [s for s in steps if s.kind in {"strip", "add"}])


def _head(comparison: object, model: ModelKeys) -> str | None:
    mismatched = getattr(comparison, "mismatched", [])
    if not getattr(comparison, "head_only", False) or not mismatched:
        return None
    return str(mismatched[0].key.rsplit(".", 1)[0])


def _rewritten_argument(argument: str, select: list[str], steps: list[Step]) -> str:
    base = argument
    if select or steps:
        base = _atom(argument)
    base += "".join(f"[{json.dumps(k)}]" for k in select)
    if not steps:
        return base
    tests = []
    key = "k"
    for step in steps:
        if step.kind == "drop_suffix":
            tests.append(f"not k.endswith({_tuple(step.value)})")
        elif step.kind == "drop_prefix":
            values = step.value
            arg = json.dumps(values[0]) if len(values) == 1 else _tuple(values)
            tests.append(f"not k.startswith({arg})")
        elif step.kind == "drop_keys":
            tests.append(f"k not in {_tuple(step.value)}")
        elif step.kind == "strip":
            key = f"k.removeprefix({json.dumps(step.value)})"
        elif step.kind == "add":
            key = f"{json.dumps(step.value)} + k"
    condition = f" if {' and '.join(tests)}" if tests else ""
    return f"{{{key}: v for k, v in {base}.items(){condition}}}"


def _tuple(values: tuple[str, ...]) -> str:
    items = ", ".join(json.dumps(v) for v in values)
    return f"({items},)" if len(values) == 1 else f"({items})"


def _atom(expression: str) -> str:
    """The expression, in parentheses unless a subscript or `.items()` can follow it as is."""
    try:
        node = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError:
        return f"({expression})"
    if isinstance(node, (ast.Name, ast.Call, ast.Subscript, ast.Attribute, ast.Dict, ast.DictComp)):
        return expression
    return f"({expression})"


def _argument_fix(
    site: LoadSite, text: str, argument: str, titles: list[str], strict: bool
) -> _Candidate:
    assert site.argument is not None
    edits = [Edit(site.argument, argument)]
    if strict:
        edit = _strict_edit(site)
        if edit is not None:
            edits.append(edit)
    return _Candidate(list(titles), apply_edits(text, edits))


def _strict_edit(site: LoadSite) -> Edit | None:
    if site.strict_span is not None:  # strict=True or load_state_dict(sd, True)
        return Edit(site.strict_span, "False")
    if site.open_call:
        return None  # **kwargs may hold strict already: adding it could raise TypeError
    return _insert(site.call_end, ", strict=False")


def _loader_keyword(site: LoadSite, name: str, value: str) -> Edit | None:
    if name in site.keyword_spans:
        return Edit(site.keyword_spans[name], value)
    if site.open_loader:
        return None
    return _insert(site.loader_end, f", {name}={value}")


def _insert(at: Span | None, text: str) -> Edit | None:
    return Edit(at, text) if at is not None else None


# -- text edits -------------------------------------------------------------------------------


def diff(old: str, new: str) -> Edit:
    """One edit that turns `old` into `new`: the changed stretch between their common start
    and end, so that the rest of the file (and its formatting) is left alone."""
    start = 0
    limit = min(len(old), len(new))
    while start < limit and old[start] == new[start]:
        start += 1
    end = 0
    while end < limit - start and old[len(old) - 1 - end] == new[len(new) - 1 - end]:
        end += 1
    # A boundary between the \r and the \n of one line break is no LSP position.
    if 0 < start < len(old) and old[start - 1 : start + 1] == "\r\n":
        start -= 1
    stop = len(old) - end
    if 0 < stop < len(old) and old[stop - 1 : stop + 1] == "\r\n":
        end -= 1
    first = position_at(old, start)
    last = position_at(old, len(old) - end)
    return Edit(Span(first[0], first[1], last[0], last[1]), new[start : len(new) - end])


def apply_edits(text: str, edits: list[Edit]) -> str:
    for edit in sorted(edits, key=lambda e: (e.span.start_line, e.span.start_char), reverse=True):
        start = offset_at(text, edit.span.start_line, edit.span.start_char)
        end = offset_at(text, edit.span.end_line, edit.span.end_char)
        text = text[:start] + edit.text + text[end:]
    return text
