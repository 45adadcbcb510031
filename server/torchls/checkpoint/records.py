"""What the restricted unpickler turns torch objects into: plain records, no torch."""

from __future__ import annotations

from math import prod
from typing import Any

from torchls.checkpoint.dtypes import ITEMSIZE


class StorageRecord:
    """One storage of a checkpoint: where its bytes live and how many there are."""

    __slots__ = ("dtype", "key", "location", "nbytes", "numel", "view_of", "view_offset")

    def __init__(self, key: str, dtype: str, location: str, numel: int) -> None:
        self.key = key
        self.dtype = dtype
        self.location = location
        self.numel = numel
        self.nbytes = numel * ITEMSIZE[dtype]
        # Legacy-format views of another storage: (root storage, offset in elements).
        self.view_of: StorageRecord | None = None
        self.view_offset = 0


class TensorRecord:
    """A tensor as a checkpoint describes it: dtype, shape, strides, storage; no data."""

    __slots__ = (
        "device", "dtype", "kind", "numel", "offset", "requires_grad", "shape", "storage",
        "stride", "subclass",
    )  # fmt: skip

    def __init__(
        self,
        dtype: str,
        shape: tuple[int, ...],
        stride: tuple[int, ...] | None,
        offset: int,
        storage: StorageRecord | None,
        requires_grad: bool = False,
        kind: str = "tensor",
        device: str | None = None,
    ) -> None:
        self.dtype = dtype
        self.shape = shape
        self.stride = stride
        self.offset = offset
        self.storage = storage
        self.requires_grad = requires_grad
        self.kind = kind  # tensor | parameter | quantized | sparse | meta | nested
        self.subclass: str | None = None  # e.g. "mylib.QuantTensor" for tensor subclasses
        self.device = device or (storage.location if storage is not None else "cpu")
        self.numel = prod(shape)

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]

    def set_pickle_state(self, state: Any) -> None:
        # Parameter/Tensor __setstate__ carries requires_grad and python attributes; only the
        # flag matters here.
        if isinstance(state, tuple) and len(state) >= 3 and isinstance(state[2], bool):
            self.requires_grad = state[2]


class OrderedDictRecord(dict[Any, Any]):
    """`collections.OrderedDict` as a dict that also keeps what BUILD set (a state dict's
    `_metadata`, with each module's version)."""

    pickle_state: Any = None

    def set_pickle_state(self, state: Any) -> None:
        self.pickle_state = state


class DeviceRecord(str):
    """`torch.device('cuda', 0)` as the string 'cuda:0'."""

    __slots__ = ()
