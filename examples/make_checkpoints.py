"""Writes the example checkpoints into checkpoints/ (they are generated, never committed).

Each one is a classic way for `load_state_dict` to fail, or an old-torch compatibility problem:
    clean.pt               the state dict of SmallConvNet(num_classes=10), as it should be
    dataparallel.pt        the same keys with DataParallel's `module.` prefix
    training.ckpt          a whole training checkpoint: {'epoch', 'state_dict', 'optimizer', ...}
    other_head.pt          trained with num_classes=100: the classifier's shape differs
    legacy.pt              the clean state dict in torch's pre-1.6 (non-zip) format
    mlp.safetensors        TabularMLP's weights in safetensors (when safetensors is installed)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import SmallConvNet, TabularMLP


def main(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = SmallConvNet(num_classes=10)
    state = model.state_dict()
    written: list[Path] = []

    def save(obj: object, name: str, **kwargs: object) -> None:
        path = out / name
        torch.save(obj, path, **kwargs)
        written.append(path)

    save(state, "clean.pt")
    save(nn.DataParallel(model).state_dict(), "dataparallel.pt")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    save(
        {"epoch": 3, "state_dict": state, "optimizer": optimizer.state_dict(), "best_acc": 0.71},
        "training.ckpt",
    )
    save(SmallConvNet(num_classes=100).state_dict(), "other_head.pt")
    save(state, "legacy.pt", _use_new_zipfile_serialization=False)
    try:
        from safetensors.torch import save_file
    except ImportError:
        print("safetensors is not installed: skipping mlp.safetensors")
    else:
        path = out / "mlp.safetensors"
        save_file(TabularMLP().state_dict(), str(path))
        written.append(path)
    return written


if __name__ == "__main__":
    target = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "checkpoints"
    )
    for path in main(target):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
