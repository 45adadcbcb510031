"""Whether a workspace pins torch below 1.6, and where.

torch 1.6 made the zip archive the default `torch.save` format, and torch before 1.6 cannot read
it, so a project that pins an older torch and loads a checkpoint saved by a newer one fails at
load time. This module finds such a pin in the workspace's packaging files.

The files are the user's, possibly hostile or broken: they are only read (setup.py is parsed with
`ast`, never run), at most a few of them and at most MAX_FILE_BYTES each, and anything unreadable
or malformed is skipped rather than raised.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, Specifier, SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

if sys.version_info >= (3, 11):
    import tomllib

MAX_FILE_BYTES = 1024 * 1024
# Every file read counts, includes too: a workspace with dozens of requirement files or an
# include chain stays cheap, at the price of not seeing the rest.
MAX_FILES_READ = 16
TORCH_NAMES = frozenset({"torch", "pytorch"})  # pip's and conda's names for the same package

# Real releases either side of 1.6. Checking them (rather than reasoning about each operator)
# gives the right answer for any mix of specifiers, e.g. `<1.8,!=1.6.*,!=1.7.*`.
OLD_RELEASES = (
    "0.1.12", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "0.4.1", "1.0.0", "1.0.1", "1.1.0", "1.2.0",
    "1.3.0", "1.3.1", "1.4.0", "1.5.0", "1.5.1",
)  # fmt: skip
NEW_RELEASES = (
    "1.6.0", "1.7.0", "1.7.1", "1.8.0", "1.8.1", "1.9.0", "1.9.1", "1.10.0", "1.10.1", "1.10.2",
    "1.11.0", "1.12.0", "1.12.1", "1.13.0", "1.13.1", "2.0.0", "2.0.1", "2.1.0", "2.1.1", "2.1.2",
    "2.2.0", "2.2.1", "2.2.2", "2.3.0", "2.3.1", "2.4.0", "2.4.1", "2.5.0", "2.5.1", "2.6.0",
    "2.7.0", "2.7.1", "2.8.0", "2.9.0", "2.9.1", "2.10.0", "2.11.0", "2.12.0", "2.13.0",
    "99.0.0",  # any release still to come
)  # fmt: skip
_OLD_VERSIONS = tuple(Version(text) for text in OLD_RELEASES)
_NEW_VERSIONS = tuple(Version(text) for text in NEW_RELEASES)

_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the line breaks LSP counts, unlike str.splitlines
_TRAILING_COMMENT = re.compile(r"(?:^|\s)#.*$")
_PIP_OPTION = re.compile(r"\s-{1,2}[A-Za-z]")  # `torch==1.4 --hash=...`, `... -f URL`
_PIP_INCLUDE = re.compile(r"^(?:-r|-c|--requirement|--constraint)\s*=?\s*(\S+)")
_VERSION_TERM = re.compile(r"\s*(===|==|!=|~=|<=|>=|<|>|\^|~|=)?\s*([^\s,]+)")
_CFG_HEADER = re.compile(r"^\s*\[([^\]]+)\]")
_CFG_KEY = re.compile(r"^([A-Za-z0-9_.\-]+)\s*[=:]\s*(.*)$")
_CONDA_SPEC = re.compile(r"^(?:[^\s:]+::)?(?P<name>[A-Za-z0-9_.\-]+)\s*(?P<rest>.*)$")
_CONDA_BRACKET_VERSION = re.compile(r"version\s*=\s*(?:(['\"])([^'\"]*)\1|([^,\]\s]+))")


@dataclass(frozen=True)
class TorchPin:
    file: str  # absolute path of the file that pins it
    line: int  # 0-based line of the requirement
    requirement: str  # the requirement text as written, e.g. "torch==1.4.0" or "pytorch=1.5"
    newest: str | None  # the newest torch release the pin allows, e.g. "1.5.1", if any


def torch_pin(workspace: str | os.PathLike[str]) -> TorchPin | None:
    """The workspace's torch requirement when every version it allows is older than 1.6; else None.

    Reads, at the workspace root: requirements*.txt then requirements/*.txt (sorted, following
    `-r`/`-c` includes inside the workspace), pyproject.toml (PEP 621, PEP 735 groups, Poetry;
    skipped on Python 3.10, which has no TOML parser), setup.cfg, setup.py and
    environment.yml/.yaml (conda and its `pip:` list), and returns the first such requirement in
    that order, and in line order within a file.

    An old pin is reported even when another file, or another line under a different environment
    marker, allows torch >= 1.6: the project evidently runs on old torch somewhere, and that is
    where a zip-format checkpoint will fail to load. Never runs workspace code; never raises.
    """
    try:
        root = Path(workspace).resolve()
        if not root.is_dir():
            return None
    except (OSError, RuntimeError, ValueError, TypeError):
        return None
    for found in _workspace_requirements(_Reader(root)):
        newest = _old_only(found.alternatives)
        if newest is not None:
            return TorchPin(str(found.file), found.line, found.text, newest.release)
    return None


@dataclass(frozen=True)
class _Found:
    """A torch requirement somewhere in the workspace, before judging its versions."""

    file: Path
    line: int
    text: str
    # Any of these may apply (`1.4 || 1.5`, Poetry's per-marker list); each is a conjunction.
    alternatives: tuple[SpecifierSet, ...]


@dataclass(frozen=True)
class _Newest:
    release: str | None


class _Reader:
    """Reads workspace files within the size and count budget, each at most once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files_read = 0
        self.seen: set[Path] = set()

    def read(self, given: Path) -> tuple[Path, str] | None:
        """(resolved path, text), or None if the file is missing, outside the workspace, too big,
        binary, already read or over budget."""
        try:
            path = given.resolve()
            if path in self.seen or not path.is_relative_to(self.root):
                return None
            self.seen.add(path)
            # is_file first: a FIFO or device named requirements.txt must not block or stream
            if self.files_read >= MAX_FILES_READ or not path.is_file():
                return None
            if path.stat().st_size > MAX_FILE_BYTES:
                return None
            self.files_read += 1
            with path.open("rb") as stream:
                data = stream.read(MAX_FILE_BYTES + 1)
        except (OSError, RuntimeError, ValueError):
            return None
        if len(data) > MAX_FILE_BYTES:
            return None
        # PowerShell's `pip freeze > requirements.txt` writes UTF-16 with a byte order mark.
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return path, data.decode("utf-16", errors="replace")
        if b"\0" in data:
            return None
        return path, data.decode("utf-8-sig", errors="replace")

    def listed(self, folder: Path, pattern: str) -> list[Path]:
        try:
            return sorted(path for path in folder.glob(pattern) if path.is_file())
        except (OSError, ValueError):
            return []


def _workspace_requirements(reader: _Reader) -> Iterator[_Found]:
    """Torch requirements in reporting order, reading each file only when the earlier ones had
    no old pin (the caller stops at the first)."""
    root = reader.root
    for path in [
        *reader.listed(root, "requirements*.txt"),
        *reader.listed(root / "requirements", "*.txt"),
    ]:
        yield from _requirements_file(reader, path)
    yield from _pyproject(reader, root / "pyproject.toml")
    yield from _setup_cfg(reader, root / "setup.cfg")
    yield from _setup_py(reader, root / "setup.py")
    for name in ("environment.yml", "environment.yaml"):
        yield from _environment(reader, root / name)


# -- judging versions ------------------------------------------------------------------------


def _old_only(alternatives: Sequence[SpecifierSet]) -> _Newest | None:
    """The newest old release allowed when no alternative allows torch >= 1.6 and some allows an
    older one; else None (unbounded, allows a new torch, or allows nothing at all)."""
    allowed_old: list[Version] = []
    satisfiable = False
    for given in alternatives:
        specifiers = _without_local_labels(given)
        if len(specifiers) == 0:
            return None
        named = _named_versions(specifiers)
        newer = [*_NEW_VERSIONS, *(version for version in named if not _is_old(version))]
        # prereleases=True: a specifier naming a 1.6 prerelease (`<=1.6.0rc1`) asks for it
        if any(specifiers.contains(version, prereleases=True) for version in newer):
            return None
        older = [*_OLD_VERSIONS, *(version for version in named if _is_old(version))]
        if any(specifiers.contains(version, prereleases=True) for version in older):
            satisfiable = True
        allowed_old += [v for v in _OLD_VERSIONS if specifiers.contains(v, prereleases=True)]
    if not satisfiable:
        return None
    return _Newest(str(max(allowed_old)) if allowed_old else None)


def _is_old(version: Version) -> bool:
    """Below the 1.6 line, whose prereleases and nightlies already read zip checkpoints."""
    return version.epoch == 0 and version.release < (1, 6)


def _without_local_labels(specifiers: SpecifierSet) -> SpecifierSet:
    """`==1.5.1+cpu` as `==1.5.1`: the label names a build of the release, not another release,
    and keeping it would match no plain release."""
    return SpecifierSet(
        Specifier("==" + specifier.version.split("+", 1)[0])
        if specifier.operator == "==" and "+" in specifier.version
        else specifier
        for specifier in specifiers
    )


def _named_versions(specifiers: SpecifierSet) -> list[Version]:
    """The versions the specifiers mention and the patch release after each: the points where
    their answers change, so probing them catches bounds the real release lists straddle
    (`<1.6.0rc1`, `>1.5.1,<1.6`, `<1.6.5,!=1.6.0`)."""
    versions: list[Version] = []
    for specifier in specifiers:
        try:
            version = Version(specifier.version.removesuffix(".*"))
        except InvalidVersion:
            continue
        release = (*version.release, 0, 0)
        following = f"{version.epoch}!{release[0]}.{release[1]}.{release[2] + 1}"
        versions += [version, Version(following)]
    return versions


def _specifier_set(texts: Iterable[str]) -> SpecifierSet | None:
    try:
        return SpecifierSet(",".join(texts))
    except InvalidSpecifier:
        return None


def _poetry_alternatives(constraint: str) -> tuple[SpecifierSet, ...] | None:
    """Poetry's constraint syntax: `1.5.0` (exact), `^1.4`, `~1.5`, `>=1.2,<1.6`, `>=1.2 <1.6`,
    `1.4 || 1.5`. None if it is not valid."""
    alternatives = []
    for branch in re.split(r"\|\|?", constraint):
        texts: list[str] = []
        for operator, version in _VERSION_TERM.findall(branch):
            if version == "*":
                continue
            if operator in ("^", "~"):
                try:
                    release = Version(version).release
                except InvalidVersion:
                    return None
                texts += [f">={version}", "<" + _poetry_upper(release, caret=operator == "^")]
            else:
                texts.append(("==" if operator in ("", "=") else operator) + version)
        specifiers = _specifier_set(texts)
        if specifiers is None:
            return None
        alternatives.append(specifiers)
    return tuple(alternatives)


def _poetry_upper(release: tuple[int, ...], caret: bool) -> str:
    """The exclusive upper bound: `^1.4` -> 2, `^0.4` -> 0.5, `~1.5.1` -> 1.6, `~1` -> 2."""
    if caret:
        bumped = next((i for i, part in enumerate(release) if part != 0), len(release) - 1)
    else:
        bumped = min(1, len(release) - 1)
    return ".".join(str(part) for part in (*release[:bumped], release[bumped] + 1))


def _conda_alternatives(version_spec: str, exact: bool = False) -> tuple[SpecifierSet, ...] | None:
    """Conda's version syntax: `1.5` and `1.5.*` (any 1.5.x), `==1.5.1`, `>=1.2,<1.6`, `1.4|1.5`.
    `exact` for the version of `name=version=build`, which names one release."""
    alternatives = []
    for branch in version_spec.split("|"):
        texts: list[str] = []
        for operator, version in _VERSION_TERM.findall(branch):
            if operator in ("", "=") and not exact:
                prefix = version.rstrip("*").rstrip(".")
                if prefix:
                    texts.append(f"=={prefix}.*")
            elif operator in ("", "="):
                texts.append(f"=={version}")
            elif operator in ("^", "~"):
                return None
            else:
                texts.append(operator + version)
        specifiers = _specifier_set(texts)
        if specifiers is None:
            return None
        alternatives.append(specifiers)
    return tuple(alternatives)


def _pip_alternatives(text: str) -> tuple[SpecifierSet, ...] | None:
    """The versions a pip requirement allows if it is a torch requirement, else None. A direct
    wheel reference (`torch @ https://.../torch-1.4.0+cpu-...whl`, or the bare URL) names its
    version in the file name."""
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return _wheel_alternatives(text)
    # A bare `torch-1.4.0-cp37-...whl` parses as a requirement on a package of that name.
    if not requirement.url and urlsplit(text).path.endswith(".whl"):
        return _wheel_alternatives(text)
    if canonicalize_name(requirement.name) not in TORCH_NAMES:
        return None
    if requirement.url:
        return _wheel_alternatives(requirement.url) or (SpecifierSet(),)
    return (requirement.specifier,)


def _wheel_alternatives(location: str) -> tuple[SpecifierSet, ...] | None:
    filename = unquote(urlsplit(location).path.rsplit("/", 1)[-1])
    try:
        name, version, _, _ = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion):
        return None
    if name not in TORCH_NAMES:
        return None
    return (SpecifierSet(f"=={version.public}"),)


# -- reading each kind of file ---------------------------------------------------------------


def _lines(text: str) -> list[str]:
    return _LINE_BREAK.split(text)


def _requirements_file(reader: _Reader, path: Path) -> Iterator[_Found]:
    """pip's requirements format, following `-r` and `-c` includes where they appear (constraint
    files cap the installed torch as surely as requirements do)."""
    read = reader.read(path)
    if read is None:
        return
    path, text = read
    for line, logical in _logical_lines(_lines(text)):
        content = _TRAILING_COMMENT.sub("", logical).strip()
        include = _PIP_INCLUDE.match(content)
        if include is not None:
            if "://" not in include.group(1):
                yield from _requirements_file(reader, path.parent / include.group(1))
            continue
        if not content or content.startswith("-"):
            continue
        requirement = _PIP_OPTION.split(content, maxsplit=1)[0].strip()
        alternatives = _pip_alternatives(requirement)
        if alternatives is not None:
            yield _Found(path, line, requirement, alternatives)


def _logical_lines(lines: Sequence[str]) -> Iterator[tuple[int, str]]:
    """Lines joined across trailing backslashes, each with the index of its first line."""
    start = 0
    parts: list[str] = []
    for index, line in enumerate(lines):
        if not parts:
            start = index
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        yield start, "".join(parts)
        parts = []
    if parts:
        yield start, "".join(parts)


def _pyproject(reader: _Reader, path: Path) -> Iterator[_Found]:
    read = reader.read(path)
    if read is None:
        return
    path, text = read
    data = _load_toml(text)
    if data is None:
        return
    lines = _lines(text)
    found: list[_Found] = []
    project = _table(data, "project")
    pep508: list[Any] = [*_list(project.get("dependencies"))]
    for extra in _table(project, "optional-dependencies").values():
        pep508 += _list(extra)
    for group in _table(data, "dependency-groups").values():
        pep508 += _list(group)
    for requirement in pep508:
        if isinstance(requirement, str):
            alternatives = _pip_alternatives(requirement.strip())
            if alternatives is not None:
                line = _line_quoting(lines, requirement)
                found.append(_Found(path, line, requirement.strip(), alternatives))
    poetry = _table(_table(data, "tool"), "poetry")
    tables = {"tool.poetry.dependencies": poetry.get("dependencies")}
    tables["tool.poetry.dev-dependencies"] = poetry.get("dev-dependencies")
    for name, group in _table(poetry, "group").items():
        tables[f"tool.poetry.group.{name}.dependencies"] = _table(group, "dependencies")
    for table_name, table in tables.items():
        if isinstance(table, dict):
            found += _poetry_table(path, lines, table_name, table)
    yield from sorted(found, key=lambda item: item.line)


if sys.version_info >= (3, 11):

    def _load_toml(text: str) -> dict[str, Any] | None:
        try:
            return tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError, MemoryError):
            return None

else:

    def _load_toml(text: str) -> dict[str, Any] | None:
        return None  # no TOML parser in 3.10's standard library, and no dependency for one


def _table(container: object, key: str) -> dict[str, Any]:
    value = container.get(key) if isinstance(container, dict) else None
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _line_quoting(lines: Sequence[str], value: str) -> int:
    """The first line holding the string literal (tomllib does not say where values are)."""
    for quoted in (f'"{value}"', f"'{value}'", value):
        for index, line in enumerate(lines):
            if quoted in line:
                return index
    return 0


def _poetry_table(
    path: Path, lines: Sequence[str], table_name: str, table: dict[str, Any]
) -> Iterator[_Found]:
    for key, value in table.items():
        if canonicalize_name(key) not in TORCH_NAMES:
            continue
        line, is_key_line = _toml_key_line(lines, table_name, key)
        # A list is Poetry's "multiple constraints", one entry per Python version or marker;
        # each applies somewhere, so each is judged alone, like requirement lines with markers.
        for entry in value if isinstance(value, list) else [value]:
            version = entry.get("version") if isinstance(entry, dict) else entry
            if not isinstance(version, str):
                continue  # a git, path or url dependency: no version bound
            alternatives = _poetry_alternatives(version)
            if alternatives is not None:
                text = lines[line].strip() if is_key_line else f'{key} = "{version}"'
                yield _Found(path, line, text, alternatives)


def _toml_key_line(lines: Sequence[str], table_name: str, key: str) -> tuple[int, bool]:
    """(line, whether it is a `key = ...` line) of `key` in `[table_name]`, else of the
    `[table_name.key]` header, else (0, False)."""
    key_line = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", re.IGNORECASE)
    table = table_name.lower()
    current = ""
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            # string operations, not a regex: a long line in a multi-line string stays linear
            inner = stripped.lstrip("[")
            parts = (part.strip().strip("\"'") for part in inner[: inner.find("]")].split("."))
            current = ".".join(parts).lower()
            if current == f"{table}.{key.lower()}":
                return index, False
        elif current == table and key_line.match(line):
            return index, True
    return 0, False


def _setup_cfg(reader: _Reader, path: Path) -> Iterator[_Found]:
    """`[options] install_requires` and `[options.extras_require]`, one requirement per indented
    continuation line, or `;`-separated on the key's own line, as setuptools reads them."""
    read = reader.read(path)
    if read is None:
        return
    path, text = read
    section = ""
    collecting = False
    for index, line in enumerate(_lines(text)):
        content = _TRAILING_COMMENT.sub("", line).strip()
        if collecting and (line[:1] in (" ", "\t") or not content):
            if content and not content.startswith(";"):
                yield from _setup_cfg_requirement(path, index, content)
            continue
        collecting = False
        header = _CFG_HEADER.match(line)
        if header is not None:
            section = header.group(1).strip().lower()
            continue
        key = _CFG_KEY.match(line)
        if key is None:
            continue
        name = key.group(1).lower().replace("-", "_")
        if section == "options.extras_require" or (
            section == "options" and name == "install_requires"
        ):
            collecting = True
            value = _TRAILING_COMMENT.sub("", key.group(2)).strip()
            # `torch<1.6; python_version<"3.8"` is one requirement, `torch<1.6; numpy` two
            whole = list(_setup_cfg_requirement(path, index, value)) if value else []
            yield from whole
            if value and not whole:
                for piece in value.split(";"):
                    yield from _setup_cfg_requirement(path, index, piece.strip())


def _setup_cfg_requirement(path: Path, line: int, text: str) -> Iterator[_Found]:
    alternatives = _pip_alternatives(text)
    if alternatives is not None:
        yield _Found(path, line, text, alternatives)


def _setup_py(reader: _Reader, path: Path) -> Iterator[_Found]:
    """Literal `install_requires`/`extras_require` of `setup(...)` calls, also through a
    module-level variable. Parsed, never executed: setup.py is arbitrary code."""
    read = reader.read(path)
    if read is None:
        return
    path, text = read
    try:
        tree = ast.parse(text, filename=str(path))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return
    assigned: dict[str, ast.expr] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            for target in statement.targets:
                if isinstance(target, ast.Name):
                    assigned[target.id] = statement.value
        elif (
            isinstance(statement, ast.AnnAssign)
            and statement.value is not None
            and isinstance(statement.target, ast.Name)
        ):
            assigned[statement.target.id] = statement.value
    found: list[_Found] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not _is_setup(node.func):
            continue
        for keyword in node.keywords:
            values: list[ast.expr] = []
            if keyword.arg == "install_requires":
                values = [keyword.value]
            elif keyword.arg == "extras_require":
                extras = _resolve(keyword.value, assigned)
                if isinstance(extras, ast.Dict):
                    values = list(extras.values)
            for value in values:
                for requirement, line in _literal_strings(value, assigned, depth=0):
                    alternatives = _pip_alternatives(requirement)
                    if alternatives is not None:
                        found.append(_Found(path, line, requirement, alternatives))
    yield from sorted(found, key=lambda item: item.line)


def _is_setup(function: ast.expr) -> bool:
    """`setup(...)` or `setuptools.setup(...)`/`distutils.core.setup(...)`."""
    if isinstance(function, ast.Name):
        return function.id == "setup"
    return isinstance(function, ast.Attribute) and function.attr == "setup"


def _resolve(node: ast.expr, assigned: dict[str, ast.expr]) -> ast.expr:
    if isinstance(node, ast.Name) and node.id in assigned:
        return assigned[node.id]
    return node


def _literal_strings(
    node: ast.expr, assigned: dict[str, ast.expr], depth: int
) -> list[tuple[str, int]]:
    """The strings of a literal list (also `BASE + [...]`, `[*BASE, ...]`, a name for one, or a
    newline-separated string), each with its 0-based line. Depth-bounded: `A = A + [...]`."""
    if depth > 8:
        return []
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [
            (text.strip(), node.lineno - 1 + offset)
            for offset, text in enumerate(_lines(node.value))
            if text.strip()
        ]
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        elements = node.elts
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        elements = [node.left, node.right]
    elif isinstance(node, ast.Starred):
        elements = [node.value]
    elif isinstance(node, ast.Name) and node.id in assigned:
        elements = [assigned[node.id]]
    else:
        return []
    nested = (_literal_strings(element, assigned, depth + 1) for element in elements)
    return [found for strings in nested for found in strings]


def _environment(reader: _Reader, path: Path) -> Iterator[_Found]:
    """A conda environment file's `dependencies:` list, conda match specs and the nested `pip:`
    list, read line by line: block-style YAML is all these files use, and a YAML library would
    be a dependency."""
    read = reader.read(path)
    if read is None:
        return
    path, text = read
    in_dependencies = False
    pip_indent: int | None = None
    for index, line in enumerate(_lines(text)):
        content = _TRAILING_COMMENT.sub("", line).rstrip()
        stripped = content.strip()
        if not stripped:
            continue
        indent = len(content) - len(content.lstrip())
        if indent == 0 and not stripped.startswith("-"):
            in_dependencies = re.fullmatch(r"dependencies\s*:", stripped) is not None
            pip_indent = None
            continue
        item = re.fullmatch(r"-\s*(.*)", stripped)
        if not in_dependencies or item is None:
            continue
        if pip_indent is not None and indent <= pip_indent:
            pip_indent = None
        value = _unquoted(item.group(1).strip())
        if re.fullmatch(r"pip\s*:", value):
            pip_indent = indent
            continue
        if pip_indent is not None:
            alternatives = _pip_alternatives(value) if not value.startswith("-") else None
        else:
            alternatives = _conda_spec_alternatives(value)
        if alternatives is not None:
            yield _Found(path, index, value, alternatives)


def _unquoted(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1].strip()
    return text


def _conda_spec_alternatives(spec: str) -> tuple[SpecifierSet, ...] | None:
    """The versions a conda match spec (`[channel::]name[ version[ build]]`, `name=1.5`,
    `name==1.5.1`, `name=1.4.0=py3.7_cuda...`, `name[version='>=1.2']`) allows if it names torch,
    else None."""
    match = _CONDA_SPEC.match(spec)
    if match is None or match.group("name").lower() not in TORCH_NAMES:
        return None
    rest = match.group("rest").strip()
    if not rest:
        return (SpecifierSet(),)
    if rest.startswith("["):
        bracket = _CONDA_BRACKET_VERSION.match(rest, max(rest.find("version"), 0))
        if bracket is None:
            return (SpecifierSet(),)
        return _conda_alternatives(bracket.group(2) or bracket.group(3) or "")
    if rest.startswith("=") and not rest.startswith("=="):
        version, _, build = rest[1:].partition("=")
        return _conda_alternatives(version.strip(), exact=bool(build))
    version = rest.split()[0]
    if version.startswith("==") and "=" in version[2:]:  # `==1.4.0=build`
        version = version[: version.index("=", 2)]
    return _conda_alternatives(version)
