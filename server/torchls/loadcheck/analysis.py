"""What a `load_state_dict` site will do when it runs, from three pieces of data: the site as the
source writes it (`source/loads.py`), the checkpoint as the reader describes it (no torch), and
the model's state-dict keys as the worker built them (meta device).

Pure: no LSP types, no I/O. The language server, `torchls check` and the quick fixes' own
verification all call `analyse`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchls.compare import ANY_SHAPE, Comparison, KeyGroup, Shape, compare, group_keys
from torchls.source.loads import LoadSite, Step
from torchls.source.pins import TorchPin
from torchls.source.text import Span

ERROR, WARNING, INFORMATION = "error", "warning", "information"
NOT_A_TENSOR: Shape = (-1,)  # a leaf that is not a tensor ('epoch': 3) in a loaded mapping
# Names of a nested state dict in training checkpoints, most likely first.
NESTED_NAMES = (
    "state_dict", "model_state_dict", "model", "module", "net", "network", "weights",
    "params", "model_ema", "ema", "ema_state_dict", "state_dict_ema",
)  # fmt: skip
WRAPPER_NAMES = {
    "module.": "DataParallel/DistributedDataParallel",
    "_orig_mod.": "torch.compile",
    "_fsdp_wrapped_module.": "FSDP",
    "_checkpoint_wrapped_module.": "activation checkpointing",
    "_forward_module.": "Lightning's strategy wrapper",
    "base_model.model.": "PEFT",
    "model.": "a module holding the network as `self.model` (a LightningModule, say)",
}
# Buffers Hugging Face models stopped saving (non-persistent in newer transformers).
HF_STRAY_NAMES = {"position_ids", "token_type_ids", "inv_freq", "masked_bias"}
WEIGHTS_ONLY_SINCE = (2, 6)


@dataclass(frozen=True)
class Environment:
    """The workspace's torch, as the worker reports it; None when unknown."""

    torch_version: str | None = None
    cuda: bool | None = None
    # The workspace pins torch < 1.6 (source/pins.py): it cannot read zip-format checkpoints.
    old_torch_pin: TorchPin | None = None

    @property
    def weights_only_default(self) -> bool:
        version = _version(self.torch_version)
        return version is None or version >= WEIGHTS_ONLY_SINCE


@dataclass
class ModelKeys:
    """The worker's `state_dict` job result."""

    keys: dict[str, Shape]
    class_name: str = ""
    tied: dict[str, str] = field(default_factory=dict)  # key -> a key sharing its storage
    base_prefix: str | None = None  # Hugging Face's base_model_prefix ("bert")

    @classmethod
    def from_job(cls, value: Mapping[str, Any]) -> ModelKeys:
        keys = {
            str(k): ANY_SHAPE if v.get("shape") is None else tuple(int(d) for d in v["shape"])
            for k, v in value["keys"].items()
        }
        tied = {str(k): str(v) for k, v in (value.get("tied") or {}).items()}
        prefix = value.get("base_model_prefix")
        return cls(
            keys,
            str(value.get("class", "")).rsplit(".", 1)[-1],
            tied,
            str(prefix) if prefix else None,
        )

    def wrapped(self, prefix: str) -> ModelKeys:
        """The keys of `nn.DataParallel(model)` or `torch.compile(model)`."""
        return ModelKeys(
            {prefix + k: v for k, v in self.keys.items()},
            self.class_name,
            {prefix + k: prefix + v for k, v in self.tied.items()},
            self.base_prefix,
        )


@dataclass
class Container:
    tensors: dict[str, Shape] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)
    keys: list[str] = field(default_factory=list)  # leaves too (from the tree), first 40
    items: int = 0
    type: str = ""
    metadata: bool = False
    values: dict[str, Any] = field(default_factory=dict)  # plain leaves: hyper-parameters


