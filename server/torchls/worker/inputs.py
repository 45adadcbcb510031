"""The inputs of a profile: made from the spec the server read (source/inputs.py, a
`# torchls: input=` comment, `--input`), or guessed from the model's first layer."""

from __future__ import annotations

import weakref
from typing import Any

from torchls.worker import protocol
from torchls.worker.jobs import JobError


def advice(params: dict[str, Any] | None, what: str) -> str:
    """What to add and where, for the place the user asked from: an option of `torchls
    profile`, or a comment above the line of their file in the editor (never a comment in an
    installed library's code)."""
    example = "(...)" if what == "args" else "(1, 3, 224, 224)"
    params = params or {}
    if params.get("front") == "cli":
        return f"pass --{what} '{example}' (your values)"
    where = params.get("where") or {}
    line, file = where.get("line"), where.get("file")
    place = f"above line {line} of {file}" if line and file else "above the class or the call"
    return f"add `# torchls: {what}={example}` {place} (your values)"


def _guess_inputs(torch: Any, model: Any, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """An input shape read off the model when none is written anywhere: labelled a guess."""
    config = getattr(model, "config", None)
    main_input = getattr(model, "main_input_name", None)
    if config is not None and main_input:
        if main_input == "input_ids":
            length = min(128, int(getattr(config, "max_position_embeddings", 128) or 128))
            return _guess([[1, length]], "int64", f"{type(model).__name__} takes token ids")
        if main_input == "pixel_values":
            size = getattr(config, "image_size", 224)
            size = size[0] if isinstance(size, (list, tuple)) else size
            channels = getattr(config, "num_channels", 3)
            return _guess([[1, channels, size, size]], "float32", f"the config's image_size {size}")
    nn = torch.nn
    for path, module in model.named_modules():
        if isinstance(module, nn.modules.lazy.LazyModuleMixin):
            continue  # its input size is what the forward pass decides
        where = f"the first layer, `{path}` {type(module).__name__}"
        if isinstance(module, nn.Conv2d):
            stated = STATED_SIDES.get(model)
            if stated is not None and _runs(
                torch, _probe(model), [1, module.in_channels, stated, stated]
            ):
                return _guess(
                    [[1, module.in_channels, stated, stated]],
                    "float32",
                    f"{where}, at the side the constructor was given ({stated})",
                )
            side = _first_side_that_fits(torch, model, module.in_channels)
            if side not in (None, 224):
                return _guess(
                    [[1, module.in_channels, side, side]],
                    "float32",
                    f"{where}, at {side}x{side}: the first usual image size its forward accepts "
                    "(224x224 does not fit it)",
                )
            return _guess([[1, module.in_channels, 224, 224]], "float32", where)
        if isinstance(module, nn.Conv1d):
            return _guess([[1, module.in_channels, 1024]], "float32", where)
        if isinstance(module, nn.Conv3d):
            return _guess([[1, module.in_channels, 16, 112, 112]], "float32", where)
        if isinstance(module, nn.Linear):
            if _runs(torch, _probe(model), [1, module.in_features]) is False:
                # a ViT's patch projection comes first, after a rearrangement of the image
                stated = STATED_SIDES.get(model)
                sides = _USUAL_SIDES if stated is None else (stated, *_USUAL_SIDES)
                for channels in (3, 1):
                    side = _first_side_that_fits(torch, model, channels, sides=sides)
                    if side is not None:
                        which = (
                            f"at the side the constructor was given ({side})"
                            if side == stated
                            else f"{channels}x{side}x{side} is the first usual image shape it "
                            "accepts"
                        )
                        return _guess(
                            [[1, channels, side, side]],
                            "float32",
                            f"the forward, which takes images: ({module.in_features},) of "
                            f"{where} does not fit it; {which}",
                        )
            return _guess([[1, module.in_features]], "float32", where)
        if isinstance(module, nn.Embedding):
            return _guess([[1, 128]], "int64", where)
        if isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
            shape = [1, 32, module.input_size] if module.batch_first else [32, 1, module.input_size]
            return _guess([shape], "float32", where)
    raise JobError(
        protocol.ERROR_USER,
        f"torchls cannot tell this model's input shape; {advice(params, 'input')}",
    )


# The image side a model was built for, where its constructor was given one by a name that says
# so (`image_size=256`, `img_size`, `resolution`): the guess tries it first. Set by building.py.
STATED_SIDES: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

# Image sides models are written for, most common first: a classifier's flatten, a GAN's
# discriminator or an MNIST net accepts one of them only.
_USUAL_SIDES = (224, 32, 28, 64, 256, 128, 96, 299, 512, 16, 48, 160, 192, 384)


def _first_side_that_fits(
    torch: Any, model: Any, channels: int, sides: tuple[int, ...] = _USUAL_SIDES
) -> int | None:
    """The first usual side at which a forward on the meta device runs (cheap: shapes only), or
    None when none does (the forward fails for another reason: the caller's ways say which)."""
    probe = _probe(model)
    for side in sides:
        if _runs(torch, probe, [1, channels, side, side]):
            return side
    return None


def _probe(model: Any) -> Any:
    """A copy in eval mode to try shapes on, so that the model counted later is as built."""
    import copy

    try:
        probe = copy.deepcopy(model)
    except Exception:
        return None
    probe.eval()
    return probe


def _runs(torch: Any, probe: Any, shape: list[int]) -> bool | None:
    """Whether a forward on the meta device takes a float input of this shape; None when there
    is no copy to try it on."""
    if probe is None:
        return None
    try:
        with torch.device("meta"), torch.no_grad():
            probe(torch.empty(shape, device="meta"))
    except Exception:
        return False
    return True


def _guess(shapes: list[list[int]], dtype: str, why: str) -> dict[str, Any]:
    return {
        "tensors": [{"shape": shape, "dtype": dtype} for shape in shapes],
        "source": f"a guess from {why}",
        "guess": True,
    }


class ModelInputs(list):  # type: ignore[type-arg]
    """The positional inputs of the forward (a list, as callers always had it), and the ones
    passed by name in `kwargs` (`input_ids=..., attention_mask=...`)."""

    kwargs: dict[str, Any]

    def __init__(self, args: list[Any], kwargs: dict[str, Any]) -> None:
        super().__init__(args)
        self.kwargs = kwargs


def _make_inputs(torch: Any, spec: dict[str, Any], make: Any = None) -> ModelInputs:
    """The inputs the spec describes; `make(shape, dtype)` makes each tensor (meta by default).
    An item may be a tuple of tensors (an LSTM's `(h, c)`); `kwargs` are passed by name."""

    def tensor(shape: tuple[int, ...], dtype: Any) -> Any:
        if make is not None:
            return make(shape, dtype)
        return torch.empty(shape, dtype=dtype, device="meta")

    def build(item: dict[str, Any]) -> Any:
        if "value" in item:  # a plain value beside the tensors: mode="val", steps=4
            return item["value"]
        if "tuple" in item:
            return tuple(build(inner) for inner in item["tuple"])
        dtype = getattr(torch, str(item.get("dtype", "float32")))
        return tensor(tuple(item["shape"]), dtype)

    args = [build(item) for item in spec.get("tensors") or []]
    kwargs = {str(name): build(item) for name, item in (spec.get("kwargs") or {}).items()}
    return ModelInputs(args, kwargs)


def forward(model: Any, inputs: list[Any]) -> Any:
    """`model(*args, **kwargs)` with the inputs `_make_inputs` made."""
    return model(*inputs, **getattr(inputs, "kwargs", {}))
