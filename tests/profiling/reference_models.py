"""Hand-written reference models with analytically derived cost figures.

Every figure in ``EXPECTED`` is written as a formula from the layer shapes, never as a measured
constant. ``macs`` counts multiply-adds of convolutions and matrix multiplications only (what
``torch.utils.flop_counter.FlopCounterMode`` reports, divided by 2): biases, norms, pooling,
activations, softmax, embedding lookups and residual adds are not counted.

Notation in the comments: a Linear(i, o) applied to N rows costs N*i*o MACs; a Conv2d(ci, co, k)
producing an HxW map costs ci*co*k*k*H*W MACs (per sample); attention over L tokens of width E
costs L*L*E for QK^T and again L*L*E for attn@V (summed over heads, per sample).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class TinyConvNet(nn.Module):
    """conv(3->16) bn relu pool, conv(16->32) bn relu pool, linear(32*8*8 -> 10)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * 8 * 8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class MLP(nn.Module):
    def __init__(self, d_in: int = 20, hidden: int = 64, d_mid: int = 32, d_out: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden),
            nn.ReLU(),
            nn.Linear(hidden, d_mid),
            nn.ReLU(),
            nn.Linear(d_mid, d_out),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Encoder(nn.Module):
    def __init__(self, d_model: int = 64, nhead: int = 4, ff: int = 128, layers: int = 2) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward=ff, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class Attention(nn.Module):
    """Self-attention through one nn.MultiheadAttention (need_weights left at its default)."""

    def __init__(self, embed_dim: int = 32, num_heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.attn(x, x, x)
        return out


class TiedLM(nn.Module):
    """Embedding, one hidden Linear, and an output projection tied to the embedding."""

    def __init__(self, vocab: int = 100, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.lm_head(torch.tanh(self.hidden(self.embed(tokens))))


class SharedBlock(nn.Module):
    """One Linear module applied three times."""

    def __init__(self, dim: int = 16, repeats: int = 3) -> None:
        super().__init__()
        self.block = nn.Linear(dim, dim)
        self.repeats = repeats

    def forward(self, x: Tensor) -> Tensor:
        for _ in range(self.repeats):
            x = torch.relu(self.block(x))
        return x


class PartlyFrozen(nn.Module):
    """A frozen conv backbone (with a BatchNorm) and a trainable linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.head = nn.Linear(16 * 8 * 8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.backbone(x), 1))


class LSTMTagger(nn.Module):
    def __init__(self, vocab: int = 50, emb: int = 16, hidden: int = 32, tags: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.out = nn.Linear(hidden, tags)

    def forward(self, tokens: Tensor) -> Tensor:
        h, _ = self.lstm(self.embed(tokens))
        return self.out(h)


MODELS: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        TinyConvNet,
        MLP,
        Encoder,
        Attention,
        TiedLM,
        SharedBlock,
        PartlyFrozen,
        LSTMTagger,
    )
}

# --------------------------------------------------------------------------------------------
# Expected figures, derived by hand
# --------------------------------------------------------------------------------------------


def _linear_params(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def _conv_params(ci: int, co: int, k: int, bias: bool = True) -> int:
    return ci * co * k * k + (co if bias else 0)


def _bn_params(c: int) -> int:
    return 2 * c  # weight + bias


def _bn_buffers(c: int) -> int:
    return 2 * c + 1  # running_mean + running_var + num_batches_tracked (one element)


def _encoder_layer_params(e: int, ff: int) -> int:
    in_proj = 3 * e * e + 3 * e  # packed q/k/v weight + bias
    out_proj = e * e + e
    ffn = _linear_params(e, ff) + _linear_params(ff, e)
    norms = 2 * (2 * e)  # norm1, norm2: weight + bias each
    return in_proj + out_proj + ffn + norms


def _self_attention_macs(b: int, length: int, e: int) -> int:
    tokens = b * length
    in_proj = tokens * e * (3 * e)  # q, k, v projections
    scores = b * length * length * e  # QK^T summed over heads: h * L*L*(e/h)
    mix = b * length * length * e  # attn @ V
    out_proj = tokens * e * e
    return in_proj + scores + mix + out_proj


def _encoder_layer_macs(b: int, length: int, e: int, ff: int) -> int:
    ffn = b * length * e * ff + b * length * ff * e  # linear1 + linear2
    return _self_attention_macs(b, length, e) + ffn


def _lstm_params(i: int, h: int) -> int:
    return 4 * h * i + 4 * h * h + 4 * h + 4 * h  # W_ih, W_hh, b_ih, b_hh


def _lstm_macs(b: int, t: int, i: int, h: int) -> int:
    return b * t * 4 * h * (i + h)  # per step and sample: W_ih x + W_hh h (biases are adds)


def _entry(
    shapes: list[list[int]],
    *,
    params: int,
    frozen: int = 0,
    buffers: int = 0,
    macs: int,
    dtype: str = "float32",
) -> dict[str, Any]:
    return dict(
        input=shapes,
        dtype=dtype,
        params=params,
        trainable=params - frozen,
        frozen=frozen,
        buffers=buffers,
        macs=macs,
    )


EXPECTED: dict[str, dict[str, Any]] = {
    # input 32x32 -> conv1 32x32 -> pool 16x16 -> conv2 16x16 -> pool 8x8 -> fc(2048 -> 10)
    "TinyConvNet": _entry(
        [[1, 3, 32, 32]],
        params=_conv_params(3, 16, 3)
        + _bn_params(16)
        + _conv_params(16, 32, 3)
        + _bn_params(32)
        + _linear_params(32 * 8 * 8, 10),
        buffers=_bn_buffers(16) + _bn_buffers(32),
        macs=3 * 16 * 3 * 3 * 32 * 32  # conv1 at 32x32
        + 16 * 32 * 3 * 3 * 16 * 16  # conv2 at 16x16
        + 32 * 8 * 8 * 10,  # fc
    ),
    # batch 4 through 20 -> 64 -> 32 -> 10
    "MLP": _entry(
        [[4, 20]],
        params=_linear_params(20, 64) + _linear_params(64, 32) + _linear_params(32, 10),
        macs=4 * (20 * 64 + 64 * 32 + 32 * 10),
    ),
    # 2 layers, batch 2, 10 tokens, d_model 64, ffn 128
    "Encoder": _entry(
        [[2, 10, 64]],
        params=2 * _encoder_layer_params(64, 128),
        macs=2 * _encoder_layer_macs(2, 10, 64, 128),
    ),
    # one self-attention, batch 1, 12 tokens, width 32
    "Attention": _entry(
        [[1, 12, 32]],
        params=3 * 32 * 32 + 3 * 32 + _linear_params(32, 32),  # in_proj + out_proj
        macs=_self_attention_macs(1, 12, 32),
    ),
    # 16 tokens; lm_head.weight is embed.weight, so it is counted once
    "TiedLM": _entry(
        [[1, 16]],
        dtype="int64",
        params=100 * 32 + _linear_params(32, 32),
        macs=16 * 32 * 32 + 16 * 32 * 100,  # hidden + lm_head (the lookup is not a MAC)
    ),
    # one Linear(16, 16), applied three times to a batch of 2
    "SharedBlock": _entry(
        [[2, 16]],
        params=_linear_params(16, 16),
        macs=3 * 2 * 16 * 16,
    ),
    # conv1 at 16x16, conv2 (stride 2) at 8x8, head on 16*8*8 features
    "PartlyFrozen": _entry(
        [[1, 3, 16, 16]],
        params=_conv_params(3, 8, 3)
        + _bn_params(8)
        + _conv_params(8, 16, 3)
        + _linear_params(16 * 8 * 8, 10),
        frozen=_conv_params(3, 8, 3) + _bn_params(8) + _conv_params(8, 16, 3),
        buffers=_bn_buffers(8),
        macs=3 * 8 * 3 * 3 * 16 * 16 + 8 * 16 * 3 * 3 * 8 * 8 + 16 * 8 * 8 * 10,
    ),
    # batch 2, 7 tokens: embedding(50, 16) -> LSTM(16, 32) -> Linear(32, 5)
    "LSTMTagger": _entry(
        [[2, 7]],
        dtype="int64",
        params=50 * 16 + _lstm_params(16, 32) + _linear_params(32, 5),
        macs=_lstm_macs(2, 7, 16, 32) + 2 * 7 * 32 * 5,
    ),
}

# --------------------------------------------------------------------------------------------
# ResNet arithmetic (for tests/profiling/fixtures/visionlib)
# --------------------------------------------------------------------------------------------


def _out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def resnet_cost(
    bottleneck: bool,
    layers: list[int],
    input_shape: tuple[int, int, int, int],
    num_classes: int = 1000,
) -> tuple[int, int]:
    """(parameters, conv + linear MACs) of a v1.5 ResNet, walked layer by layer."""
    n, c, h, w = input_shape
    params = 0
    macs = 0

    def conv(ci: int, co: int, k: int, stride: int, pad: int, h: int, w: int) -> tuple[int, int]:
        nonlocal params, macs
        ho, wo = _out(h, k, stride, pad), _out(w, k, stride, pad)
        params += ci * co * k * k + 2 * co  # bias-free conv + its BatchNorm (weight, bias)
        macs += n * ci * co * k * k * ho * wo
        return ho, wo

    h, w = conv(c, 64, 7, 2, 3, h, w)  # stem
    h, w = _out(h, 3, 2, 1), _out(w, 3, 2, 1)  # maxpool 3x3 s2 p1
    cin = 64
    expansion = 4 if bottleneck else 1
    for stage, (width, depth) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        for block in range(depth):
            stride = 2 if stage > 0 and block == 0 else 1
            cout = width * expansion
            if stride != 1 or cin != cout:  # projection shortcut on the block input
                conv(cin, cout, 1, stride, 0, h, w)
            if bottleneck:
                bh, bw = conv(cin, width, 1, 1, 0, h, w)
                bh, bw = conv(width, width, 3, stride, 1, bh, bw)
                bh, bw = conv(width, cout, 1, 1, 0, bh, bw)
            else:
                bh, bw = conv(cin, width, 3, stride, 1, h, w)
                bh, bw = conv(width, cout, 3, 1, 1, bh, bw)
            h, w, cin = bh, bw, cout
    params += cin * num_classes + num_classes  # fc after global average pooling
    macs += n * cin * num_classes
    return params, macs


RESNET50_EXPECTED = dict(
    params=25_557_032,
    params_formula=resnet_cost(True, [3, 4, 6, 3], (4, 3, 256, 128))[0],
    macs_4x3x256x128=resnet_cost(True, [3, 4, 6, 3], (4, 3, 256, 128))[1],  # ~10.685 G
)

RESNET18_EXPECTED = dict(
    params=11_689_512,
    params_formula=resnet_cost(False, [2, 2, 2, 2], (1, 3, 224, 224))[0],
    macs_1x3x224x224=resnet_cost(False, [2, 2, 2, 2], (1, 3, 224, 224))[1],  # ~1.814 G
)
