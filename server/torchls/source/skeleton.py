"""The definitions of a file without its script: what the worker executes to get a model class.

Hovering over `Net(...)` in `train.py` must not train anything. The worker therefore never runs
the file the target is defined in as it stands: it runs this skeleton of it, which keeps imports,
function and class definitions and assignments of plain values, and drops every other top-level
statement (loops, calls, `with` blocks, `if __name__ == "__main__":`). Line numbers are kept,
so a traceback from a model's `forward` still points at the user's line.

Training scripts define their models next to the state those models read: `opt =
parser.parse_args()`, `cuda = torch.cuda.is_available()`, `nz = int(opt.nz)`. So the skeleton
also keeps a dependency slice of the top level: the statements that bind (or, like
`parser.add_argument(...)`, mutate) a name the kept code reads, transitively, when they call
nothing that does I/O, trains, downloads, builds a data set or a model, or logs.
"""

from __future__ import annotations

import ast
import builtins
import contextlib

# Calls an assignment may make and still be a definition, as written in the source.
_DEFINITION_CALLS = {
    "TypeVar",
    "typing.TypeVar",
    "NamedTuple",
    "typing.NamedTuple",
    "namedtuple",
    "collections.namedtuple",
    "field",
    "dataclasses.field",
    "logging.getLogger",
    "frozenset",
    "tuple",
    "dict",
    "list",
    "set",
    "torch.device",
    "torch.Size",
    "torch.finfo",
    "torch.iinfo",
    "torch.get_default_dtype",
}


def skeleton(tree: ast.Module) -> tuple[ast.Module, list[int]]:
    """The kept statements as a new module, and the 1-based lines of the dropped ones."""
    body = tree.body
    keep = [_is_definition(statement) for statement in body]
    # a pathologically deep expression: the definitions alone, as before
    with contextlib.suppress(RecursionError):
        _add_slice(body, keep)
        _close(body, keep)
    kept = [statement for statement, kept in zip(body, keep, strict=True) if kept]
    dropped = [statement.lineno for statement, kept in zip(body, keep, strict=True) if not kept]
    module = ast.Module(body=kept, type_ignores=[])
    return module, dropped


def optional_import_lines(tree: ast.Module) -> set[int]:
    """Lines of the top-level absolute imports a missing library may skip: a training script
    imports torchvision for its data sets, and a model that never touches it builds without
    it. Imports inside a `try` whose handler binds a fallback are left to it; a handler that
    only says why and raises again has no fallback to offer."""
    statements: list[ast.stmt] = []
    for statement in tree.body:
        if isinstance(statement, ast.Try) and all(
            _reports_and_raises(inner) for handler in statement.handlers for inner in handler.body
        ):
            statements += statement.body
        else:
            statements.append(statement)
    return {
        statement.lineno
        for statement in statements
        if isinstance(statement, ast.Import)
        or (
            isinstance(statement, ast.ImportFrom)
            and statement.level == 0
            and statement.module != "__future__"
            and all(alias.name != "*" for alias in statement.names)
        )
    }


# -- the dependency slice ------------------------------------------------------------------------

# Calls that never belong in a slice, by the last part of the name as written: I/O, downloads,
# training, devices, logging and processes.
_UNSAFE_CALLS = {
    "open",
    "load",
    "loads",
    "load_state_dict",
    "save",
    "savez",
    "save_image",
    "savefig",
    "imsave",
    "imwrite",
    "imread",
    "to_csv",
    "read_csv",
    "dump",
    "write",
    "writelines",
    "read",
    "read_text",
    "read_bytes",
    "readlines",
    "write_text",
    "download",
    "from_pretrained",
    "hf_hub_download",
    "snapshot_download",
    "load_dataset",
    "makedirs",
    "mkdir",
    "remove",
    "unlink",
    "rmtree",
    "rmdir",
    "rename",
    "system",
    "popen",
    "run",
    "call",
    "check_call",
    "check_output",
    "urlopen",
    "urlretrieve",
    "cuda",
    "to",
    "train",
    "fit",
    "eval",
    "exec",
    "compile",
    "step",
    "backward",
    "apply",
    "input",
    "sleep",
    "show",
    "set_device",
    "init_process_group",
    "fork",
    "spawn",
    "start",
    "join",
    "wait",
    "log",
    "log_metrics",
    "add_scalar",
    "add_image",
    "watch",
    "init",
    "__import__",
    "setattr",
    "delattr",
    "globals",
    "vars",
}
# Modules a slice never calls into, by any part of the name as written.
_UNSAFE_MODULES = {
    "wandb",
    "tensorboard",
    "tensorboardX",
    "SummaryWriter",
    "mlflow",
    "neptune",
    "comet_ml",
    "requests",
    "urllib",
    "subprocess",
    "shutil",
    "socket",
    "multiprocessing",
    "threading",
    "pickle",
    "joblib",
    "h5py",
    "cv2",
    "gdown",
    "distributed",
    "tqdm",
    "datasets",
    "pd",
    "pandas",
}