@dataclass
class Checkpoint:
    """The reader's summary (CheckpointSummary.as_json), indexed by container."""

    path: str
    format: str
    containers: dict[str, Container]
    candidates: list[str]  # containers whose values are all tensors
    weights_only: Mapping[str, Any] | None
    root_type: str
    zip_format: bool = False  # torch >= 1.6's format (also a model folder's weights file)

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> Checkpoint:
        containers: dict[str, Container] = {}
        tree = summary.get("tree")
        stack: list[Mapping[str, Any]] = [tree] if isinstance(tree, Mapping) else []
        while stack:
            node = stack.pop()
            path = "" if node["path"] == "(root)" else node["path"]
            containers[path] = Container(
                keys=list(node.get("keys", [])),
                items=int(node.get("items", 0)),
                type=str(node.get("type", "")),
                metadata=bool(node.get("metadata")),
                values=dict(node.get("values") or {}),
            )
            children = list(node.get("children", []))
            for child in children:
                # The tree lists a node's first 40 keys only: a list saved after 268 tensors
                # (`mask_values`) is still one of its keys, known from its own node.
                key = _child_key(path, str(child.get("path", "")))
                if key is not None and key not in containers[path].keys:
                    containers[path].keys.append(key)
            stack.extend(children)
        for tensor in summary.get("tensors", []):
            container = containers.setdefault(tensor["container"], Container(type="dict"))
            container.tensors[tensor["key"]] = tuple(tensor["shape"])
            container.devices.add(str(tensor.get("device", "cpu")))
        return cls(
            path=str(summary.get("path", "")),
            format=str(summary.get("format", "")),
            containers=containers,
            candidates=[str(c["path"]) for c in summary.get("candidates", [])],
            weights_only=summary.get("weights_only"),
            root_type=str(tree.get("type", "dict")) if isinstance(tree, Mapping) else "dict",
            zip_format="torch-zip"
            in {summary.get("format"), (summary.get("details") or {}).get("weights_format")},
        )

    @property
    def cuda_devices(self) -> list[str]:
        found = {d for c in self.containers.values() for d in c.devices if d.startswith("cuda")}
        return sorted(found)


@dataclass(frozen=True)
class Related:
    message: str
    where: str  # "checkpoint" | "model" | "site" | "file" (at `path`, 0-based `line`)
    path: str | None = None
    line: int = 0


@dataclass
class Finding:
    severity: str
    code: str
    message: str
    span: Span
    related: list[Related] = field(default_factory=list)


@dataclass
class Outcome:
    """Everything `analyse` worked out for one site; the quick fixes start from here."""

    findings: list[Finding] = field(default_factory=list)
    loaded: dict[str, Shape] | None = None  # the keys load_state_dict receives
    comparison: Comparison | None = None
    nested: str | None = None  # the container the weights are really in
    container: str = ""  # the container the site selects
    filled: float = 0.0  # share of the model's elements the load fills

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    def has(self, code: str) -> bool:
        return any(f.code == code for f in self.findings)


def analyse(
    site: LoadSite,
    checkpoint: Checkpoint | None,
    model: ModelKeys | None,
    environment: Environment,
    unreadable: str | None = None,
) -> Outcome:
    """`checkpoint` None with `unreadable` None: the file does not exist (or the path is not a
    literal). `model` None: the model could not be built; only the checkpoint is checked."""
    outcome = Outcome()
    if site.path is None:
        return outcome
    model = effective_model(site, model)
    if checkpoint is None:
        if unreadable is not None:
            outcome.findings.append(
                Finding(WARNING, "unreadable", unreadable, site.path_span or site.span)
            )
        else:
            looked = " or ".join(f"`{c}`" for c in site.candidates) or f"`{site.path}`"
            outcome.findings.append(
                Finding(
                    WARNING,
                    "missing-file",
                    f"`{site.path}` does not exist (no {looked}): this load will raise "
                    "FileNotFoundError unless the file is there when the script runs.",
                    site.path_span or site.span,
                )
            )
        return outcome
    _loader_findings(site, checkpoint, environment, outcome)
    _old_torch_finding(site, checkpoint, environment, outcome)
    if site.kind != "torch_load":  # a bare torch.load: no state dict, no keys to compare
        _key_findings(site, checkpoint, model, outcome)
    return outcome


# -- torch.load itself ----------------------------------------------------------------------------


