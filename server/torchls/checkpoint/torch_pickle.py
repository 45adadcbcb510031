"""Reducers for the globals torch writes into checkpoints, turning them into records.

Each reducer receives the arguments the pickle would have passed to the real function and
returns plain data. Validation happens here: a shape that does not fit its storage, or a dtype
torch does not have, is an error in the file, said in one sentence.
"""

from __future__ import annotations

from typing import Any

from torchls.checkpoint.dtypes import ITEMSIZE, dtype_from_global, storage_dtype
from torchls.checkpoint.pickle_vm import (
    Global,
    Opaque,
    PickleError,
    Reducer,
    RestrictedUnpickler,
    check_hashable,
)
from torchls.checkpoint.records import DeviceRecord, OrderedDictRecord, StorageRecord, TensorRecord

MAX_DIMS = 1024
INT64_LIMIT = 1 << 63


def _ints(value: Any, what: str) -> tuple[int, ...]:
    """A shape or stride: a tuple of integers in torch's int64 range."""
    if type(value) is not tuple or len(value) > MAX_DIMS:
        raise PickleError(f"a tensor's {what} must be a tuple of at most {MAX_DIMS} integers")
    for item in value:  # one pass, no min()/max() calls: this runs twice for every tensor
        if type(item) is not int or not 0 <= item < INT64_LIMIT:
            raise PickleError(f"a tensor's {what} must hold integers from 0 to 2**63-1")
    return value


def check_numel(tensor: TensorRecord) -> None:
    if tensor.numel >= INT64_LIMIT:
        raise PickleError(
            f"a tensor of {len(tensor.shape)} dimensions has more elements than torch can address"
        )


def _dtype(value: Any) -> str:
    if isinstance(value, Global):
        found = dtype_from_global(value.module, value.name)
        if found is not None:
            return found
        raise PickleError(f"{value.fullname} is not a torch dtype")
    raise PickleError("expected a torch dtype")


def check_extent(tensor: TensorRecord) -> None:
    """The tensor's elements must lie inside its storage (offset, shape and strides)."""
    storage = tensor.storage
    if storage is None:
        return
    shape = tensor.shape
    stride = tensor.stride or ()
    if len(stride) != len(shape):
        raise PickleError(f"tensor has {len(shape)} dimensions but {len(stride)} strides")
    if tensor.numel == 0:
        return
    last = tensor.offset
    for index in range(len(shape)):
        last += (shape[index] - 1) * stride[index]
    available = storage.nbytes // ITEMSIZE[tensor.dtype]
    if last >= available:
        raise PickleError(
            f"tensor of shape {list(shape)} (offset {tensor.offset}, strides {list(stride)}) "
            f"reaches element {last}, but its storage '{storage.key}' holds {available}"
        )


