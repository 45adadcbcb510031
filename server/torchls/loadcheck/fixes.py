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

from torchls.compare import compare
from torchls.loadcheck.analysis import (
    Checkpoint,
    ModelKeys,
    Outcome,
    apply_step,
    tied_missing,
)
from torchls.source.loads import LoadSite, Step
from torchls.source.text import Span

# Re-analyses the edited text: the outcome at the site that starts where `site` started.
Recheck = Callable[[str], Outcome | None]
THOP_SUFFIXES = ("total_ops", "total_params")


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


def propose(
    site: LoadSite,
    outcome: Outcome,
    checkpoint: Checkpoint | None,
    model: ModelKeys | None,
    text: str,
    recheck: Recheck,
) -> list[Fix]:
    if not outcome.findings or checkpoint is None:
        return []
    candidates: list[tuple[Fix, Callable[[Outcome], bool]]] = []
    codes = {f.code for f in outcome.findings}
    if "weights-only" in codes:
        fix = _loader_keyword(site, text, "weights_only", "False")
        if fix is not None:
            fix.title = (
                "Load with weights_only=False: this runs code from the file, so only for "
                "checkpoints you trust"
            )
            fix.fixes = ["weights-only"]
            candidates.append((fix, lambda after: not after.has("weights-only")))
    if "cuda" in codes:
        fix = _loader_keyword(site, text, "map_location", '"cpu"')
        if fix is not None:
            fix.title = 'Load onto the CPU: map_location="cpu"'
            fix.fixes = ["cuda"]
            fix.preferred = True
            candidates.append((fix, lambda after: not after.has("cuda")))
    key_codes = codes & {"keys", "shapes", "nested", "partial"}
    if site.kind == "from_pretrained":
        if "shapes" in codes and (site.strict_span or site.call_end) is not None:
            edit = (
                Edit(site.strict_span, "True")
                if site.strict_span is not None
                else Edit(site.call_end, ", ignore_mismatched_sizes=True")  # type: ignore[arg-type]
            )
            fix = Fix(
                "Initialize the mismatched weights anew: ignore_mismatched_sizes=True",
                merge(text, [edit]),
                ["shapes"],
                preferred=True,
            )
            candidates.append((fix, lambda after: not after.errors))
    elif key_codes:
        for fix in _key_fixes(site, outcome, checkpoint, model, text):
            fix.fixes = sorted(key_codes)
            candidates.append((fix, _loads))
    offered = []
    for fix, works in candidates:
        after = recheck(apply_edits(text, [fix.edit]))
        if after is not None and works(after):
            offered.append(fix)
    return offered


def _loads(after: Outcome) -> bool:
    """The edited load raises nothing, and fills some of the model."""
    key_findings = [f for f in after.findings if f.code in {"keys", "shapes", "nested", "partial"}]
    if any(f.severity == "error" for f in key_findings):
        return False
    return after.comparison is not None and after.filled > 0.0


# -- the keys ---------------------------------------------------------------------------------


def _key_fixes(
    site: LoadSite,
    outcome: Outcome,
    checkpoint: Checkpoint,
    model: ModelKeys | None,
    text: str,
) -> list[Fix]:
    if model is None or outcome.loaded is None:
        return []
    fixes: list[Fix] = []
    rewrites_now = [s for s in site.steps if s.kind != "key"]
    plan = _repair_plan(site, outcome, checkpoint, model)
    if plan is not None and site.kind == "load_state_dict" and not rewrites_now:
        select, steps, titles, after_keys = plan
        comparison = compare(model.keys, after_keys)
        argument = _rewritten_argument(site.argument_text, select, steps)
        if titles and not comparison.mismatched:
            if comparison.loads_strict or site.strict is False:
                fixes.append(
                    _argument_fix(site, text, argument, titles, strict=False, preferred=True)
                )
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
        fixes.append(_strict_only(site, text, f"Load with strict=False{share}"))
    return [fix for fix in fixes if fix is not None]


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
    site: LoadSite,
    text: str,
    argument: str,
    titles: list[str],
    strict: bool,
    preferred: bool = False,
) -> Fix:
    assert site.argument is not None
    edits = [Edit(site.argument, argument)]
    if strict:
        edits.append(_strict_edit(site))
    title = ", ".join(titles)
    return Fix(title[:1].upper() + title[1:], merge(text, edits), preferred=preferred)


def _strict_only(site: LoadSite, text: str, title: str) -> Fix:
    return Fix(title, merge(text, [_strict_edit(site)]))


def _strict_edit(site: LoadSite) -> Edit:
    if site.strict_span is not None:
        return Edit(site.strict_span, "False")
    assert site.call_end is not None
    return Edit(site.call_end, ", strict=False")


def _loader_keyword(site: LoadSite, text: str, name: str, value: str) -> Fix | None:
    if name in site.keyword_spans:
        return Fix("", merge(text, [Edit(site.keyword_spans[name], value)]))
    if site.loader_end is None:
        return None
    return Fix("", merge(text, [Edit(site.loader_end, f", {name}={value}")]))


# -- text edits -------------------------------------------------------------------------------


def merge(text: str, edits: list[Edit]) -> Edit:
    """Edits as one: the range from the first start to the last end, with the text between kept."""
    starts = [(e.span.start_line, e.span.start_char) for e in edits]
    ends = [(e.span.end_line, e.span.end_char) for e in edits]
    first, last = min(starts), max(ends)
    span = Span(first[0], first[1], last[0], last[1])
    original = _slice(text, span)
    base = _offset(text, *first)
    pieces = sorted(edits, key=lambda e: (e.span.start_line, e.span.start_char))
    out, cursor = [], 0
    for edit in pieces:
        start = _offset(text, edit.span.start_line, edit.span.start_char) - base
        end = _offset(text, edit.span.end_line, edit.span.end_char) - base
        out.append(original[cursor:start])
        out.append(edit.text)
        cursor = max(cursor, end)
    out.append(original[cursor:])
    return Edit(span, "".join(out))


def apply_edits(text: str, edits: list[Edit]) -> str:
    for edit in sorted(edits, key=lambda e: (e.span.start_line, e.span.start_char), reverse=True):
        start = _offset(text, edit.span.start_line, edit.span.start_char)
        end = _offset(text, edit.span.end_line, edit.span.end_char)
        text = text[:start] + edit.text + text[end:]
    return text


def _slice(text: str, span: Span) -> str:
    return text[
        _offset(text, span.start_line, span.start_char) : _offset(
            text, span.end_line, span.end_char
        )
    ]


_LINE_END = re.compile(r"\r\n|\r|\n")


def _offset(text: str, line: int, utf16_char: int) -> int:
    """The str index of an LSP position (0-based line, UTF-16 character)."""
    start = 0
    for _ in range(line):
        match = _LINE_END.search(text, start)
        if match is None:
            return len(text)
        start = match.end()
    end_match = _LINE_END.search(text, start)
    line_text = text[start : end_match.start() if end_match else len(text)]
    units = 0
    for index, char in enumerate(line_text):
        if units >= utf16_char:
            return start + index
        units += 2 if ord(char) > 0xFFFF else 1
    return start + len(line_text)