def _loader_findings(
    site: LoadSite, checkpoint: Checkpoint, environment: Environment, outcome: Outcome
) -> None:
    if site.loader not in {"torch.load", "lightning"}:
        return
    span = site.loader_span or site.span
    caller = "load_from_checkpoint" if site.loader == "lightning" else "torch.load"
    verdict = checkpoint.weights_only or {}
    weights_only = site.keywords.get("weights_only")
    if weights_only is None and site.open_loader:
        return  # weights_only and map_location may come in through **kwargs
    checked = weights_only == "True" or (weights_only is None and environment.weights_only_default)
    refused = list(verdict.get("refused_globals") or [])
    dangerous = list(verdict.get("dangerous_globals") or [])
    allowed = site.allowed_globals
    if refused and allowed is not None:
        refused = [name for name in refused if name not in allowed]
    refuses = bool(refused) or bool(verdict.get("unsupported_opcodes"))
    if (
        verdict
        and not verdict.get("accepted", True)
        and checked
        and refuses
        and allowed is not None
    ):
        what = ", ".join(f"`{name}`" for name in refused[:4]) or "opcodes it does not allow"
        if len(refused) > 4:
            what += f" and {len(refused) - 4} more"
        default = (
            f"{caller}'s default weights_only=True" if weights_only is None else "weights_only=True"
        )
        message = (
            f"{caller} will raise: {default} refuses this file, which needs {what}; allow "
            "them with torch.serialization.add_safe_globals([...]) if you trust them, or pass "
            "weights_only=False only if you trust the whole file (it runs code from it)."
        )
        related = [Related(f"needs {name}", "checkpoint") for name in refused[:20]]
        related += [Related(f"runs code: {name}", "checkpoint") for name in dangerous[:20]]
        outcome.findings.append(Finding(ERROR, "weights-only", message, span, related))
    elif dangerous and not checked:
        names = ", ".join(f"`{name}`" for name in dangerous[:4])
        message = (
            f"{caller} with weights_only=False will run code from this file when it loads: its "
            f"pickle calls {names}. Load it only if you trust where it came from."
        )
        outcome.findings.append(Finding(WARNING, "runs-code", message, span))
    devices = checkpoint.cuda_devices
    if site.loader == "lightning":
        devices = []  # Lightning maps storages of a missing accelerator to the CPU itself
    if (
        devices
        and environment.cuda is False
        and site.keywords.get("map_location", "None") == "None"
    ):
        outcome.findings.append(
            Finding(
                ERROR,
                "cuda",
                f"torch.load will raise: the checkpoint's tensors were saved on "
                f"{', '.join(devices)} and this environment has no CUDA; pass "
                "map_location='cpu'.",
                span,
            )
        )


def _old_torch_finding(
    site: LoadSite, checkpoint: Checkpoint, environment: Environment, outcome: Outcome
) -> None:
    pin = environment.old_torch_pin
    if pin is None or not checkpoint.zip_format:
        return
    newest = f"torch {pin.newest}" if pin.newest else "a torch older than 1.6"
    name = Path(pin.file).name
    message = (
        f"This workspace pins {newest} (`{pin.requirement}` in {name}), which cannot load this "
        'checkpoint: it was saved in the zip format of torch >= 1.6 ("is a zip archive"). '
        '"Downgrade checkpoint" writes a copy old torch can load.'
    )
    related = [Related(f"torch is pinned here: {pin.requirement}", "file", pin.file, pin.line)]
    span = site.path_span or site.loader_span or site.span
    outcome.findings.append(Finding(WARNING, "zip-for-old-torch", message, span, related))


# -- the keys ---------------------------------------------------------------------------------