def _add_slice(body: list[ast.stmt], keep: list[bool]) -> None:
    """Marks the statements the kept code needs (see the module's docstring), in place."""
    model_classes = {
        statement.name
        for statement in body
        if isinstance(statement, ast.ClassDef) and _looks_like_a_model(statement)
    }
    # Names imported from a module a slice never calls into (`from torchvision.datasets import
    # MNIST`): calling them is refused like calling the module by its dotted name.
    model_classes |= _imported_from_unsafe_modules(body)
    functions = {
        statement.name: statement
        for statement in body
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    # Names the script binds by assignment: only those can be mutated into shape
    # (`parser.add_argument`), never an imported module (`torch.cuda.set_device(0)`).
    variables = {name for statement in body for name in _assigned_names(statement)}
    # A function's body counts only once something needed calls it: `sample_images()` of a
    # training loop reads `generator = Generator()`, which profiling `Generator` never needs.
    # A plain assignment kept as a definition counts only once something needed reads what it
    # binds: a notebook's `ax = [a for row in ax for a in row]` must not pull its figure in.
    counted = [
        kept and not isinstance(statement, (ast.Assign, ast.AnnAssign))
        for statement, kept in zip(body, keep, strict=True)
    ]
    needed: set[str] = set()
    for statement, count in zip(body, counted, strict=True):
        if count:
            needed |= _reads(statement, bodies=False)
    opened: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name in (needed & functions.keys()) - opened:
            opened.add(name)
            needed |= _reads(functions[name])
            changed = True
        for index, statement in enumerate(body):
            if counted[index] or not _feeds(statement, needed, variables):
                continue
            if not keep[index] and not _safe(_runs_now(statement), model_classes, functions):
                continue
            keep[index] = counted[index] = True
            needed |= _reads(statement)
            changed = True


# Names a module has before its first statement runs.
_MODULE_NAMES = set(dir(builtins)) | {
    "__name__",
    "__file__",
    "__doc__",
    "__spec__",
    "__package__",
    "__loader__",
    "__builtins__",
    "__path__",
    "__annotations__",
}


def _close(body: list[ast.stmt], keep: list[bool]) -> None:
    """Drops, in place, each kept statement of the script kind (an assignment, a call, an `if`)
    that reads a name nothing kept before it binds: its provider was left out (a model, a data
    set, a figure), and running it would stop the skeleton with a NameError that says nothing
    about the model. Dropping one may orphan later ones, hence the single pass in order."""
    bound = set(_MODULE_NAMES)
    for index, statement in enumerate(body):
        if not keep[index]:
            continue
        if isinstance(statement, ast.ImportFrom) and any(a.name == "*" for a in statement.names):
            return  # names of a star import are not known here: keep the rest as it is
        script = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr, ast.If)
        if isinstance(statement, script) and not (
            isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
        ):
            reads = _reads(statement)
            if isinstance(statement, ast.AugAssign):
                reads |= {_root(statement.target)} - {None}  # type: ignore[arg-type]
            if isinstance(statement, ast.If):
                reads -= _binds(statement)  # `if cuda: a = 1; b = a`
            if reads - bound:
                keep[index] = False
                continue
        bound |= _binds(statement)


def _binds(statement: ast.stmt) -> set[str]:
    """The module-level names a statement binds: its targets, imports and definitions, in its
    nested blocks too, not inside the functions and classes it defines."""
    names: set[str] = set()
    pending: list[ast.AST] = [statement]
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add(alias.asname or alias.name.split(".")[0])
            continue
        if isinstance(node, (ast.Lambda, *_COMPREHENSIONS)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        pending.extend(ast.iter_child_nodes(node))
    return names


def _looks_like_a_model(node: ast.ClassDef) -> bool:
    if any(isinstance(item, ast.FunctionDef) and item.name == "forward" for item in node.body):
        return True
    return any(
        word in ast.unparse(base) for base in node.bases for word in ("Module", "Model", "Net")
    )


def _assigned_names(statement: ast.stmt) -> set[str]:
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, (ast.AnnAssign, ast.AugAssign)):
        targets = [statement.target]
    elif isinstance(statement, ast.If):
        return {
            name for inner in statement.body + statement.orelse for name in _assigned_names(inner)
        }
    else:
        return set()
    return {
        node.id
        for target in targets
        for node in ast.walk(target)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
    }


