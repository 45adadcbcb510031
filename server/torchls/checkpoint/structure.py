"""From the unpickled object to what a user wants to know: the container tree, the state-dict
candidates and the tensors.

Pickles can share objects and even contain cycles, and a hostile one can describe a graph whose
tree form is exponentially large. Every walk here visits each object once (by identity), is
iterative, and stops at a depth and a node budget, saying so in a warning.
"""

from __future__ import annotations

import math
from typing import Any

from torchls.checkpoint.dtypes import ITEMSIZE
from torchls.checkpoint.pickle_vm import Global, Opaque
from torchls.checkpoint.records import TensorRecord
from torchls.checkpoint.summary import ContainerNode, StateDictCandidate, TensorInfo

MAX_DEPTH = 64
MAX_NODES = 2_000_000
TREE_DEPTH = 6  # levels of the container tree shown
TREE_CHILDREN = 40  # children shown per container
TREE_KEYS = 40  # keys listed per mapping
TREE_KEYED_NODES = 200  # mappings that list their keys
MAX_CANDIDATES = 20


MAX_KEY_TEXT = 200  # characters of one key shown in a path
MAX_PATH_TEXT = 1_000  # characters of a whole path


def key_text(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool) and key.bit_length() > 256:
        return f"<int of {key.bit_length()} bits>"
    if isinstance(key, (int, float, bool, type(None), bytes)):
        return _clip(repr(key), MAX_KEY_TEXT)
    return f"<{type(key).__name__}>"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def subscript(path: str, key: Any) -> str:
    """`path['key']`, with long keys and long paths clipped so that a hostile file whose keys are
    64 KB strings nested 64 deep cannot make every path a megabyte."""
    if len(path) >= MAX_PATH_TEXT:
        return path
    if isinstance(key, str):
        part = repr(_clip(key, MAX_KEY_TEXT))
    elif isinstance(key, int) and not isinstance(key, bool):
        part = key_text(key)
    else:
        part = type(key).__name__
    return _clip(f"{path}[{part}]", MAX_PATH_TEXT)


def _children(obj: Any) -> list[tuple[Any, Any]]:
    """(key, value) pairs below a container; empty for leaves."""
    if isinstance(obj, dict):
        return list(obj.items())
    if isinstance(obj, (list, tuple)):
        return list(enumerate(obj))
    if isinstance(obj, Opaque):
        pairs: list[tuple[Any, Any]] = []
        if isinstance(obj.state, dict):
            pairs.extend(obj.state.items())
        elif obj.state is not None:
            pairs.append(("__state__", obj.state))
        if obj.entries:
            pairs.extend(obj.entries.items())
        if obj.items:
            pairs.extend(enumerate(obj.items))
        if obj.args:
            pairs.append(("__args__", obj.args))
        return pairs
    return []


def _type_name(obj: Any) -> str:
    if isinstance(obj, Opaque):
        return obj.type_name
    if isinstance(obj, dict):
        return "OrderedDict" if type(obj).__name__ == "OrderedDictRecord" else "dict"
    return type(obj).__name__


def _is_container(obj: Any) -> bool:
    return isinstance(obj, (dict, list, tuple, Opaque))


class Walk:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.tensors: list[TensorInfo] = []
        self.candidates: list[StateDictCandidate] = []
        self.tensor_counts: dict[int, int] = {}
        self.warnings: list[str] = []
        # The first tensor seen on each storage (by identity): later ones share it with that
        # one (tied weights, views), which the viewer shows as `shared_with`.
        self._storage_owner: dict[int, tuple[str, str]] = {}
        self._run()

    def _run(self) -> None:
        # Depth-first, each container once. `stack` holds (object, path, depth, via_int_keys).
        visited: set[int] = set()
        order: list[Any] = []
        stack: list[tuple[Any, str, int, bool]] = [(self.root, "", 0, False)]
        nodes = 0
        too_deep = False
        while stack:
            obj, path, depth, via_int = stack.pop()
            if id(obj) in visited:
                continue
            visited.add(id(obj))
            nodes += 1
            if nodes > MAX_NODES:
                self.warnings.append(f"stopped after {MAX_NODES:,} objects; the rest is not shown")
                break
            if depth > MAX_DEPTH:
                too_deep = True
                continue
            order.append(obj)
            pairs = _children(obj)
            tensor_pairs = []
            containers = []
            int_keys = False
            for pair in pairs:
                value = pair[1]
                if type(value) is TensorRecord:
                    tensor_pairs.append(pair)
                elif _is_container(value):
                    containers.append(pair)
                if type(pair[0]) is int:
                    int_keys = True
            tensors = self.tensors
            owners = self._storage_owner
            for key, tensor in tensor_pairs:
                info = _info(path, key, tensor)
                storage = tensor.storage
                if storage is not None:
                    root = storage.view_of or storage
                    owner = owners.get(id(root))
                    if owner is None:
                        owners[id(root)] = (path, info.key)
                    else:
                        info.shared_with = owner[1] if owner[0] == path else subscript(*owner)
                tensors.append(info)
            # Optimizer state is keyed by parameter index (via_int): not a state dict.
            all_tensors = tensor_pairs and len(tensor_pairs) == len(pairs)
            if all_tensors and isinstance(obj, dict) and not via_int:
                self.candidates.append(_candidate(path, tensor_pairs))
            int_keys = int_keys and isinstance(obj, dict)
            for key, value in reversed(containers):
                stack.append((value, subscript(path, key), depth + 1, via_int or int_keys))
        if too_deep:
            self.warnings.append(f"objects nested deeper than {MAX_DEPTH} levels are not shown")
        self.candidates.sort(key=lambda c: (-c.nbytes, -c.tensors, c.path))
        if len(self.candidates) > MAX_CANDIDATES:
            self.candidates = self.candidates[:MAX_CANDIDATES]
        self._order = order

    def tree(self) -> ContainerNode | None:
        if not _is_container(self.root):
            return None
        counts = self._count_tensors()
        return _node(self.root, "", 0, counts, set())

    def _count_tensors(self) -> dict[int, tuple[int, int]]:
        """Tensors, and their bytes, anywhere below each container, each container's own
        counted once."""
        counts: dict[int, tuple[int, int]] = {}
        for obj in reversed(self._order):  # children come after parents in `order`
            total = 0
            nbytes = 0
            for _key, value in _children(obj):
                if isinstance(value, TensorRecord):
                    total += 1
                    nbytes += value.nbytes
                elif _is_container(value):
                    below = counts.get(id(value), (0, 0))
                    total += below[0]
                    nbytes += below[1]
            counts[id(obj)] = (total, nbytes)
        return counts