def _key_findings(
    site: LoadSite, checkpoint: Checkpoint, model: ModelKeys | None, outcome: Outcome
) -> None:
    if site.kind == "load_from_checkpoint" and not _saved_by_lightning(site, checkpoint, outcome):
        return
    if site.keys_unknown:
        return  # the dict is changed in place on the way: say nothing rather than guess
    if site.model_changed and model is not None:
        outcome.findings.append(
            Finding(
                INFORMATION,
                "unchecked",
                f"torchls does not check this load's keys: {site.model_changed}.",
                site.span,
            )
        )
        model = None
    container_path, rewrites = _split_steps(site.steps)
    if rewrites is None:
        return  # a subscript after a rewrite: not followed
    outcome.container = container_path
    container = checkpoint.containers.get(container_path)
    if container is None or (not container.tensors and container.type not in _MAPPINGS):
        _no_such_container(site, checkpoint, container_path, container, outcome)
        return
    loaded = _loaded_keys(container)
    metadata = container.metadata and not rewrites
    for step in rewrites:
        loaded = apply_step(loaded, step)
    outcome.loaded = loaded
    nested = best_candidate(checkpoint, container_path, model)
    if nested is not None and _weights_are_nested(checkpoint, container, nested, model):
        outcome.nested = nested
        _whole_checkpoint(site, checkpoint, container_path, container, nested, outcome)
        return
    if model is None:
        return
    if site.kind == "from_pretrained":
        _pretrained_findings(site, loaded, model, outcome)
        return
    comparison = compare(model.keys, loaded)
    _settle_known_keys(comparison, model, loaded, metadata)
    if site.kind == "load_model":  # safetensors' load_model fills shared (tied) tensors itself
        tied = set(tied_missing(comparison, model, loaded))
        comparison.missing = [k for k in comparison.missing if k not in tied]
    outcome.comparison = comparison
    outcome.filled = filled_share(model, loaded)
    if not comparison.loads_non_strict:
        outcome.findings.append(_mismatch_finding(site, comparison, model))
        return
    strict = site.strict is not False
    if strict and not comparison.loads_strict:
        finding = _strict_finding(site, checkpoint, comparison, model, outcome)
        if site.strict is None:  # strict=flag, **kwargs: raises only if it is true
            finding.severity = WARNING
        outcome.findings.append(finding)
    elif not strict and outcome.filled < 1.0:
        outcome.findings.append(_partial_finding(site, comparison, model, outcome.filled))


_MAPPINGS = {"dict", "OrderedDict"}
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"


def _saved_by_lightning(site: LoadSite, checkpoint: Checkpoint, outcome: Outcome) -> bool:
    """load_from_checkpoint migrates the file first, and that needs the version Lightning
    writes into every checkpoint it saves."""
    root = checkpoint.containers.get("")
    if root is None or root.type not in _MAPPINGS or len(root.keys) < root.items:
        return True  # cannot tell
    if LIGHTNING_VERSION_KEY in root.keys:
        return True
    message = (
        f"load_from_checkpoint will raise KeyError: '{LIGHTNING_VERSION_KEY}': `{site.path}` "
        f"was not saved by Lightning (it holds {_listing(root.keys, root.items)}); build the "
        "model yourself and use load_state_dict."
    )
    outcome.findings.append(Finding(ERROR, "not-lightning", message, site.span))
    return False


def _pretrained_findings(
    site: LoadSite, loaded: dict[str, Shape], model: ModelKeys, outcome: Outcome
) -> None:
    """from_pretrained's own rules: it adds or strips the base model's prefix ("bert."),
    initializes missing weights anew and ignores unexpected ones (with a log warning), and
    raises on a shape mismatch unless ignore_mismatched_sizes=True."""
    prefix = f"{model.base_prefix}." if model.base_prefix else None
    if prefix is not None:
        has = any(k.startswith(prefix) for k in loaded)
        expects = any(k.startswith(prefix) for k in model.keys)
        if expects and not has:
            loaded = apply_step(loaded, Step("add", prefix))
        elif has and not expects:
            loaded = apply_step(loaded, Step("keep_prefix", prefix))
            loaded = apply_step(loaded, Step("strip", prefix))
    outcome.loaded = loaded
    comparison = compare(model.keys, loaded)
    outcome.comparison = comparison
    outcome.filled = filled_share(model, loaded)
    new = [k for k in comparison.missing if k not in tied_missing(comparison, model, loaded)]
    where = f"`{site.path}`"
    if comparison.mismatched:
        first = comparison.mismatched[0]
        shapes = (
            f"`{first.key}` is {_shape(first.model)} in the model and "
            f"{_shape(first.checkpoint)} in {where}"
        )
        count = _count(len(comparison.mismatched), "key")
        if site.strict:
            message = (
                f"from_pretrained will raise: {count} of {where} "
                f"{'has another shape' if len(comparison.mismatched) == 1 else 'have other shapes'}"
                f" ({shapes}); pass ignore_mismatched_sizes=True to initialize them anew."
            )
            outcome.findings.append(Finding(ERROR, "shapes", message, site.span))
        else:
            message = (
                f"from_pretrained initializes {count} anew because their shapes differ "
                f"({shapes}); train them before use."
            )
            outcome.findings.append(Finding(INFORMATION, "new-weights", message, site.span))
        return
    if outcome.filled <= 0.0:
        message = (
            f"from_pretrained loads nothing from {where}: none of its keys match "
            f"{model.class_name or 'the model'}'s; every weight keeps its random initial value."
        )
        outcome.findings.append(
            Finding(WARNING, "partial", message, site.span, _key_related(comparison))
        )
    elif new:
        message = (
            f"from_pretrained initializes {_count(len(new), 'key')} anew "
            f"({_groups(new)}): they are not in {where} and need training."
        )
        outcome.findings.append(Finding(INFORMATION, "new-weights", message, site.span))


