"""Module-level state a model reads: the skeleton keeps the statements it depends on (argparse
with the script's defaults, `cuda = ...`, `image_shape = (opt.channels, ...)`), never the
script around them, and the report names the defaults the model was built with."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.profiling.test_profile_job import Runner

from torchls.source.skeleton import skeleton
from torchls.source.spec import InputSpec, parse_shapes

SCRIPTS = Path(__file__).resolve().parent / "fixtures" / "script_state"


def _torch_count(folder: Path, script: str, build: str) -> int:
    """The parameters torch itself counts for `build`, after running the script for real up
    to the point where it fails for want of its data (its models are defined by then)."""
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.argv = [{script!r}]
        namespace = {{"__name__": "reference", "__file__": {script!r}}}
        try:
            exec(compile(open({script!r}).read(), {script!r}, "exec"), namespace)
        except FileNotFoundError:
            pass  # the script reached its data loading: the models are defined
        model = eval({build!r}, namespace)
        print(json.dumps(sum(p.numel() for p in model.parameters())))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    count: int = json.loads(done.stdout.strip().splitlines()[-1])
    return count


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scripts")
    for file in SCRIPTS.glob("*.py"):
        shutil.copy(file, folder / file.name)
    return folder


@pytest.fixture(scope="module")
def runner(workspace: Path) -> Iterator[Runner]:
    made = Runner(workspace)
    yield made
    made.close()


def test_the_slice_keeps_what_the_models_read_and_drops_the_script() -> None:
    tree = ast.parse((SCRIPTS / "gan_script.py").read_text())
    module, _dropped = skeleton(tree)
    kept = {ast.unparse(statement).splitlines()[0] for statement in module.body}
    for needed in [
        "parser = argparse.ArgumentParser()",
        "opt = parser.parse_args()",
        "image_shape = (opt.channels, opt.side, opt.side)",
        "nz = int(opt.noise_dim)",
    ]:
        assert needed in kept
    assert sum(line.startswith("parser.add_argument(") for line in kept) == 5
    text = "\n".join(kept)
    # folders, prints, models, data and the loop stay out
    # nor state only the script reads (`device` from `cuda`: no model reads either)
    for never in ["mkdir", "print(", "generator =", "critic =", "loader =", "for epoch", "cuda"]:
        assert never not in text


def test_unsafe_statements_stay_out_even_when_a_model_reads_them() -> None:
    source = textwrap.dedent(
        """
        import os, torch, wandb
        from torch import nn
        data = torch.load("weights.pt")
        run = wandb.init(project="x")
        os.makedirs("out")
        backbone = Backbone().cuda()
        class Backbone(nn.Module):
            def forward(self, x):
                return x
        if __name__ == "__main__":
            width = 3
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(data.shape[0], width)
                self.run = run
                self.backbone = backbone
        """
    )
    module, _dropped = skeleton(ast.parse(source))
    kept = "\n".join(ast.unparse(statement) for statement in module.body)
    for never in ["torch.load", "wandb.init", "os.makedirs", "Backbone()", "width = 3"]:
        assert never not in kept


def test_a_model_reading_argparse_state_profiles_with_the_scripts_defaults(
    runner: Runner, workspace: Path
) -> None:
    result = runner.ok(workspace / "gan_script.py", "Generator")
    reference = workspace / "reference"
    reference.mkdir()
    shutil.copy(workspace / "gan_script.py", reference / "gan_script.py")
    assert result["parameters"]["total"] == _torch_count(reference, "gan_script.py", "Generator()")
    # the note names the defaults read while the model was built, in the order they were read
    notes = [note for note in result["notes"] if "argparse" in note]
    assert notes == [
        "built with the script's argparse defaults: --channels 3, --side 16, --noise_dim 64"
    ]
    # the script's own statements never ran
    assert not (workspace / "samples_written_by_the_script").exists()


def test_state_computed_from_the_options_is_kept(runner: Runner, workspace: Path) -> None:
    shape = InputSpec(parse_shapes("(1, 3, 16, 16)"), "--input")
    result = runner.ok(workspace / "gan_script.py", "Critic", input_override=shape)
    reference = workspace / "reference_critic"
    reference.mkdir()
    shutil.copy(workspace / "gan_script.py", reference / "gan_script.py")
    assert result["parameters"]["total"] == _torch_count(reference, "gan_script.py", "Critic()")
    assert not (workspace / "samples_written_by_the_script").exists()


def test_a_required_option_without_a_default_is_one_line_naming_it(
    runner: Runner, workspace: Path
) -> None:
    result = runner.run(workspace / "needs_a_flag.py", "Wide")
    assert not result.ok
    message = result.message
    assert "--width" in message and "--args" in message and "needs_a_flag.py, line 9" in message
    assert "\n" not in message and "Traceback" not in message


def test_a_library_only_the_script_uses_need_not_be_installed(
    runner: Runner, workspace: Path
) -> None:
    assert runner.ok(workspace / "missing_library.py", "Small")["parameters"]["total"] == 18
    result = runner.run(workspace / "missing_library.py", "NeedsIt")
    assert not result.ok
    assert "torchls_fixture_missing_lib is not installed" in result.message
    assert "missing_library.py, line 6" in result.message


def test_a_data_set_a_model_reads_is_never_built_by_the_slice() -> None:
    """A notebook exported as a script: `train_set = MNIST(root=..., download=True)` read by a
    model's default argument. Building it would download (a real run wrote data/MNIST/raw)."""
    source = textwrap.dedent(
        """
        from torch import nn
        from torchvision.datasets import MNIST
        import torchvision.datasets as tvd
        DATASET_PATH = "data"
        train_set = MNIST(root=DATASET_PATH, train=True, download=True)
        other = tvd.CIFAR10(DATASET_PATH)
        fetched = fetch_table(cache_dir="x")
        class Net(nn.Module):
            def __init__(self, n=len(train_set), m=len(other), k=len(fetched)):
                super().__init__()
                self.fc = nn.Linear(n, m + k)
        """
    )
    module, _dropped = skeleton(ast.parse(source))
    kept = "\n".join(ast.unparse(statement) for statement in module.body)
    for never in ["MNIST(root", "CIFAR10(", "fetch_table("]:
        assert never not in kept, kept


