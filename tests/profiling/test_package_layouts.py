"""Package layouts: `from .parts import *` (where `nn` and the blocks come from), a package's
`__init__` re-exporting its model class, relative imports three levels up, an import cycle
Python resolves, and a library whose `models.alexnet` is a function beside a submodule of the
same name. Wherever `python -c "from pkg import X"` works, `FILE::X` and `pkg::X` work, and
every count equals torch's own."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.conftest import ROOT, lsp_session
from tests.profiling.test_hover import _hover, _number, _open, _position
from tests.profiling.test_profile_job import Runner

from torchls.source.models import FileModels
from torchls.source.project import Project

FIXTURES = ROOT / "tests" / "profiling" / "fixtures"
LAYOUT = FIXTURES / "package_layouts"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("layout")
    shutil.copytree(LAYOUT, folder, dirs_exist_ok=True)
    shutil.copytree(FIXTURES / "zoolib", folder / "zoolib")
    return folder


@functools.cache
def _torch_count(folder: Path, imports: str, build: str) -> int:
    """Parameters of the model torch itself builds, imported as Python would from `folder`."""
    code = f"import json\n{imports}\nmodel = {build}\n"
    code += "print(json.dumps(sum(p.numel() for p in model.parameters())))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    count: int = json.loads(done.stdout.strip().splitlines()[-1])
    return count


def _profile(folder: Path, *args: str, pythonpath: str = "") -> dict[str, object]:
    env = {"PYTHONPATH": f"{ROOT / 'server'}{pythonpath}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "torchls", "profile", *args, "--json", "--no-thop"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (args, done.stderr, done.stdout[-2000:])
    payload: dict[str, object] = json.loads(done.stdout)
    return payload


def _models(folder: Path, relative: str) -> FileModels:
    project = Project(str(folder))
    module = project.module_file(str(folder / relative))
    assert module is not None
    return FileModels(project, module)


def test_a_class_built_on_a_star_import_is_a_model(workspace: Path) -> None:
    models = _models(workspace, "segnet/model.py")
    assert models.model_classes() == ["SegNet"]
    # `nn` and the blocks come from `from .parts import *`
    assert models.imports.names["nn"] == "torch.nn"
    assert models.imports.names["TwoConvs"] == "segnet.parts.TwoConvs"
    assert _models(workspace, "segnet/blocks/deep/gate.py").model_classes() == ["Gate"]


def test_a_construction_through_a_package_re_export_is_found(workspace: Path) -> None:
    models = _models(workspace, "train.py")
    found = [target for target in models.targets() if target.kind == "construction"]
    assert [target.name for target in found] == ["SegNet"]
    assert found[0].ref["file"] == str((workspace / "segnet" / "model.py").resolve())


def test_the_hover_profiles_the_re_exported_class_as_torch_counts_it(workspace: Path) -> None:
    runner = Runner(workspace)
    try:
        result = runner.ok(workspace / "train.py", "SegNet", kind="construction")
    finally:
        runner.close()
    expected = _torch_count(workspace, "from segnet import SegNet", "SegNet(3, 2, width=8)")
    assert result["parameters"]["total"] == expected


@pytest.mark.parametrize(
    "target",
    [
        "segnet::SegNet",
        "segnet/__init__.py::SegNet",
        "segnet.model::SegNet",
        "segnet/model.py::SegNet",
    ],
)
def test_every_way_python_names_the_class_profiles_it(workspace: Path, target: str) -> None:
    payload = _profile(workspace, target, "--args", "(3, 2)", "--input", "1,3,32,32")
    expected = _torch_count(workspace, "from segnet import SegNet", "SegNet(3, 2)")
    result = payload["result"]
    assert isinstance(result, dict) and result["parameters"]["total"] == expected


def test_a_block_three_packages_down_with_a_relative_import(workspace: Path) -> None:
    payload = _profile(
        workspace, "segnet/blocks/deep/gate.py::Gate", "--args", "(4,)", "--input", "1,4,8,8"
    )
    expected = _torch_count(workspace, "from segnet.blocks.deep.gate import Gate", "Gate(4)")
    result = payload["result"]
    assert isinstance(result, dict) and result["parameters"]["total"] == expected


@pytest.mark.parametrize("name", ["alexnet", "googlenet"])
def test_a_package_function_wins_over_its_same_named_submodule(tmp_path: Path, name: str) -> None:
    # zoolib is installed (on PYTHONPATH), as torchvision would be
    payload = _profile(
        tmp_path, f"zoolib.models::{name}", "--input", "1,3,32,32", pythonpath=f":{FIXTURES}"
    )
    expected = _torch_count(FIXTURES, "import zoolib.models as zm", f"zm.{name}()")
    result = payload["result"]
    assert isinstance(result, dict) and result["parameters"]["total"] == expected


def test_the_workspace_resolves_a_package_attribute_as_python_does(workspace: Path) -> None:
    project = Project(str(workspace))
    found = project.resolve_symbol("zoolib.models.alexnet")
    assert found is not None
    module, name = found
    assert Path(module.path) == (workspace / "zoolib" / "models" / "alexnet.py").resolve()
    assert name == "alexnet"


async def test_the_hover_on_a_star_import_class(workspace: Path) -> None:
    model_py = workspace / "segnet" / "model.py"
    text = model_py.read_text()
    edited = text.replace(
        "class SegNet(nn.Module):",
        textwrap.dedent(
            """\
            # torchls: args=(3, 2)
            # torchls: input=(1, 3, 32, 32)
            class SegNet(nn.Module):"""
        ),
    )
    async with lsp_session(workspace=workspace) as session:
        uri = _open(session, model_py, edited)
        markdown = await _hover(session, uri, _position(edited, "class SegNet"))
    assert markdown is not None, "no hover on a class whose base comes from a star import"
    expected = _torch_count(workspace, "from segnet import SegNet", "SegNet(3, 2)")
    assert _number(markdown, "Parameters") == expected


@pytest.mark.parametrize("target", ["nets/tower.py::Tower", "nets.tower::Tower"])
def test_a_folder_without_init_whose_modules_import_relatively(
    workspace: Path, target: str
) -> None:
    assert _models(workspace, "nets/tower.py").model_classes() == ["Tower"]
    payload = _profile(workspace, target, "--input", "2,6")
    expected = _torch_count(workspace, "from nets.tower import Tower", "Tower()")
    result = payload["result"]
    assert isinstance(result, dict) and result["parameters"]["total"] == expected
