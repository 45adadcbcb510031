"""Training memory (issue 19, item 6): the bytes autograd saves for backward, measured by
worker/training.py on the model as the profile counted it (meta, fake tensors or the CPU), must
agree with a real CPU training forward of the same model measured here independently: real
tensors, saved_tensors_hooks summing each saved storage once by its data pointer, parameters and
buffers left out. Backward FLOPs must equal FlopCounterMode over a real CPU backward.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from torchls.worker.measure import count_forward
from torchls.worker.training import measure_training

TOLERANCE = 0.05


class NoLoader:
    """What the worker's loader tells error messages: no file here is the user's."""

    def __init__(self) -> None:
        self.not_run: dict[str, Any] = {}

    def is_user_file(self, filename: str) -> bool:
        return False


# -- the models ---------------------------------------------------------------------------------


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(self.drop(self.pool(x).flatten(1)))


class Encoder(nn.Module):
    """Token ids in, logits out; dropout 0 because the CPU's fused attention kernel (the one a
    real CPU forward uses) takes no dropout, where a GPU's does."""

    def __init__(self, vocab: int = 100, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 4, 128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(self.embed(ids))
        return self.head(hidden), hidden.mean()


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(16, 32, num_layers=2, batch_first=True)
        self.out = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        sequence, (hidden, _) = self.lstm(x)
        return {"logits": self.out(sequence[:, -1]), "hidden": hidden}


class Branches(nn.Module):
    """Two branches over one input, concatenated, with a residual addition and an in-place
    activation: views and in-place results share a storage, counted once."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(inplace=True))
        self.merge = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = torch.cat([self.left(x), self.right(x)], dim=1)
        merged = torch.relu_(self.merge(both)) + x
        return self.fc(merged.mean(dim=(2, 3)))


class NeedsFake(ConvNet):
    """Moves its activations to the CPU: the meta device cannot, fake tensors can."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.cpu())


class NeedsCpu(ConvNet):
    """Reads a value back: only real tensors have one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1.0 if float(x.abs().sum().item()) >= 0 else 2.0
        return super().forward(x * scale)


CASES: dict[str, tuple[type[nn.Module], list[int], str]] = {
    "conv net": (ConvNet, [4, 3, 32, 32], "float32"),
    "transformer encoder": (Encoder, [2, 48], "int64"),
    "lstm": (Recurrent, [3, 20, 16], "float32"),
    "branches": (Branches, [2, 8, 16, 16], "float32"),
}


# -- the independent measurement ------------------------------------------------------------


def spec_of(shape: list[int], dtype: str) -> dict[str, Any]:
    return {"tensors": [{"shape": shape, "dtype": dtype}], "source": "the test", "guess": False}


def real_input(shape: list[int], dtype: str, vocab: int = 100) -> torch.Tensor:
    if dtype == "int64":
        return torch.randint(0, vocab, shape)
    return torch.randn(shape)


def saved_on_cpu(model: nn.Module, inputs: torch.Tensor) -> int:
    """Bytes a real CPU training forward saves for backward: each storage once, by address."""
    with reference_kernels():
        return _saved_on_cpu(model, inputs)


@contextlib.contextmanager
def reference_kernels() -> Iterator[None]:
    """PyTorch's own LSTM rather than oneDNN's: torchls measures the reference implementation
    (it says so for recurrent layers), and oneDNN's backward is invisible to FlopCounterMode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def _saved_on_cpu(model: nn.Module, inputs: torch.Tensor) -> int:
    return _saved_on_cpu_args(model, inputs)


def backward_flops_on_cpu(model: nn.Module, inputs: torch.Tensor) -> int:
    model.train()
    with reference_kernels(), sdpa_kernel(SDPBackend.MATH):
        output = model(inputs)
    tensors = output.values() if isinstance(output, dict) else output
    tensors = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
    loss = sum(t.sum() for t in tensors if t.requires_grad)
    with reference_kernels(), FlopCounterMode(display=False) as counter:
        loss.backward()
    return int(counter.get_total_flops())


def measured(model_type: type[nn.Module], shape: list[int], dtype: str) -> tuple[Any, dict]:
    with torch.device("meta"):
        model = model_type()
    spec = spec_of(shape, dtype)
    counted = count_forward(torch, model, spec, NoLoader(), 8192)  # type: ignore[arg-type]
    return counted, measure_training(torch, counted, spec, NoLoader())  # type: ignore[arg-type]


def close(ours: int, theirs: int) -> bool:
    return abs(ours - theirs) <= TOLERANCE * theirs


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_activation_bytes_match_a_real_cpu_forward(name: str) -> None:
    model_type, shape, dtype = CASES[name]
    counted, training = measured(model_type, shape, dtype)
    assert counted.mode == "meta"
    assert training["error"] is None, training["error"]
    torch.manual_seed(0)
    real = saved_on_cpu(model_type(), real_input(shape, dtype))
    assert real > 0
    assert close(training["activation_bytes"], real), (training["activation_bytes"], real)
    assert training["batch"] == shape[0]


@pytest.mark.parametrize("name", list(CASES))
def test_the_per_sample_slope_is_the_real_growth_from_batch_one_to_two(name: str) -> None:
    model_type, shape, dtype = CASES[name]
    _, training = measured(model_type, [1, *shape[1:]], dtype)
    torch.manual_seed(0)
    model = model_type()
    one = saved_on_cpu(model, real_input([1, *shape[1:]], dtype))
    two = saved_on_cpu(model, real_input([2, *shape[1:]], dtype))
    assert close(training["per_sample_bytes"], two - one), (training, one, two)
    # at batch 1 the fixed part is what does not grow: the total less one sample
    assert training["fixed_bytes"] == training["activation_bytes"] - training["per_sample_bytes"]
    assert close(training["fixed_bytes"] + 2 * training["per_sample_bytes"], two)


@pytest.mark.parametrize("name", list(CASES))
def test_backward_flops_are_a_real_backwards(name: str) -> None:
    model_type, shape, dtype = CASES[name]
    _, training = measured(model_type, shape, dtype)
    torch.manual_seed(0)
    real = backward_flops_on_cpu(model_type(), real_input(shape, dtype))
    assert training["backward_flops"] == real
    assert training["backward_estimated"] is False and training["estimate_reason"] is None


@pytest.mark.parametrize(("model_type", "mode"), [(NeedsFake, "fake"), (NeedsCpu, "cpu")])
def test_the_other_ways_of_running_measure_the_same(model_type: type, mode: str) -> None:
    counted, training = measured(model_type, [2, 3, 32, 32], "float32")
    assert counted.mode == mode
    assert training["error"] is None, training["error"]
    torch.manual_seed(0)
    real = saved_on_cpu(ConvNet(), torch.randn(2, 3, 32, 32))
    assert close(training["activation_bytes"], real), (training, real)
    assert training["per_sample_bytes"] and training["backward_flops"]
    # the counted model is left as it was: no gradients, eval mode
    assert all(p.grad is None for p in counted.model.parameters())
    assert not counted.model.training


def test_the_counted_model_keeps_no_gradients_and_stays_in_eval_mode() -> None:
    counted, training = measured(ConvNet, [2, 3, 32, 32], "float32")
    assert training["backward_flops"] > 0
    assert all(p.grad is None for p in counted.model.parameters())
    assert not counted.model.training


def test_a_backward_the_counter_has_no_formula_for_is_an_estimate_that_says_so() -> None:
    # an autograd Function whose backward is a kernel the counter does not know (here: one
    # that makes zeros), as a fused or custom CUDA backward is
    class Opaque(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(x, weight)
            return x @ weight

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x, weight = ctx.saved_tensors
            return x.new_zeros(x.shape), weight.new_zeros(weight.shape)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.empty(32, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return Opaque.apply(x, self.weight)

    counted, training = measured(Net, [4, 32], "float32")
    assert training["backward_estimated"] is True
    assert "aten.mm" in training["estimate_reason"]
    forward_flops = counted.measured["flops"]
    assert training["backward_flops"] >= 2 * forward_flops


def test_a_model_whose_outputs_need_no_gradient_has_no_backward() -> None:
    class Frozen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.fc.requires_grad_(False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    _, training = measured(Frozen, [2, 8], "float32")
    assert training["error"] is None
    assert training["backward_flops"] is None
    assert "no output" in training["estimate_reason"]


def test_a_forward_that_fails_in_train_mode_is_measured_in_eval_mode_and_says_so() -> None:
    class OnePixel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x).mean(dim=(2, 3), keepdim=True))

    _, training = measured(OnePixel, [1, 3, 8, 8], "float32")
    assert training["error"] is None
    assert "eval mode" in training["note"]
    assert training["activation_bytes"] > 0


def test_a_forward_that_takes_no_doubled_batch_says_why() -> None:
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(1, 16))

    _, training = measured(Fixed, [1, 16], "float32")
    assert training["error"] is None and training["activation_bytes"] > 0
    assert training["per_sample_bytes"] is None
    assert "doubled to 2" in training["per_sample_reason"]


@pytest.mark.parametrize("name", list(CASES))
def test_the_linear_model_predicts_a_batch_it_was_not_measured_at(name: str) -> None:
    model_type, shape, dtype = CASES[name]
    _, training = measured(model_type, [1, *shape[1:]], dtype)
    torch.manual_seed(0)
    real = saved_on_cpu(model_type(), real_input([5, *shape[1:]], dtype))
    predicted = training["fixed_bytes"] + 5 * training["per_sample_bytes"]
    assert close(predicted, real), (predicted, real)


def test_the_report_says_what_training_costs_and_the_largest_batch_that_fits() -> None:
    from torchls.cost import report

    counted, training = measured(Encoder, [4, 48], "int64")
    trainable = sum(p.numel() for p in counted.model.parameters())
    result = {
        "parameters": {"total": trainable, "trainable": trainable, "frozen": 0, "bytes": 0},
        "training": training,
    }
    states = 16 * trainable  # fp32 weights, gradients and two Adam moments
    found = report.training(result, gpu_memory_gb=1.0)
    assert found is not None
    activations = training["activation_bytes"]
    assert found["summary"] == (
        f"Adam training at batch 4: {report.size(states)} states + {report.size(activations)} "
        f"activations = {report.size(states + activations)}"
    )
    # the largest batch: it fits 1 GiB, one more does not
    largest = int(found["batch"].split(": ")[1].split(" ")[0].replace(",", ""))
    per_sample, fixed = training["per_sample_bytes"], training["fixed_bytes"]
    assert states + fixed + largest * per_sample <= 1 << 30
    assert states + fixed + (largest + 1) * per_sample > 1 << 30
    assert found["backward"] == (
        f"backward pass: {report.count(training['backward_flops'])} FLOPs "
        f"({training['backward_flops']:,})"
    )
    # an estimate says so, and why
    estimated = {**training, "backward_estimated": True, "estimate_reason": "no formula for X"}
    found = report.training({**result, "training": estimated}, gpu_memory_gb=1.0)
    assert found is not None and "an estimate: no formula for X" in found["backward"]
    # without a per-sample figure: the reason, no number
    unknown = {**training, "per_sample_bytes": None, "per_sample_reason": "it takes one shape"}
    found = report.training({**result, "training": unknown}, gpu_memory_gb=1.0)
    assert found is not None and found["batch"].endswith("not known (it takes one shape)")


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_hugging_face_models_returning_model_outputs(family: str) -> None:
    transformers = pytest.importorskip("transformers")
    small = {"vocab_size": 200, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    if family == "gpt2":
        config = transformers.GPT2Config(
            n_layer=2, n_embd=64, n_head=4, n_positions=128, attn_pdrop=0.0, resid_pdrop=0.0,
            embd_pdrop=0.0, **small,
        )  # fmt: skip
        model_class = transformers.GPT2LMHeadModel
    else:
        config = transformers.BertConfig(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **small,
        )  # fmt: skip
        model_class = transformers.BertModel

    def build() -> nn.Module:
        return model_class(config)

    _, training = measured(build, [2, 40], "int64")  # type: ignore[arg-type]
    assert training["error"] is None, training["error"]
    torch.manual_seed(0)
    real_model = build()
    ids = torch.randint(0, 200, (2, 40))
    assert close(training["activation_bytes"], saved_on_cpu(real_model, ids))
    real_model.train()
    with reference_kernels(), sdpa_kernel(SDPBackend.MATH):
        output = real_model(ids)
    tensors = [t for t in output.values() if isinstance(t, torch.Tensor)]  # not the kv cache
    loss = sum(t.sum() for t in tensors if t.requires_grad)
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    assert training["backward_flops"] == counter.get_total_flops()


class WordModel(nn.Module):
    """PyTorch's word_language_model: token ids (T, N) and the LSTM's (h, c), sequence first."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 24, num_layers=2)
        self.decoder = nn.Linear(24, 50)

    def forward(
        self, ids: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        output, hidden = self.lstm(self.embed(ids), hidden)
        return self.decoder(output), hidden


def test_a_sequence_first_model_has_its_batch_in_the_second_dimension() -> None:
    def spec(batch: int) -> dict[str, Any]:
        state = {"shape": [2, batch, 24], "dtype": "float32"}
        return {
            "tensors": [{"shape": [35, batch], "dtype": "int64"}, {"tuple": [state, state]}],
            "source": "the test",
        }

    with torch.device("meta"):
        model = WordModel()
    loader: Any = NoLoader()
    counted = count_forward(torch, model, spec(1), loader, 8192)
    training = measure_training(torch, counted, spec(1), loader)
    assert training["batch"] == 1 and training["batch_dim"] == 1
    assert "second dimension" in training["note"]

    def real(batch: int) -> int:
        torch.manual_seed(0)
        hidden = (torch.zeros(2, batch, 24), torch.zeros(2, batch, 24))
        with reference_kernels():
            return _saved_on_cpu_args(WordModel(), torch.randint(0, 50, (35, batch)), hidden)

    assert close(training["activation_bytes"], real(1))
    assert close(training["per_sample_bytes"], real(2) - real(1))


def _saved_on_cpu_args(model: nn.Module, *inputs: Any) -> int:
    model.train()
    state = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    sizes: dict[int, int] = {}
    alive: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in state and storage.data_ptr() not in sizes:
            sizes[storage.data_ptr()] = storage.nbytes()
            alive.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(*inputs)
    return sum(sizes.values())


def test_grouped_layers_show_their_count_in_the_hover_and_the_terminal() -> None:
    from torchls.cost import report

    layer = {"type": "Conv2d", "output": [1, 64, 56, 56], "params": 36864, "share": 0.3}
    result: dict[str, Any] = {
        "name": "Net",
        "class": "m.Net",
        "parameters": {"total": 110592, "trainable": 110592, "frozen": 0, "bytes": 442368},
        "buffers": {"total": 0, "bytes": 0, "tensors": 0},
        "macs": 3 * 115605504,
        "flops": 6 * 115605504,
        "inputs": {"tensors": [{"shape": [1, 3, 224, 224], "dtype": "float32"}], "source": "x"},
        "layers": [
            {**layer, "path": "layer1.0-2.conv2", "macs": 3 * 115605504, "count": 3},
            {**layer, "path": "stem", "macs": 1000, "share": 0.0},
        ],
    }
    hover = report.markdown(result, report.ReportContext())
    assert "| `layer1.0-2.conv2` \u00d73 | Conv2d |" in hover
    assert "| `stem` | Conv2d |" in hover
    text = report.text(result, report.ReportContext())
    assert "layer1.0-2.conv2 \u00d73  Conv2d" in text
    # an older result without the training part keeps the old memory line
    assert "training with Adam 1.69 MiB (weights, gradients, 2 moments; activations extra)" in hover