def _node(
    obj: Any, path: str, depth: int, counts: dict[int, tuple[int, int]], seen: set[int]
) -> ContainerNode:
    seen.add(id(obj))
    pairs = _children(obj)
    children: list[ContainerNode] = []
    truncated = 0
    if depth < TREE_DEPTH:
        containers = [(k, v) for k, v in pairs if _is_container(v) and id(v) not in seen]
        for key, value in containers[:TREE_CHILDREN]:
            children.append(_node(value, subscript(path, key), depth + 1, counts, seen))
        truncated = max(0, len(containers) - TREE_CHILDREN)
    keys: tuple[str, ...] = ()
    values: dict[str, Any] = {}
    if isinstance(obj, dict) and len(seen) <= TREE_KEYED_NODES:
        # What a mapping holds, leaves too ("epoch, state_dict, optimizer"), for the first
        # mappings of the tree only, so that a file of a million small dicts stays small.
        keys = tuple(_clip(key_text(key), MAX_KEY_TEXT) for key, _ in pairs[:TREE_KEYS])
        # Plain values (hyper-parameters: num_classes=10) as they are; nothing else.
        values = {
            key: value
            for key, value in pairs[:TREE_KEYS]
            if isinstance(key, str) and len(key) <= MAX_KEY_TEXT and _plain_value(value)
        }
    return ContainerNode(
        path=path or "(root)",
        type=_type_name(obj),
        items=len(pairs),
        tensors=counts.get(id(obj), (0, 0))[0],
        nbytes=counts.get(id(obj), (0, 0))[1],
        children=tuple(children),
        truncated=truncated,
        keys=keys,
        metadata=_has_metadata(obj),
        values=values,
    )


def _plain_value(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return value.bit_length() <= 63
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= MAX_KEY_TEXT


def _has_metadata(obj: Any) -> bool:
    """A state dict from `Module.state_dict()` carries `_metadata` (each module's version);
    BatchNorm fills a missing `num_batches_tracked` only when it is absent."""
    state = getattr(obj, "pickle_state", None)
    return isinstance(state, dict) and "_metadata" in state


def _info(container: str, key: Any, tensor: TensorRecord) -> TensorInfo:
    return TensorInfo(
        container,
        key if type(key) is str else key_text(key),
        tensor.dtype,
        tensor.shape,
        tensor.numel,
        tensor.numel * ITEMSIZE[tensor.dtype],
        tensor.kind,
        tensor.device,
        tensor.subclass,
    )


def _candidate(path: str, pairs: list[tuple[Any, TensorRecord]]) -> StateDictCandidate:
    dtypes: dict[str, int] = {}
    nbytes = 0
    for _key, tensor in pairs:
        dtypes[tensor.dtype] = dtypes.get(tensor.dtype, 0) + 1
        nbytes += tensor.nbytes
    return StateDictCandidate(
        path=path,
        keys=tuple(key_text(key) for key, _ in pairs),
        tensors=len(pairs),
        nbytes=nbytes,
        dtypes=dtypes,
    )


def pickled_module_state(root: Any) -> dict[str, TensorRecord] | None:
    """The state dict of a whole `nn.Module` pickled with `torch.save(model)`, rebuilt from its
    `_parameters`, `_buffers` and `_modules` without running anything; None if `root` is not one."""
    if not _is_module(root):
        return None
    result: dict[str, TensorRecord] = {}
    stack: list[tuple[Any, str, int]] = [(root, "", 0)]
    visited: set[int] = set()
    while stack:
        module, prefix, depth = stack.pop()
        if id(module) in visited or depth > MAX_DEPTH:
            continue
        visited.add(id(module))
        state = module.state
        non_persistent = state.get("_non_persistent_buffers_set")
        skip = (
            {name for name in non_persistent if isinstance(name, str)}
            if isinstance(non_persistent, (set, frozenset, list))
            else set()
        )
        for group in ("_parameters", "_buffers"):
            tensors = state.get(group)
            if isinstance(tensors, dict):
                for name, tensor in tensors.items():
                    if isinstance(tensor, TensorRecord) and not (
                        group == "_buffers" and name in skip
                    ):
                        result[f"{prefix}{name}"] = tensor
        children = state.get("_modules")
        if isinstance(children, dict):
            for name, child in reversed(list(children.items())):
                if _is_module(child):
                    stack.append((child, f"{prefix}{name}.", depth + 1))
    return result


def _is_module(obj: Any) -> bool:
    return (
        isinstance(obj, Opaque)
        and isinstance(obj.state, dict)
        and "_parameters" in obj.state
        and "_modules" in obj.state
        and isinstance(obj.target, Global | Opaque)
    )