def pretrained_takes_file(site: LoadSite) -> bool:
    """Whether from_pretrained takes its path as the weights file itself: it does when given a
    config object, or (a concrete class, not an Auto* one) a config path; without either it
    reads the path as the config."""
    return site.pretrained_config == "object" or (
        site.pretrained_config == "path" and not site.auto_class
    )


def pretrained_file_finding(site: LoadSite) -> Finding:
    """from_pretrained on a weights file it will read as a config."""
    why = (
        "an Auto class ignores a config given as a path"
        if site.pretrained_config == "path"
        else "no config= is given"
    )
    message = (
        f"from_pretrained will raise OSError: `{site.path}` is a file and {why}, so transformers "
        "reads the file as the model's config (JSON); pass the config object "
        "(config=AutoConfig.from_pretrained(folder)) or the folder holding the file."
    )
    return Finding(ERROR, "pretrained-file", message, site.path_span or site.span)


def effective_model(site: LoadSite, model: ModelKeys | None) -> ModelKeys | None:
    """The keys of the object `load_state_dict` is called on: the model's, with the prefix of
    any wrapper the script puts around it (`nn.DataParallel(model)`)."""
    if model is not None and site.model is not None and site.model.wrapper_prefix:
        return model.wrapped(site.model.wrapper_prefix)
    return model


def _split_steps(steps: list[Step]) -> tuple[str, list[Step] | None]:
    path = ""
    rest: list[Step] = []
    for step in steps:
        if step.kind == "key":
            if rest:
                return path, None
            path += f"[{step.value!r}]"
        else:
            rest.append(step)
    return path, rest


def _child_key(parent: str, child: str) -> str | None:
    """`mask_values` from the paths `` and `['mask_values']`; None if not a string key."""
    if not child.startswith(parent) or not child.endswith("]"):
        return None
    try:
        key = ast.literal_eval(child[len(parent) + 1 : -1])
    except (ValueError, SyntaxError, RecursionError):
        return None
    return key if isinstance(key, str) else None


def _loaded_keys(container: Container) -> dict[str, Shape]:
    loaded = dict(container.tensors)
    for key in container.keys:
        loaded.setdefault(key, NOT_A_TENSOR)
    return loaded


def apply_step(keys: Mapping[str, Shape], step: Step) -> dict[str, Shape]:
    kind, value = step.kind, step.value
    out: dict[str, Shape] = {}
    for key, shape in keys.items():
        if kind == "strip":
            key = key[len(value) :] if key.startswith(value) else key
        elif kind == "add":
            key = value + key
        elif kind == "cut":
            key = key[value:]
        elif kind == "replace":
            key = key.replace(value[0], value[1])
        elif _dropped(kind, value, key):
            continue
        out[key] = shape
    return out


def _dropped(kind: str, value: Any, key: str) -> bool:
    if kind == "keep_prefix":
        return not key.startswith(value)
    if kind == "drop_prefix":
        return key.startswith(tuple(value))
    if kind == "drop_suffix":
        return key.endswith(tuple(value))
    return kind == "drop_keys" and key in value


def _settle_known_keys(
    comparison: Comparison, model: ModelKeys, loaded: Mapping[str, Shape], metadata: bool
) -> None:
    """Keys torch itself forgives, and unexpected keys with a known harmless origin."""
    if not metadata:
        # Without `_metadata` (a plain dict, safetensors), BatchNorm fills a missing counter.
        comparison.missing = [
            k for k in comparison.missing if not k.endswith(".num_batches_tracked")
        ]
    # The old weight_norm's `weight_g`/`weight_v` load into the new parametrization: torch's
    # own load hook renames them.
    for key in [k for k in comparison.unexpected if k.endswith((".weight_g", "weight_g"))]:
        base = key[: -len("weight_g")]
        old, new = (
            (base + "weight_g", base + "weight_v"),
            (
                base + "parametrizations.weight.original0",
                base + "parametrizations.weight.original1",
            ),
        )
        if all(k in comparison.unexpected for k in old) and all(
            k in comparison.missing for k in new
        ):
            comparison.unexpected = [k for k in comparison.unexpected if k not in old]
            comparison.missing = [k for k in comparison.missing if k not in new]
    strays = set(comparison.stray)
    for key in comparison.unexpected:
        if key.rsplit(".", 1)[-1] in HF_STRAY_NAMES and loaded.get(key) != NOT_A_TENSOR:
            strays.add(key)
    comparison.stray = [k for k in comparison.unexpected if k in strays]