def _root(node: ast.expr) -> str | None:
    """`parser` of `parser.add_argument`, `opt` of `opt.lr` or `cfg["a"]`."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _feeds(statement: ast.stmt, needed: set[str], variables: set[str]) -> bool:
    """Whether the statement binds or mutates a needed name, being of a kind a slice may keep."""
    if isinstance(statement, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        if isinstance(statement, ast.AnnAssign) and statement.value is None:
            return False
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        for target in targets:
            for node in ast.walk(target):
                if (
                    isinstance(node, ast.Name)
                    and isinstance(node.ctx, ast.Store)
                    and node.id in needed
                ):
                    return True
            root = _root(target)
            if not isinstance(target, ast.Name) and root in needed and root in variables:
                return True
        return False
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        func = statement.value.func
        root = _root(func)
        return isinstance(func, ast.Attribute) and root in needed and root in variables
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        # a definition a plain-definition check left out for its decorator call
        # (`@autocast("cuda", enabled=False)`), when the model's code calls it
        return statement.name in needed
    if isinstance(statement, ast.If):
        if "__name__" in ast.unparse(statement.test):
            return False
        inner = statement.body + statement.orelse
        sliceable = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr, ast.Pass, ast.If)
        if not all(isinstance(s, sliceable) for s in inner):
            return False
        return any(_feeds(s, needed, variables) for s in inner)
    return False


def _imported_from_unsafe_modules(body: list[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for statement in body:
        for node in ast.walk(statement):
            if isinstance(node, ast.ImportFrom) and any(
                part in _UNSAFE_MODULES for part in (node.module or "").split(".")
            ):
                names |= {alias.asname or alias.name for alias in node.names}
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if any(part in _UNSAFE_MODULES for part in alias.name.split(".")):
                        names.add(alias.asname or alias.name.split(".")[0])
    return names


# Keyword arguments that mean a call reads or fetches data: `MNIST(root=..., download=True)`.
_DATA_KEYWORDS = {"download", "root", "data_dir", "cache_dir", "url", "filename", "path"}


def _safe(
    statement: ast.AST,
    model_classes: set[str],
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef],
    depth: int = 0,
) -> bool:
    """Whether running the statement calls nothing a slice must not (see _UNSAFE_CALLS)."""
    for node in ast.walk(statement):
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith)):
            return False
        if isinstance(node, (ast.Await, ast.Yield, ast.YieldFrom, ast.Global, ast.Delete)):
            return False
        if not isinstance(node, ast.Call):
            continue
        written = _written(node.func)
        if written is None:
            continue  # `f()()`, `x[0]()`: their inner calls are walked too
        parts = written.split(".")
        if parts[-1] in _UNSAFE_CALLS or any(part in _UNSAFE_MODULES for part in parts):
            return False
        if any("dataset" in part.lower() or "loader" in part.lower() for part in parts):
            return False
        if any(keyword.arg in _DATA_KEYWORDS for keyword in node.keywords):
            return False
        if parts[0] in model_classes:  # a name imported from a data or I/O module
            return False
        if len(parts) == 1 and parts[0] in model_classes:
            return False  # `generator = Generator()`: the model is what torchls builds
        if len(parts) == 1 and parts[0] in functions:
            # `opt = get_args()`: a function of the file, if its own body is safe
            if depth > 0 or not _safe(functions[parts[0]], model_classes, functions, depth + 1):
                return False
            if any(
                isinstance(inner, ast.Call)
                and isinstance(inner.func, ast.Name)
                and inner.func.id in functions
                for inner in ast.walk(functions[parts[0]])
            ):
                return False
    return True


def _runs_now(statement: ast.stmt) -> ast.AST:
    """What executing the statement runs at once: for a function, its decorators and default
    values; for a class, its decorators, bases and the statements of its body that are not
    methods (methods run only when called); for anything else, all of it."""
    methods = (ast.FunctionDef, ast.AsyncFunctionDef)
    if isinstance(statement, methods):
        arguments = statement.args
        parts = [*statement.decorator_list, *arguments.defaults]
        parts += [d for d in arguments.kw_defaults if d is not None]
        return ast.Module(body=[ast.Expr(part) for part in parts], type_ignores=[])
    if isinstance(statement, ast.ClassDef):
        parts = [*statement.decorator_list, *statement.bases]
        parts += [k.value for k in statement.keywords]
        body = [inner for inner in statement.body if not isinstance(inner, methods)]
        return ast.Module(body=body + [ast.Expr(part) for part in parts], type_ignores=[])
    return statement


def _written(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Call):  # `torch.Generator().manual_seed(0)`: the chain's names
        inner = _written(node.func)
        return None if inner is None else ".".join([inner, *reversed(parts)])
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _reads(node: ast.AST, bodies: bool = True) -> set[str]:
    """The free names a statement or expression reads, anywhere inside it (the bodies of its
    functions too, less their parameters and local variables, unless `bodies` is false: then a
    top-level function's body is left out, its defaults and decorators are not)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        arguments = node.args
        outside: list[ast.AST] = [*arguments.defaults]
        outside += [d for d in arguments.kw_defaults if d is not None]
        if not isinstance(node, ast.Lambda):
            outside += node.decorator_list
        names: set[str] = set()
        for part in outside:
            names |= _reads(part)
        if not bodies:
            return names
        inner: list[ast.AST] = list(node.body) if isinstance(node.body, list) else [node.body]
        loads: set[str] = set()
        for part in inner:
            loads |= _reads(part)
        local = {
            a.arg
            for a in [
                *arguments.posonlyargs,
                *arguments.args,
                *arguments.kwonlyargs,
                *([arguments.vararg] if arguments.vararg else []),
                *([arguments.kwarg] if arguments.kwarg else []),
            ]
        }
        declared: set[str] = set()
        for part in inner:
            for child in ast.walk(part):
                if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                    local.add(child.id)
                elif isinstance(child, (ast.Global, ast.Nonlocal)):
                    declared.update(child.names)
        return names | (loads - (local - declared))
    if isinstance(node, ast.Name):
        return {node.id} if isinstance(node.ctx, ast.Load) else set()
    names = set()
    for child in ast.iter_child_nodes(node):
        names |= _reads(child)
    if isinstance(node, _COMPREHENSIONS):
        # `[a for row in grid for a in row]` reads `grid`, not its own loop variables
        names -= {
            target.id
            for generator in node.generators
            for target in ast.walk(generator.target)
            if isinstance(target, ast.Name)
        }
    return names


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _is_definition(statement: ast.stmt) -> bool:
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return True
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        # Decorators, bases and default values run when the definition does.
        parts: list[ast.expr] = list(statement.decorator_list)
        if isinstance(statement, ast.ClassDef):
            parts += statement.bases + [k.value for k in statement.keywords]
        else:
            arguments = statement.args
            parts += [d for d in arguments.defaults + arguments.kw_defaults if d is not None]
        return all(_is_plain(part) for part in parts)
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return True  # docstrings
    if isinstance(statement, (ast.Assign, ast.AnnAssign)):
        # Only names: `nn.Linear = Mine` or `registry[k] = v` would change other code.
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        if not all(_binds_names_only(target) for target in targets):
            return False
        return statement.value is None or _is_plain(statement.value)
    if isinstance(statement, ast.Try):
        # try: import fast_thing / except ImportError: fast_thing = None
        blocks = [statement.body, statement.orelse, statement.finalbody]
        # or `except ImportError as e: print(e); raise`: saying why, then failing, is safe
        handled = [s for handler in statement.handlers for s in handler.body]
        return (
            all(_is_definition(s) for block in blocks for s in block)
            and all(_is_definition(s) or _reports_and_raises(s) for s in handled)
            and all(
                handler.type is None or _is_plain(handler.type) for handler in statement.handlers
            )
        )
    if isinstance(statement, ast.If):
        if "__name__" in ast.unparse(statement.test) or not _is_plain(statement.test):
            return False
        # `if TYPE_CHECKING:` and `if sys.version_info >= ...:` blocks of definitions
        return all(_is_definition(s) for s in statement.body) and all(
            _is_definition(s) for s in statement.orelse
        )
    return False


def _reports_and_raises(statement: ast.stmt) -> bool:
    if isinstance(statement, ast.Raise):
        return (
            statement.exc is None
            or _is_plain(statement.exc)
            or (
                isinstance(statement.exc, ast.Call)
                and isinstance(statement.exc.func, ast.Name)
                and all(isinstance(a, (ast.Constant, ast.Name)) for a in statement.exc.args)
            )
        )
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        said = _written(statement.value.func)
        return said in {"print", "warnings.warn"} and all(
            isinstance(a, (ast.Constant, ast.Name, ast.JoinedStr)) for a in statement.value.args
        )
    return False


def _binds_names_only(target: ast.expr) -> bool:
    if isinstance(target, ast.Name):
        return True
    if isinstance(target, (ast.Tuple, ast.List)):
        return all(_binds_names_only(item) for item in target.elts)
    return False


def _is_plain(node: ast.expr) -> bool:
    """Literals, names, attributes, containers and arithmetic of those, and a few type helpers."""
    try:
        children = list(ast.walk(node))
    except RecursionError:
        return False
    for child in children:
        if isinstance(child, ast.Call):
            if ast.unparse(child.func) not in _DEFINITION_CALLS:
                return False
        elif isinstance(
            child, (ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr, ast.Lambda, ast.Subscript)
        ) and not _is_type_subscript(child):
            return False
    return True


def _is_type_subscript(node: ast.AST) -> bool:
    """`list[int]`, `Optional[str]`: annotations and aliases, not lookups with side effects."""
    return isinstance(node, ast.Subscript) and isinstance(node.value, (ast.Name, ast.Attribute))
