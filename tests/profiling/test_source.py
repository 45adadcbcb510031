"""Finding models, their arguments and their input shapes in source text, without running it."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from torchls.cost.request import prepare
from torchls.source.models import FileModels, ModelTarget
from torchls.source.project import Project
from torchls.source.skeleton import skeleton
from torchls.source.spec import SpecError, TensorSpec, parse_shapes


def _models(tmp_path: Path, source: str, name: str = "main.py") -> FileModels:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    project = Project(str(tmp_path))
    module = project.module_file(str(path))
    assert module is not None
    return FileModels(project, module)


def _target(models: FileModels, name: str, kind: str | None = None) -> ModelTarget:
    for target in models.targets():
        if target.name == name and kind in (None, target.kind):
            return target
    raise AssertionError(f"no {name}: {[t.name for t in models.targets()]}")


# -- input shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(1, 3, 224, 224)", [TensorSpec((1, 3, 224, 224))]),
        ("1,3,224,224", [TensorSpec((1, 3, 224, 224))]),
        ("(1, 128):long", [TensorSpec((1, 128), "int64")]),
        ("1,128:long", [TensorSpec((1, 128), "int64")]),
        (
            "(1, 3, 32, 32), (1, 10):half",
            [TensorSpec((1, 3, 32, 32)), TensorSpec((1, 10), "float16")],
        ),
        ("[(2, 8), (2, 8):bool]", [TensorSpec((2, 8)), TensorSpec((2, 8), "bool")]),
        ("(16,)", [TensorSpec((16,))]),
    ],
)
def test_input_shapes_are_read(text: str, expected: list[TensorSpec]) -> None:
    assert list(parse_shapes(text)) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("(1, 0, 3)", "positive whole number"),
        ("(1, -3)", "positive whole number"),
        ("(1, L, S)", "names 2 dimensions"),
        ("(1, 3):complex", "unknown dtype"),
        ("(1, 3) (1, 4)", "expected a comma"),
        ("(100000000, 100000000, 100000000)", "typo"),
        ("(1, 2, 3, 4, 5, 6, 7, 8, 9)", "dimensions"),
    ],
)
def test_bad_input_shapes_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(SpecError, match=says):
        parse_shapes(text)


def test_input_shape_precedence(tmp_path: Path) -> None:
    models = _models(
        tmp_path,
        """
        import torch
        import lightning as L
        from torch import nn

        # torchls: input=(1, 3, 64, 64)
        class Commented(nn.Module):
            pass

        class Lit(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.example_input_array = torch.rand(2, 5)

        class Called(nn.Module):
            pass

        class Nothing(nn.Module):
            pass

        def main():
            x = torch.randn(8, 3, 32, 32, dtype=torch.float16)
            net = Called().to("cpu")
            net(x)
            lit = Lit()  # torchls: input=(4, 5)
        """,
    )
    commented = _target(models, "Commented")
    assert commented.inputs is not None
    assert commented.inputs.tensors == (TensorSpec((1, 3, 64, 64)),)
    assert "line 6" in commented.inputs.source
    lit = _target(models, "Lit", "class")
    assert lit.inputs is not None and lit.inputs.tensors == (TensorSpec((2, 5)),)
    assert "example_input_array" in lit.inputs.source
    # a comment at the call beats the class's example_input_array
    lit_call = _target(models, "Lit", "construction")
    assert lit_call.inputs is not None and lit_call.inputs.tensors == (TensorSpec((4, 5)),)
    called = _target(models, "Called", "class")
    assert called.inputs is not None
    assert called.inputs.tensors == (TensorSpec((8, 3, 32, 32), "float16"),)
    assert "net(x)" in called.inputs.source
    nothing = _target(models, "Nothing")
    assert nothing.inputs is None
    # then the setting, by name or "*"; and with nothing at all the worker guesses
    prepared = prepare(nothing, models.project, "main.py", {"Nothing": "(3, 7)"})
    assert prepared.params["inputs"]["tensors"] == [{"shape": [3, 7], "dtype": "float32"}]
    assert "defaultInputShapes" in prepared.params["inputs"]["source"]
    assert prepare(nothing, models.project, "main.py", {}).params["inputs"] is None
    bad = prepare(nothing, models.project, "main.py", {"*": "(3, -7)"})
    assert bad.params["inputs"] is None and "defaultInputShapes" in bad.problems[0]


def test_thop_profile_and_forward_calls_give_inputs(tmp_path: Path) -> None:
    models = _models(
        tmp_path,
        """
        import torch
        from thop import profile
        from torch import nn

        class A(nn.Module):
            pass

        class B(nn.Module):
            pass

        a = A()
        macs, params = profile(a, inputs=(torch.rand(4, 3, 256, 128),))
        b = B()
        ids = torch.randint(0, 100, (2, 16))
        out = b.forward(ids)
        """,
    )
    a = _target(models, "A", "class").inputs
    assert a is not None and a.tensors == (TensorSpec((4, 3, 256, 128)),)
    b = _target(models, "B", "class").inputs
    assert b is not None and b.tensors == (TensorSpec((2, 16), "int64"),)


def test_a_bad_directive_is_reported_not_raised(tmp_path: Path) -> None:
    models = _models(
        tmp_path,
        """
        from torch import nn

        # torchls: input=(1, 3.5)
        # torchls: args=not a call(
        class Net(nn.Module):
            pass
        """,
    )
    target = _target(models, "Net")
    assert target.inputs is None
    assert any("input=" in problem and "line 4" in problem for problem in target.problems)
    assert any("args=" in problem for problem in target.problems)


# -- model classes -----------------------------------------------------------------------------


def test_model_classes_through_bases_aliases_and_other_files(tmp_path: Path) -> None:
    (tmp_path / "layers.py").write_text(
        "import torch\n\nclass Base(torch.nn.Module):\n    pass\n\nclass Plain:\n    pass\n"
    )
    models = _models(
        tmp_path,
        """
        import torch.nn as tnn
        from torch.nn import Module
        from transformers import PreTrainedModel
        import pytorch_lightning as pl
        from layers import Base, Plain

        class A(tnn.Module): ...
        class B(Module): ...
        class C(A): ...
        class D(Base): ...
        class E(PreTrainedModel): ...
        class F(pl.LightningModule): ...
        class G(tnn.Sequential): ...
        class NotA(Plain): ...
        class NotB(object): ...
        class NotC(tnn.Parameter): ...
        """,
    )
    assert models.model_classes() == ["A", "B", "C", "D", "E", "F", "G"]


# -- constructions -----------------------------------------------------------------------------


def test_constructions_that_are_models_and_calls_that_are_not(tmp_path: Path) -> None:
    (tmp_path / "nets.py").write_text("from torch import nn\n\nclass Net(nn.Module):\n    pass\n")
    models = _models(
        tmp_path,
        """
        import os
        import json
        import torch
        from torch import nn
        from nets import Net
        from visionlib.models import resnet50
        from transformers import AutoModel, BertModel, BertConfig
        from somelib import make_thing, build
        import timm
        from torchvision.datasets import MNIST
        from torchvision.utils import save_image
        from torchvision.models import load_weights
        from transformers import DataCollatorForLanguageModeling, BertForMaskedLM

        a = Net()
        b = resnet50(num_classes=10)
        c = AutoModel.from_pretrained("./local")
        d = BertModel(BertConfig(hidden_size=128))
        e = torch.optim.Adam(a.parameters())
        f = json.loads("{}")
        os.remove("file")
        g = make_thing()
        h = build()
        h.eval()
        i = nn.Transformer()
        j = torch.load("x.pt", weights_only=False)
        j.eval()
        k = torch.hub.load("repo", "model")
        data = MNIST("data", download=True)
        save_image(None, "out.png")
        load_weights("w")
        collate = DataCollatorForLanguageModeling(None)
        m = timm.create_model("resnet18")
        n = BertForMaskedLM(BertConfig())
        """,
    )
    names = [target.name for target in models.targets()]
    # Only calls that build models: a hover, and opening the file, run them.
    assert names == [
        "Net",
        "resnet50",
        "AutoModel.from_pretrained",
        "BertModel",
        "timm.create_model",
        "BertForMaskedLM",
    ]
    net = _target(models, "Net")
    assert net.ref["file"].endswith("nets.py") and net.ref["qualname"] == "Net"
    pretrained = _target(models, "AutoModel.from_pretrained")
    assert pretrained.ref == {
        "import": "transformers.AutoModel.from_pretrained",
        "method": "from_pretrained",
    }
    bert = _target(models, "BertModel")
    assert bert.args == [
        {
            "call": {
                "ref": {"import": "transformers.BertConfig"},
                "args": [],
                "kwargs": {"hidden_size": {"literal": 128}},
            }
        }
    ]


def test_arguments_from_literals_names_and_arithmetic(tmp_path: Path) -> None:
    models = _models(
        tmp_path,
        """
        import sys
        from torch import nn

        WIDTH = 16
        KERNEL = (3, 3)

        class Net(nn.Module):
            def __init__(self, *args, **kwargs):
                super().__init__()

        def main():
            depth = WIDTH // 4
            return Net(WIDTH * 2, KERNEL, depth=depth, act=nn.ReLU, p=-0.5, x=sys.argv[1])
        """,
    )
    target = _target(models, "Net", "construction")
    assert target.args == [{"literal": 32}, {"tuple": [{"literal": 3}, {"literal": 3}]}]
    assert target.kwargs["depth"] == {"literal": 4}
    assert target.kwargs["act"] == {"ref": {"import": "torch.nn.ReLU"}}
    assert target.kwargs["p"] == {"literal": -0.5}
    assert target.kwargs["x"]["unknown"] == "sys.argv[1]"
    assert "Net(32, (3, 3), depth=4" in target.call_text()


# -- positions -----------------------------------------------------------------------------------


def test_hover_positions_are_utf16(tmp_path: Path) -> None:
    models = _models(
        tmp_path,
        """
        from torch import nn

        class Net(nn.Module):
            pass

        label = "🔥"; net = Net()
        """,
    )
    line = 6  # 0-based line of the call
    text = models.lines.get(line)
    # "🔥" is one code point but two UTF-16 units: the call starts 1 unit later than str.index
    column = text.index("Net()") + 1
    assert models.target_at(line, column) is not None
    assert models.target_at(line, column + 3) is not None
    assert models.target_at(line, text.index("Net()") - 1) is None
    assert models.target_at(3, 1) is not None  # on `class Net`


def test_broken_source_has_no_targets(tmp_path: Path) -> None:
    models = _models(tmp_path, "class Net(nn.Module:\n")
    assert models.targets() == [] and models.target_at(0, 8) is None


# -- the skeleton the worker runs --------------------------------------------------------------


def test_skeleton_keeps_definitions_and_drops_the_script() -> None:
    source = textwrap.dedent(
        """
        import torch
        from torch import nn
        WIDTH = 4 * 2
        log = print("side effect")

        class Net(nn.Module):
            pass

        def helper():
            return 1

        try:
            import thop
        except ImportError:
            thop = None

        for epoch in range(10):
            train()

        with open("x") as f:
            pass

        if __name__ == "__main__":
            main()
        """
    )
    tree, dropped = skeleton(ast.parse(source))
    kept = [ast.unparse(statement).splitlines()[0] for statement in tree.body]
    assert kept == [
        "import torch",
        "from torch import nn",
        "WIDTH = 4 * 2",
        "class Net(nn.Module):",
        "def helper():",
        "try:",
    ]
    assert len(dropped) == 4
    # line numbers survive, so tracebacks point at the user's lines
    assert tree.body[3].lineno == 7


def test_arguments_never_call_what_torchls_does_not_allow(tmp_path: Path) -> None:
    models = _models(
        tmp_path,
        """
        import builtins
        import torch
        from torch import os as tos
        from torch import nn
        from transformers import BertConfig

        class Net(nn.Module):
            def __init__(self, tag=None):
                super().__init__()

        a = Net(tag=torch.os.system("touch pwned"))
        b = Net(tag=tos.system("touch pwned"))
        c = Net(tag=builtins.exec("print(1)"))
        d = Net(tag=torch.serialization.shutil.rmtree("victim"))
        e = Net(tag=torch.load("x.pt"))
        f = Net(tag=eval("1"))
        g = Net(tag=BertConfig(hidden_size=8))
        h = Net(tag=nn.ReLU())
        i = Net(tag=dict(a=1))
        """,
    )
    constructions = [t for t in models.targets() if t.kind == "construction"]
    tags = [target.kwargs["tag"] for target in constructions]
    assert all("unknown" in tag for tag in tags[:6]), tags[:6]
    assert all("call" in tag for tag in tags[6:]), tags[6:]


def test_names_with_uncertain_values_are_unknown(tmp_path: Path) -> None:
    models = _models(
        tmp_path,
        """
        from torch import nn

        WIDTH = 64
        WIDTH *= 4
        DEPTH = 2

        class Net(nn.Module):
            def __init__(self, *args):
                super().__init__()

        def run(big, DEPTH=3):
            hidden = 16
            if big:
                hidden = 32
            return Net(WIDTH, hidden, DEPTH)

        def plain():
            hidden = 16
            return Net(hidden, DEPTH)
        """,
    )
    first, second = [t for t in models.targets() if t.kind == "construction"]
    assert all("unknown" in value for value in first.args), first.args
    assert second.args == [{"literal": 16}, {"literal": 2}]


def test_each_construction_takes_the_input_of_its_own_function(tmp_path: Path) -> None:
    models = _models(
        tmp_path,
        """
        import torch
        from torch import nn

        class Net(nn.Module):
            pass

        def cifar():
            model = Net()
            model(torch.randn(1, 3, 32, 32))

        def imagenet():
            model = Net()
            model(torch.randn(1, 3, 224, 224))
        """,
    )
    cifar, imagenet = [t for t in models.targets() if t.kind == "construction"]
    assert cifar.inputs is not None and cifar.inputs.tensors == (TensorSpec((1, 3, 32, 32)),)
    assert imagenet.inputs is not None
    assert imagenet.inputs.tensors == (TensorSpec((1, 3, 224, 224)),)


def test_odd_text_does_not_break_the_reader(tmp_path: Path) -> None:
    models = _models(
        tmp_path,
        "from torch import nn\n\x0c\nclass Net(nn.Module):\n    pass\n\n"
        "net = Net(gain=(-2) ** 0.5, deep=" + "+".join(["1"] * 400) + ")"
        "  # torchls: input=(1, 3)\n",
    )
    construction = _target(models, "Net", "construction")
    assert construction.line == 6 and construction.inputs is not None
    assert "unknown" in construction.kwargs["gain"] and "unknown" in construction.kwargs["deep"]
    prepare(construction, models.project, "main.py")  # JSON-serialisable: no complex numbers
    with pytest.raises(SpecError):
        parse_shapes("(1, 3²)")


def test_skeleton_drops_rebinding_and_hidden_side_effects() -> None:
    source = textwrap.dedent(
        """
        import os
        from torch import nn
        nn.Linear = None
        registry = {}
        registry[os.system("x")] = 1
        try:
            import fast
        except ImportError:
            fast = None
        else:
            os.system("x")
        if os.system("x") == 0:
            import math
        RESULT = Jobs.list("all")
        def f(x=os.system("x")):
            pass
        class C(nn.Module):
            pass
        """
    )
    tree, _dropped = skeleton(ast.parse(source))
    kept = [ast.unparse(statement).splitlines()[0] for statement in tree.body]
    assert kept == ["import os", "from torch import nn", "registry = {}", "class C(nn.Module):"]