def tied_missing(
    comparison: Comparison, model: ModelKeys, loaded: Mapping[str, Shape]
) -> list[str]:
    """Missing keys that share storage with a key the checkpoint fills (a tied lm_head)."""
    return [k for k in comparison.missing if model.tied.get(k) in loaded]


def filled_share(model: ModelKeys, loaded: Mapping[str, Shape]) -> float:
    def fills(key: str) -> bool:
        return key in loaded and model.keys[key] in (ANY_SHAPE, loaded[key])

    total = sum(_numel(shape) for shape in model.keys.values())
    if not total:
        return 1.0
    done = sum(
        _numel(shape)
        for key, shape in model.keys.items()
        if fills(key) or (key in model.tied and fills(model.tied[key]))
    )
    return done / total


def _weights_are_nested(
    checkpoint: Checkpoint, container: Container, nested: str, model: ModelKeys | None
) -> bool:
    """Whether the weights are in `nested` rather than in the container itself: it has no
    tensors of its own, or the few it has (a `best_val_loss` saved as a 0-dim tensor beside
    `model`, `optimizer`, `iter_num`) fill less of the model than the nested dict does."""
    if not container.tensors:
        return True
    inside = checkpoint.containers[nested].tensors if nested in checkpoint.containers else {}
    if model is not None:
        return filled_share(model, inside) > filled_share(model, container.tensors)
    return len(container.tensors) * 4 <= len(inside)


def best_candidate(checkpoint: Checkpoint, under: str, model: ModelKeys | None) -> str | None:
    """The nested state dict below `under` the model would load best from."""
    below = [c for c in checkpoint.candidates if c.startswith(under) and c != under]
    if not below:
        return None

    def score(path: str) -> tuple[float, int, int]:
        keys = checkpoint.containers[path].tensors if path in checkpoint.containers else {}
        match = 0.0
        if model is not None and keys:
            comparison = compare(model.keys, keys)
            fix = comparison.prefix_fix
            if fix is not None:
                keys = apply_step(
                    keys, Step("strip", fix.strip) if fix.strip else Step("add", fix.add)
                )
            match = filled_share(model, keys)
        name = re.findall(r"\['([^']*)'\]", path[len(under) :])
        rank = (
            NESTED_NAMES.index(name[0]) if name and name[0] in NESTED_NAMES else len(NESTED_NAMES)
        )
        return (-match, rank, -len(keys))

    return min(below, key=score)


# -- messages ---------------------------------------------------------------------------------


def _no_such_container(
    site: LoadSite,
    checkpoint: Checkpoint,
    path: str,
    container: Container | None,
    outcome: Outcome,
) -> None:
    if path == "" and (container is None or container.type in {"list", "tuple"}):
        what = {"list": "a list", "tuple": "a tuple"}.get(
            container.type if container else "", "a single value"
        )
        nested = best_candidate(checkpoint, "", None)
        where = f"; the weights are at {nested}" if nested else ""
        message = (
            f"{_call(site)} will raise TypeError: `{site.path}` holds {what}, not a state dict "
            f"(a mapping of names to tensors){where}."
        )
        outcome.findings.append(Finding(ERROR, "not-a-mapping", message, site.span))
        return
    if container is None:
        parent_path = path[: path.rfind("[")] if path else ""
        parent = checkpoint.containers.get(parent_path)
        has = f"; it has {_listing(parent.keys, parent.items)}" if parent and parent.keys else ""
        where = f"`{site.path}`{parent_path}" if parent_path else f"`{site.path}`"
        message = f"This will raise KeyError: {where} has no {path[len(parent_path) :]}{has}."
        outcome.findings.append(Finding(ERROR, "no-such-key", message, site.argument or site.span))
        return
    if path == "" and container.type not in _MAPPINGS:
        message = (
            f"{_call(site)} will raise: `{site.path}` holds a whole pickled "
            f"`{checkpoint.root_type}` object (torch.save(model)), not a state dict; "
            "torch.load(..., weights_only=False) returns that object, which runs code from the "
            "file: do it only for a file you trust, then use its .state_dict()."
        )
        outcome.findings.append(Finding(ERROR, "pickled-module", message, site.span))


