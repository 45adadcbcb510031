"""Finding `load_state_dict` calls and the checkpoints they load, without running the file."""

from __future__ import annotations

import textwrap
from pathlib import Path

from torchls.source.loads import MAX_SITES, LoadSite, find_load_sites
from torchls.source.models import FileModels
from torchls.source.project import Project


def _sites(tmp_path: Path, source: str) -> list[LoadSite]:
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(source))
    project = Project(str(tmp_path))
    module = project.module_file(str(path))
    assert module is not None
    return find_load_sites(FileModels(project, module), str(tmp_path))


def test_the_examples_training_script(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    project = Project(str(examples))
    module = project.module_file(str(examples / "train.py"))
    assert module is not None
    sites = find_load_sites(FileModels(project, module), str(examples))
    assert [(s.path, s.subscripts, s.strict) for s in sites] == [
        ("checkpoints/dataparallel.pt", [], True),
        ("checkpoints/training.ckpt", [], True),
    ]
    assert all(s.model is not None and s.model.name == "SmallConvNet" for s in sites)
    assert sites[0].candidates[0] == str(examples / "checkpoints" / "dataparallel.pt")


def test_variables_subscripts_paths_and_strict(tmp_path: Path) -> None:
    sites = _sites(
        tmp_path,
        """
        import os
        from pathlib import Path
        import torch
        from safetensors.torch import load_file
        from torch import nn

        class Net(nn.Module):
            pass

        ROOT = Path("runs") / "best"

        def main(path):
            model = Net().to("cpu")
            ckpt = torch.load(os.path.join("runs", "last.ckpt"), map_location="cpu")
            state = ckpt["state_dict"]
            model.load_state_dict(state["model"], strict=False)
            model.load_state_dict(torch.load(f"{path}/w.pt"))
            model.load_state_dict(load_file(ROOT / "model.safetensors"))
            model.load_state_dict(torch.load(path), strict=flag)
            model.load_state_dict({"a": 1})
        """,
    )
    assert [(s.loader, s.path, s.subscripts, s.strict) for s in sites] == [
        ("torch.load", "runs/last.ckpt", ["state_dict", "model"], False),
        ("torch.load", None, [], True),
        ("safetensors", "runs/best/model.safetensors", [], True),
        ("torch.load", None, [], None),
        ("", None, [], True),
    ]
    assert sites[0].keywords == {"map_location": "'cpu'"}
    assert sites[0].model is not None and sites[0].model.name == "Net"
    assert "not a literal" in sites[1].problems[0]
    # Found and not checkable: each says why (never a silent skip).
    assert [s.unchecked is not None for s in sites] == [False, True, False, True, True]
    assert sites[1].unchecked == sites[1].problems[0]
    assert sites[4].unchecked == "the state dict is `{'a': 1}`, which torchls does not follow"


def test_key_rewrites_on_the_way(tmp_path: Path) -> None:
    sites = _sites(
        tmp_path,
        """
        import torch
        from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
        from safetensors.torch import load_model
        from model import Net

        model = Net(num_classes=10)
        sd = torch.load(f"{'runs'}/w.pt", weights_only=False)
        consume_prefix_in_state_dict_if_present(sd, "module.")
        model.load_state_dict(sd)
        model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in sd.items()})
        model.load_state_dict({k[7:]: v for k, v in torch.load("a.pt").items()})
        model.load_state_dict({k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")})
        model.load_state_dict({"module." + k: v for k, v in sd["ema"].items()}, strict=False)
        model.load_state_dict(
            {k: v for k, v in sd.items() if not k.endswith(("total_ops", "total_params"))}
        )
        model.load_state_dict({k: v for k, v in sd.items() if k not in ("fc.weight", "fc.bias")})
        model.load_state_dict({k.upper(): v for k, v in sd.items()})
        load_model(model, "m.safetensors", strict=False)
        """,
    )
    steps = [[(step.kind, step.value) for step in site.steps] for site in sites]
    assert steps == [
        [("strip", "module.")],
        [("strip", "module."), ("strip", "_orig_mod.")],
        [("cut", 7)],
        [("strip", "module."), ("keep_prefix", "net."), ("cut", 4)],
        [("strip", "module."), ("key", "ema"), ("add", "module.")],
        # A filter keeps the keys as they are, in a plain dict (no `_metadata`): "copy".
        [("strip", "module."), ("drop_suffix", ("total_ops", "total_params")), ("copy", None)],
        [("strip", "module."), ("drop_keys", ("fc.weight", "fc.bias")), ("copy", None)],
        [],  # the .upper() rewrite is not understood: found, not checked
        [],  # load_model(model, "m.safetensors")
    ]
    assert sites[0].path == "runs/w.pt" and sites[0].keywords == {"weights_only": "False"}
    assert len(sites) == 9
    assert [s.unchecked for s in sites].count(None) == 8
    assert sites[7].unchecked == (
        "torchls does not follow what this dict comprehension does to the keys"
    )
    assert sites[-1].kind == "load_model" and sites[-1].strict is False
    assert sites[-1].loader == "safetensors" and sites[-1].path == "m.safetensors"
    assert sites[2].argument_text.startswith("{k[7:]")


def test_what_the_reviewer_found(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text("from torch import nn\n\nclass Net(nn.Module):\n    pass\n")
    sites = _sites(
        tmp_path,
        """
        import argparse
        import torch
        from torch import nn
        from model import Net

        torch.serialization.add_safe_globals([argparse.Namespace])
        model = Net()
        kw = {"strict": False}
        model.load_state_dict(state_dict=torch.load("a.pt", "cpu"))
        model.load_state_dict(torch.load("~/b.pt"), False)
        model.load_state_dict(torch.load("c.pt", **kw), **kw)
        sd = torch.load("d.pt")
        for k in list(sd):
            sd[k.replace("module.", "")] = sd.pop(k)
        model.load_state_dict(sd)
        model.fc = nn.Linear(4, 10)
        model.load_state_dict(torch.load("e.pt"))
        """,
    )
    a, b, c, d, e = sites
    assert a.path == "a.pt" and a.keywords["map_location"] == "'cpu'"
    assert a.allowed_globals == frozenset({"argparse.Namespace"})
    assert b.strict is False and b.candidates[0] == str(tmp_path / "~" / "b.pt")
    assert c.open_call and c.open_loader and c.strict is None
    assert d.keys_unknown and "line 15" in d.keys_unknown and d.model_changed is None
    assert e.model_changed and "line 17" in e.model_changed


def test_many_loads_and_absurd_expressions_stay_bounded(tmp_path: Path) -> None:
    deep = "+".join(["1"] * 1500)  # Python runs this; ast.unparse would hit the recursion limit
    lines = ["import torch", "model = torch.nn.Linear(2, 2)", 'sd = torch.load("a.pt")']
    lines.append(f'model.load_state_dict(torch.load("b.pt", map_location={deep}))')
    lines += ["model.load_state_dict(sd)"] * 5000
    path = tmp_path / "many.py"
    path.write_text("\n".join(lines) + "\n")
    project = Project(str(tmp_path))
    module = project.module_file(str(path))
    assert module is not None
    sites = find_load_sites(FileModels(project, module), str(tmp_path))
    assert len(sites) == MAX_SITES
    assert sites[0].path == "b.pt" and sites[0].keywords["map_location"] == "..."
    assert all(site.path == "a.pt" for site in sites[1:])