def _tensor_v2(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> TensorRecord:
    # (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    storage = args[0]
    if type(storage) is not StorageRecord:
        raise PickleError("a tensor's storage is not a storage record")
    offset = args[1]
    if type(offset) is not int or not 0 <= offset < INT64_LIMIT:
        raise PickleError("a tensor's storage offset must be a non-negative integer")
    tensor = TensorRecord(
        storage.dtype,
        _ints(args[2], "shape"),
        _ints(args[3], "stride"),
        offset,
        storage,
        len(args) > 4 and args[4] is True,
    )
    if tensor.numel >= INT64_LIMIT:
        check_numel(tensor)
    check_extent(tensor)  # against the view, for a legacy view of a larger storage
    if storage.view_of is not None:
        tensor.offset += storage.view_offset
        tensor.storage = storage.view_of
    return tensor


def _tensor_v3(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> TensorRecord:
    # (storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
    tensor = _tensor_v2(vm, args[:6])
    tensor.dtype = _dtype(args[6])
    check_extent(tensor)
    return tensor


def _tensor_v1(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> TensorRecord:
    # (storage, storage_offset, size, stride): torch < 1.x
    return _tensor_v2(vm, (*args[:4], False))


def _parameter(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> Any:
    data = args[0]
    if isinstance(data, TensorRecord):
        data.kind = "parameter"
        data.requires_grad = bool(args[1]) if len(args) > 1 else True
    return data


def _from_type_v2(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> Any:
    # (func, new_type, func_args, state): a tensor subclass, or a tensor with python attributes
    func, new_type, func_args = args[0], args[1], args[2]
    result = vm.call(func, func_args)
    if isinstance(result, TensorRecord) and isinstance(new_type, Global):
        if new_type.fullname == "torch.nn.parameter.Parameter":
            result.kind = "parameter"
        elif new_type.fullname != "torch.Tensor":
            result.subclass = new_type.fullname
    return result


def _meta_tensor(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> TensorRecord:
    # (dtype, size, stride, requires_grad)
    size, stride = args[1], args[2]
    tensor = TensorRecord(
        dtype=_dtype(args[0]),
        shape=_ints(tuple(size) if isinstance(size, list) else size, "shape"),
        stride=_ints(tuple(stride) if isinstance(stride, list) else stride, "stride"),
        offset=0,
        storage=None,
        requires_grad=bool(args[3]),
        kind="meta",
        device="meta",
    )
    check_numel(tensor)
    return tensor


def _qtensor(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> TensorRecord:
    tensor = _tensor_v2(vm, (*args[:4], args[5] if len(args) > 5 else False))
    tensor.kind = "quantized"
    return tensor


def _sparse(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> Any:
    # (layout, data): data = (indices, values, size[, is_coalesced]) for COO
    layout, data = args[0], args[1]
    if isinstance(data, tuple) and len(data) >= 3 and isinstance(data[1], TensorRecord):
        values = data[1]
        size = data[2]
        shape = tuple(size) if isinstance(size, (tuple, list)) else values.shape
        tensor = TensorRecord(values.dtype, _ints(shape, "shape"), None, 0, None, kind="sparse")
        check_numel(tensor)
        tensor.device = values.device
        return tensor
    return Opaque(Global("torch._utils", "_rebuild_sparse_tensor"), (layout, data), "call")


def _device_from_cpu(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> Any:
    # (data, dtype, device, requires_grad)
    data = args[0]
    if isinstance(data, TensorRecord):
        data.device = str(args[2])
        data.requires_grad = bool(args[3]) if len(args) > 3 else False
    return data


def _ordered_dict(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> OrderedDictRecord:
    record = OrderedDictRecord()
    if args:
        items = args[0]
        pairs = items.items() if isinstance(items, dict) else items
        for key, value in pairs:
            record[check_hashable(key)] = value
    return record


def _size(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(args[0]) if args else ()


def _device(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> DeviceRecord:
    if len(args) == 2 and args[1] is not None:
        return DeviceRecord(f"{args[0]}:{args[1]}")
    return DeviceRecord(str(args[0]))


def _codecs_encode(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> Any:
    # How protocol-2 pickles write bytes: _codecs.encode('\x00\x01...', 'latin1')
    text = args[0]
    if isinstance(text, str) and len(args) > 1 and args[1] in ("latin1", "latin-1"):
        return text.encode("latin-1")
    return Opaque(Global("_codecs", "encode"), args, "call")


def _set(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> Any:
    return {check_hashable(item) for item in args[0]} if args else set()


def _layout(vm: RestrictedUnpickler, args: tuple[Any, ...]) -> Any:
    return str(args[0])


TORCH_REDUCERS: dict[str, Reducer] = {
    "torch._utils._rebuild_tensor": _tensor_v1,
    "torch._utils._rebuild_tensor_v2": _tensor_v2,
    "torch._utils._rebuild_tensor_v3": _tensor_v3,
    "torch._utils._rebuild_parameter": _parameter,
    "torch._utils._rebuild_parameter_with_state": _parameter,
    "torch._tensor._rebuild_from_type_v2": _from_type_v2,
    "torch._utils._rebuild_meta_tensor_no_storage": _meta_tensor,
    "torch._utils._rebuild_qtensor": _qtensor,
    "torch._utils._rebuild_sparse_tensor": _sparse,
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": _device_from_cpu,
    "torch.nn.parameter.Parameter": _parameter,
    "collections.OrderedDict": _ordered_dict,
    "collections.Counter": _ordered_dict,
    "torch.Size": _size,
    "torch.device": _device,
    "torch.serialization._get_layout": _layout,
    "_codecs.encode": _codecs_encode,
    "builtins.set": _set,
}


class StorageTable:
    """Persistent ids -> storage records, shared between tensors that share a storage."""

    def __init__(self) -> None:
        self.storages: dict[str, StorageRecord] = {}
        self.untyped = False  # an UntypedStorage was referenced

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise PickleError("a persistent id that is not a torch storage")
        if pid[0] == "module":  # legacy files pickle the source of nn.Module classes
            return Opaque(Global("torch.serialization", "module_source"), pid[1:], "call")
        if pid[0] != "storage" or len(pid) < 5:
            raise PickleError(f"unknown persistent id {str(pid[0])[:40]!r}")
        storage_type, key, location, numel = pid[1], pid[2], pid[3], pid[4]
        if not isinstance(storage_type, Global):
            raise PickleError("a storage whose type is not a global")
        dtype = storage_dtype(storage_type.module, storage_type.name)
        if storage_type.name == "UntypedStorage":
            self.untyped = True
        if dtype is None:
            raise PickleError(f"unknown storage type {storage_type.fullname}")
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise PickleError("a storage with a malformed key or size")
        if not isinstance(location, str):
            location = str(location)
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = StorageRecord(key, dtype, location, numel)
        elif storage.numel != numel or storage.dtype != dtype:
            raise PickleError(f"storage '{key}' is described twice, differently")
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy: (view_key, offset, view_size)
            if not isinstance(view, tuple) or len(view) != 3:
                raise PickleError(f"storage '{key}' has a malformed view")
            view_key, view_offset, view_size = view
            if type(view_offset) is not int or type(view_size) is not int:
                raise PickleError(f"storage '{key}' has a malformed view")
            if view_offset < 0 or view_size < 0 or view_offset + view_size > storage.numel:
                raise PickleError(f"storage view '{view_key}' lies outside storage '{key}'")
            record = StorageRecord(str(view_key), dtype, location, view_size)
            record.view_of = storage
            record.view_offset = view_offset
            return record
        return storage