def _whole_checkpoint(
    site: LoadSite,
    checkpoint: Checkpoint,
    path: str,
    container: Container,
    nested: str,
    outcome: Outcome,
) -> None:
    where = f"`{site.path}`{path}"
    holds = _listing(container.keys, container.items)
    if site.strict is False:
        message = (
            f"strict=False loads nothing here: {where} is a training checkpoint ({holds}), "
            f"and the weights are under {nested[len(path) :]}."
        )
        severity = WARNING
    else:
        message = (
            f"{_call(site)} will raise: {where} is a training checkpoint ({holds}), not a "
            f"state dict; the weights are under {nested[len(path) :]}."
        )
        severity = ERROR
    outcome.findings.append(Finding(severity, "nested", message, site.span))


def _mismatch_finding(site: LoadSite, comparison: Comparison, model: ModelKeys) -> Finding:
    mismatched = comparison.mismatched
    first = mismatched[0]
    shapes = (
        f"`{first.key}` is {_shape(first.model)} in the model and {_shape(first.checkpoint)} in "
        "the checkpoint"
    )
    count = f"{len(mismatched)} key{'s' if len(mismatched) != 1 else ''}"
    if comparison.head_only:
        head = first.key.rsplit(".", 1)[0]
        message = (
            f"{_call(site)} will raise, even with strict=False: the head `{head}` has another "
            f"shape ({shapes}: trained for another number of classes?); everything else matches."
        )
    else:
        message = (
            f"{_call(site)} will raise, even with strict=False: {count} "
            f"{'have other shapes' if len(mismatched) != 1 else 'has another shape'} ({shapes})."
        )
    related = [
        Related(
            f"{m.key}: {_shape(m.model)} in the model, {_shape(m.checkpoint)} in the checkpoint",
            "model",
        )
        for m in mismatched[:20]
    ]
    return Finding(ERROR, "shapes", message, site.span, related + _key_related(comparison))


def _strict_finding(
    site: LoadSite,
    checkpoint: Checkpoint,
    comparison: Comparison,
    model: ModelKeys,
    outcome: Outcome,
) -> Finding:
    fix = comparison.prefix_fix
    missing, unexpected = len(comparison.missing), len(comparison.unexpected)
    if fix is not None and fix.strip:
        why = (
            f"the checkpoint's keys start with `{fix.strip}` "
            f"({_wrapper(fix.strip)}) and the model's don't"
        )
    elif fix is not None and fix.add:
        wrapped = WRAPPER_NAMES.get(fix.add, "a wrapper")
        why = (
            f"the model's keys start with `{fix.add}` (it is wrapped in {wrapped}) and the "
            "checkpoint's don't"
        )
    else:
        parts = []
        tied = tied_missing(comparison, model, outcome.loaded or {})
        if missing:
            verb = "is" if missing == 1 else "are"
            parts.append(
                f"{_count(missing, 'key')} of the model {verb} missing "
                f"({_groups(comparison.missing)})"
            )
        if unexpected:
            verb = "is" if unexpected == 1 else "are"
            parts.append(
                f"{_count(unexpected, 'key')} {verb} unexpected ({_groups(comparison.unexpected)})"
            )
        why = " and ".join(parts)
        loaded = outcome.loaded or {}
        strays = [key for key in comparison.unexpected if loaded.get(key) == NOT_A_TENSOR]
        if strays and len(strays) == unexpected and not missing:
            kinds = _leaf_kinds(checkpoint, outcome.container, strays)
            why = (
                f"{_groups(strays)} {'is' if len(strays) == 1 else 'are'} not "
                f"{'a tensor' if len(strays) == 1 else 'tensors'} ({kinds}, saved beside the "
                "weights) and load_state_dict takes tensors only"
            )
        elif tied and len(tied) == missing and not unexpected:
            why += f", though tied weights fill {'it' if missing == 1 else 'them'}"
        elif comparison.stray and len(comparison.stray) == unexpected and not missing:
            why += f", left by {_stray_origin(comparison.stray)}"
    if site.strict is None:
        message = f"{_call(site)} will raise if `strict` is true when it runs: {why}."
    else:
        message = f"{_call(site)} will raise (strict loading): {why}."
    return Finding(ERROR, "keys", message, site.span, _key_related(comparison))