def test_a_notebook_cell_reading_a_dropped_model_or_data_set_is_dropped_too(
    runner: Runner, workspace: Path
) -> None:
    """`table = positional.table.numpy()` after `positional = Positional(...)`, `train_split =
    dataset[:150]` after a data set: the slice leaves the model and the data set out, so the
    cells reading them go too (they used to stop the import with a NameError), and so do the
    figures nothing needed reads."""
    module, _dropped = skeleton(ast.parse((SCRIPTS / "notebook_export.py").read_text()))
    kept = "\n".join(ast.unparse(statement).splitlines()[0] for statement in module.body)
    for never in ["positional =", "table =", "subplots", "axes =", "first =", "dataset", "_split"]:
        assert never not in kept, kept
    assert "SEQ_LEN = 64" in kept
    result = runner.ok(
        workspace / "notebook_export.py",
        "Tagger",
        input_override=InputSpec(parse_shapes("(2, 16):long"), "--input"),
    )
    # Embedding 100x32, Linear 32->5: the positional table is a buffer, not a parameter
    assert result["parameters"]["total"] == 100 * 32 + 32 * 5 + 5


def test_a_model_reading_state_the_skeleton_left_out_is_told_where_it_is_set(
    runner: Runner, workspace: Path
) -> None:
    result = runner.run(workspace / "notebook_export.py", "Explainer")
    assert not result.ok
    line = next(
        number
        for number, text in enumerate((SCRIPTS / "notebook_export.py").read_text().splitlines(), 1)
        if text.startswith("train_split =")
    )
    assert "NameError: name 'train_split' is not defined" in result.message
    assert f"`train_split` is set on line {line} of notebook_export.py" in result.message
    assert "\n" not in result.message