def _leaf_kinds(checkpoint: Checkpoint, container: str, keys: list[str]) -> str:
    """`a list`, `an int and a str`: what the non-tensor entries are, as the reader saw them."""
    found = []
    for key in keys:
        child = checkpoint.containers.get(f"{container}[{key!r}]")
        value = checkpoint.containers.get(container, Container()).values.get(key)
        kind = child.type if child is not None and child.type else type(value).__name__
        if value is None and child is None:
            kind = "not a tensor"
        found.append(kind)
    unique = sorted(set(found))
    words = [f"{'an' if k[:1] in 'aeiou' else 'a'} {k}" for k in unique if k != "not a tensor"]
    return " and ".join(words) or "plain values"


def _partial_finding(
    site: LoadSite, comparison: Comparison, model: ModelKeys, filled: float
) -> Finding:
    if filled <= 0.0:
        fix = comparison.prefix_fix
        hint = f": the checkpoint's keys start with `{fix.strip}`" if fix and fix.strip else ""
        if fix and fix.add:
            hint = f": the model's keys start with `{fix.add}`"
        message = (
            f"strict=False loads nothing: none of the checkpoint's keys match the model's{hint}; "
            "the model keeps its initial weights."
        )
    else:
        groups = group_keys(comparison.missing)
        message = (
            f"strict=False loads {_percent(filled)} of the model: "
            f"{_count(len(comparison.missing), 'key')} stay at their initial values "
            f"({_describe_groups(groups)})."
        )
    return Finding(WARNING, "partial", message, site.span, _key_related(comparison))


def _call(site: LoadSite) -> str:
    if site.kind in {"load_model", "load_from_checkpoint"}:
        return site.kind
    return "load_state_dict"


def _key_related(comparison: Comparison) -> list[Related]:
    related = []
    for group in group_keys(comparison.missing)[:10]:
        related.append(Related(f"missing: {_group_text(group)}", "model"))
    for group in group_keys(comparison.unexpected)[:10]:
        related.append(Related(f"unexpected: {_group_text(group)}", "checkpoint"))
    return related


def _group_text(group: KeyGroup) -> str:
    sample = ", ".join(group.sample)
    more = f", ... ({group.count} in all)" if group.count > len(group.sample) else ""
    return f"{group.prefix + '.*' if group.prefix else '(top level)'}: {sample}{more}"


def _groups(keys: list[str]) -> str:
    return _describe_groups(group_keys(keys))


def _describe_groups(groups: list[KeyGroup]) -> str:
    if len(groups) == 1 and groups[0].count == 1:
        return f"`{groups[0].sample[0]}`"
    shown = [
        f"`{g.sample[0]}`"
        if g.count == 1
        else f"{g.count} under `{g.prefix}.*`"
        if g.prefix
        else ", ".join(f"`{key}`" for key in g.sample[:3]) + ("..." if g.count > 3 else "")
        for g in groups[:3]
    ]
    if len(groups) > 3:
        shown.append(f"{sum(g.count for g in groups[3:])} more")
    return ", ".join(shown)


def _stray_origin(keys: list[str]) -> str:
    if all(k.rsplit(".", 1)[-1] in {"total_ops", "total_params"} for k in keys):
        return "thop's profile()"
    return "an older library version (buffers that are no longer saved)"


def _wrapper(prefix: str) -> str:
    return (
        f"saved from {WRAPPER_NAMES[prefix]}" if prefix in WRAPPER_NAMES else "a wrapper's prefix"
    )


def _listing(keys: list[str], items: int) -> str:
    shown = ", ".join(keys[:6])
    return shown + (f", ... ({items} keys)" if items > 6 else "")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _shape(shape: Shape) -> str:
    if shape == NOT_A_TENSOR:
        return "not a tensor"
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _percent(share: float) -> str:
    if 0 < share < 0.01:
        return "under 1%"
    if 0.99 < share < 1:
        return "over 99%"
    return f"{share * 100:.0f}%"


def _numel(shape: Shape) -> int:
    count = 1
    for dim in shape:
        count *= max(dim, 0)
    return count


def _version(text: str | None) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None
