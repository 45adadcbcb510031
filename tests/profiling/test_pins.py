"""Finding a torch pin below 1.6 in a workspace's packaging files, without running any of them."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from torchls.source.pins import MAX_FILE_BYTES, TorchPin, torch_pin

needs_tomllib = pytest.mark.skipif(sys.version_info < (3, 11), reason="pyproject needs tomllib")


def _write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content).lstrip("\n"))
    return root


def _pin(root: Path, files: dict[str, str | bytes]) -> TorchPin | None:
    return torch_pin(_write(root, files))


def _expected(root: Path, name: str, line: int, requirement: str, newest: str | None) -> TorchPin:
    return TorchPin(str((root / name).resolve()), line, requirement, newest)


# -- which specifiers pin torch below 1.6 ------------------------------------------------------


@pytest.mark.parametrize(
    ("requirement", "newest"),
    [
        ("torch==1.5.1", "1.5.1"),
        ("torch<1.6", "1.5.1"),
        ("torch<=1.5.1", "1.5.1"),
        ("torch>=1.2,<1.6", "1.5.1"),
        ("torch~=1.5.0", "1.5.1"),
        ("torch==1.4.*", "1.4.0"),
        ("torch<1.6.0rc1", "1.5.1"),  # excludes every 1.6 release and prerelease
        ("torch<1.8,!=1.6.*,!=1.7.*", "1.5.1"),
        ("torch>1.5.1,<1.6", None),  # bounded below 1.6, but no such release exists
        ("torch==0.3.1", "0.3.1"),
        ("torch===1.5.0", "1.5.0"),
        ("Torch[extra] >= 1.2, <= 1.3.1 ; python_version < '3.8'", "1.3.1"),
        ("pytorch==1.0.1", "1.0.1"),
    ],
)
def test_specifiers_that_exclude_every_new_torch_pin(
    tmp_path: Path, requirement: str, newest: str | None
) -> None:
    pin = _pin(tmp_path, {"requirements.txt": f"{requirement}\n"})
    assert pin == _expected(tmp_path, "requirements.txt", 0, requirement, newest)


@pytest.mark.parametrize(
    "requirement",
    [
        "torch",
        "torch>=1.4",
        "torch!=1.6.0",
        "torch<2",
        "torch==1.6.0",
        "torch==2.1",
        "torch~=1.5",  # ~=1.5 means >=1.5,==1.*
        "torch<=1.6.0rc1",  # asks for a 1.6 prerelease, which reads zip checkpoints
        "torch==1.6.0rc1",
        "torch<1.6.5,!=1.6.0",  # 1.6.1 would do
        "torch>=2.0,<1.6",  # allows nothing at all
        "torch @ git+https://github.com/pytorch/pytorch@v1.4.0",
        "numpytorch==1.0",
        "torchvision==0.5.0",
        "pytorch-lightning==0.7.1",
        "-e .",
    ],
)
def test_requirements_that_allow_a_new_torch_are_not_pins(tmp_path: Path, requirement: str) -> None:
    assert _pin(tmp_path, {"requirements.txt": f"{requirement}\n"}) is None


# -- requirements files --------------------------------------------------------------------------


def test_requirements_txt_pin_reports_file_line_and_newest(tmp_path: Path) -> None:
    pin = _pin(
        tmp_path,
        {
            "requirements.txt": """
                # the model needs the old serializer
                numpy>=1.18

                torch==1.4.0  # do not upgrade
                torchvision==0.5.0
            """
        },
    )
    assert pin == _expected(tmp_path, "requirements.txt", 3, "torch==1.4.0", "1.4.0")


def test_local_versions_and_per_line_options(tmp_path: Path) -> None:
    pin = _pin(
        tmp_path,
        {
            "requirements.txt": """
                --find-links https://download.pytorch.org/whl/torch_stable.html
                torch==1.5.1+cpu -f https://download.pytorch.org/whl/torch_stable.html
            """
        },
    )
    assert pin == _expected(tmp_path, "requirements.txt", 1, "torch==1.5.1+cpu", "1.5.1")


def test_backslash_continuation_reports_the_first_line(tmp_path: Path) -> None:
    pin = _pin(
        tmp_path,
        {"requirements.txt": "numpy\ntorch==1.5.0 \\\n    --hash=sha256:0123abcd\nscipy\n"},
    )
    assert pin == _expected(tmp_path, "requirements.txt", 1, "torch==1.5.0", "1.5.0")


def test_crlf_line_breaks_count_once(tmp_path: Path) -> None:
    pin = _pin(tmp_path, {"requirements.txt": b"numpy\r\n\r\ntorch<1.6\r\n"})
    assert pin == _expected(tmp_path, "requirements.txt", 2, "torch<1.6", "1.5.1")


def test_wheel_url_names_its_version(tmp_path: Path) -> None:
    url = "https://download.pytorch.org/whl/cpu/torch-1.4.0%2Bcpu-cp37-cp37m-linux_x86_64.whl"
    pin = _pin(tmp_path, {"requirements.txt": f"{url}\n"})
    assert pin == _expected(tmp_path, "requirements.txt", 0, url, "1.4.0")


def test_utf16_requirements_from_powershell_are_read(tmp_path: Path) -> None:
    data = "numpy==1.18.1\r\ntorch==1.5.0\r\n".encode("utf-16")
    pin = _pin(tmp_path, {"requirements.txt": data})
    assert pin == _expected(tmp_path, "requirements.txt", 1, "torch==1.5.0", "1.5.0")


def test_requirements_files_are_read_in_sorted_order(tmp_path: Path) -> None:
    pin = _pin(
        tmp_path,
        {
            "requirements.txt": "torch==1.5.0\n",
            "requirements-dev.txt": "pytest\ntorch==1.4.0\n",
            "requirements/base.txt": "torch==1.3.0\n",
        },
    )
    assert pin == _expected(tmp_path, "requirements-dev.txt", 1, "torch==1.4.0", "1.4.0")


def test_requirements_folder_is_read_one_level_down(tmp_path: Path) -> None:
    pin = _pin(
        tmp_path,
        {
            "requirements/base.txt": "numpy\n",
            "requirements/gpu.txt": "torch<=1.5.0\n",
            "requirements/deeper/old.txt": "torch==1.0.0\n",
        },
    )
    assert pin == _expected(tmp_path, "requirements/gpu.txt", 0, "torch<=1.5.0", "1.5.0")


def test_nested_files_elsewhere_are_not_read(tmp_path: Path) -> None:
    files = {"sub/requirements.txt": "torch==1.4.0\n", "requirements/deeper/old.txt": "torch<1.6"}
    assert _pin(tmp_path, files) is None


def test_includes_are_followed_where_they_appear(tmp_path: Path) -> None:
    pin = _pin(
        tmp_path,
        {
            "requirements.txt": "numpy\n-r deps/torch.txt\ntorch==1.5.0\n",
            "deps/torch.txt": "# pinned for the old checkpoints\n\ntorch==1.4.0\n",
        },
    )
    assert pin == _expected(tmp_path, "deps/torch.txt", 2, "torch==1.4.0", "1.4.0")


def test_constraint_files_are_followed(tmp_path: Path) -> None:
    pin = _pin(
        tmp_path,
        {
            "requirements.txt": "torch\n--constraint=pins/constraints.txt\n",
            "pins/constraints.txt": "torch<1.6\n",
        },
    )
    assert pin == _expected(tmp_path, "pins/constraints.txt", 0, "torch<1.6", "1.5.1")


def test_include_cycles_end(tmp_path: Path) -> None:
    files = {
        "requirements.txt": "-r requirements-dev.txt\n-r requirements.txt\ntorch>=1.6\n",
        "requirements-dev.txt": "-r requirements.txt\npytest\n",
    }
    assert _pin(tmp_path, files) is None


def test_a_pin_inside_a_cycle_is_found_once(tmp_path: Path) -> None:
    pin = _pin(
        tmp_path,
        {
            "requirements.txt": "-r extra/a.txt\n",
            "extra/a.txt": "-r b.txt\n",
            "extra/b.txt": "-r a.txt\ntorch==1.2.0\n",
        },
    )
    assert pin == _expected(tmp_path, "extra/b.txt", 1, "torch==1.2.0", "1.2.0")


def test_includes_outside_the_workspace_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("torch==1.4.0\n")
    workspace = tmp_path / "project"
    workspace.mkdir()
    assert _pin(workspace, {"requirements.txt": "-r ../outside.txt\n"}) is None


# -- pyproject.toml ------------------------------------------------------------------------------


@needs_tomllib
def test_pep621_dependencies(tmp_path: Path) -> None:
    pin = _pin(
        tmp_path,
        {
            "pyproject.toml": """
                [project]
                name = "demo"
                dependencies = [
                    "numpy",
                    "torch>=1.2,<1.6",
                ]
            """
        },
    )
    assert pin == _expected(tmp_path, "pyproject.toml", 4, "torch>=1.2,<1.6", "1.5.1")


@needs_tomllib
def test_pep621_optional_dependencies(tmp_path: Path) -> None:
    pin = _pin(
        tmp_path,
        {
            "pyproject.toml": """
                [project]
                name = "demo"
                dependencies = ["torch"]

                [project.optional-dependencies]
                legacy = ['torch==1.3.1']
            """
        },
    )
    assert pin == _expected(tmp_path, "pyproject.toml", 5, "torch==1.3.1", "1.3.1")


@needs_tomllib
@pytest.mark.parametrize(
    ("value", "requirement", "newest"),
    [
        ('"1.5.0"', 'torch = "1.5.0"', "1.5.0"),
        ('"~1.5"', 'torch = "~1.5"', "1.5.1"),
        ('">=1.2 <1.6"', 'torch = ">=1.2 <1.6"', "1.5.1"),
        (
            '{version = "<1.6", source = "pytorch"}',
            'torch = {version = "<1.6", source = "pytorch"}',
            "1.5.1",
        ),
        ('"1.4 || 1.5"', 'torch = "1.4 || 1.5"', "1.5.0"),
    ],
)
def test_poetry_dependencies(tmp_path: Path, value: str, requirement: str, newest: str) -> None:
    text = (
        f'[tool.poetry]\nname = "demo"\n\n[tool.poetry.dependencies]\npython = "^3.7"\n'
        f"torch = {value}\n"
    )
    pin = _pin(tmp_path, {"pyproject.toml": text})
    assert pin == _expected(tmp_path, "pyproject.toml", 5, requirement, newest)


@needs_tomllib
@pytest.mark.parametrize(
    "value", ['"^1.4"', '"*"', '">=1.4"', '"1.4 || 1.6"', '{git = "https://x"}']
)
def test_poetry_constraints_that_allow_a_new_torch(tmp_path: Path, value: str) -> None:
    text = f"[tool.poetry.dependencies]\ntorch = {value}\n"
    assert _pin(tmp_path, {"pyproject.toml": text}) is None


@needs_tomllib
def test_poetry_table_form_group_and_multiple_constraints(tmp_path: Path) -> None:
    table = _pin(
        tmp_path / "a", {"pyproject.toml": '[tool.poetry.dependencies.torch]\nversion = "<1.6"\n'}
    )
    assert table == _expected(tmp_path / "a", "pyproject.toml", 0, 'torch = "<1.6"', "1.5.1")
    group = _pin(
        tmp_path / "b",
        {"pyproject.toml": '[tool.poetry.group.legacy.dependencies]\n\n"PyTorch" = "1.2.0"\n'},
    )
    assert group == _expected(tmp_path / "b", "pyproject.toml", 2, '"PyTorch" = "1.2.0"', "1.2.0")
    multiple = (
        "[tool.poetry.dependencies]\ntorch = [\n"
        '  {version = ">=1.6", python = ">=3.8"},\n  {version = "1.4.0", python = "<3.8"},\n]\n'
    )
    pin = _pin(tmp_path / "c", {"pyproject.toml": multiple})
    assert pin == _expected(tmp_path / "c", "pyproject.toml", 1, "torch = [", "1.4.0")


@needs_tomllib
def test_torch_keys_outside_dependency_tables_are_ignored(tmp_path: Path) -> None:
    text = '[tool.mypy]\ntorch = "1.4.0"\n\n[tool.poetry.dependencies]\ntorch = "^1.4"\n'
    assert _pin(tmp_path, {"pyproject.toml": text}) is None


# -- setup.cfg and setup.py ----------------------------------------------------------------------


def test_setup_cfg_install_requires(tmp_path: Path) -> None:
    pin = _pin(
        tmp_path,
        {
            "setup.cfg": """
                [metadata]
                name = demo

                [options]
                install_requires =
                    numpy
                    # the old serializer
                    torch>=1.0,<1.6; python_version < "3.9"
                python_requires = >=3.6
            """
        },
    )
    expected = 'torch>=1.0,<1.6; python_version < "3.9"'
    assert pin == _expected(tmp_path, "setup.cfg", 7, expected, "1.5.1")


def test_setup_cfg_single_line_and_extras(tmp_path: Path) -> None:
    one_line = _pin(
        tmp_path / "a", {"setup.cfg": "[options]\ninstall_requires = numpy; torch==1.5.0\n"}
    )
    assert one_line == _expected(tmp_path / "a", "setup.cfg", 1, "torch==1.5.0", "1.5.0")
    extras = _pin(
        tmp_path / "b",
        {
            "setup.cfg": (
                "[options]\ninstall_requires = torch\n\n"
                "[options.extras_require]\nold =\n  torch==1.1.0\n"
            )
        },
    )
    assert extras == _expected(tmp_path / "b", "setup.cfg", 5, "torch==1.1.0", "1.1.0")


def test_setup_cfg_other_sections_are_ignored(tmp_path: Path) -> None:
    text = (
        "[tool:pytest]\ninstall_requires =\n  torch==1.4.0\n[options]\ninstall_requires = torch\n"
    )
    assert _pin(tmp_path, {"setup.cfg": text}) is None


def test_setup_py_literal_install_requires(tmp_path: Path) -> None:
    pin = _pin(
        tmp_path,
        {
            "setup.py": """
                from setuptools import setup

                setup(
                    name="demo",
                    install_requires=[
                        "numpy",
                        "torch==1.5.1",
                    ],
                )
            """
        },
    )
    assert pin == _expected(tmp_path, "setup.py", 6, "torch==1.5.1", "1.5.1")


def test_setup_py_module_level_variable_and_extras(tmp_path: Path) -> None:
    pin = _pin(
        tmp_path,
        {
            "setup.py": """
                import setuptools

                BASE = ["numpy"]
                REQUIRED = BASE + [
                    "torch>=1.3,<=1.4.0",
                ]
                EXTRAS = {"old": ["torch==1.0.0"]}

                setuptools.setup(name="demo", install_requires=REQUIRED, extras_require=EXTRAS)
            """
        },
    )
    assert pin == _expected(tmp_path, "setup.py", 4, "torch>=1.3,<=1.4.0", "1.4.0")


def test_setup_py_is_parsed_never_run(tmp_path: Path) -> None:
    sentinel = tmp_path / "ran.txt"
    pin = _pin(
        tmp_path,
        {
            "setup.py": f"""
                import pathlib
                pathlib.Path({str(sentinel)!r}).write_text("setup.py ran")
                print("setup.py ran")
                raise SystemExit("setup.py ran")
                from setuptools import setup
                setup(install_requires=["torch==1.4.0"])
            """
        },
    )
    assert not sentinel.exists()
    assert pin == _expected(tmp_path, "setup.py", 5, "torch==1.4.0", "1.4.0")


def test_setup_py_non_literal_requirements_are_skipped(tmp_path: Path) -> None:
    text = 'from setuptools import setup\nsetup(install_requires=open("reqs").read().split())\n'
    assert _pin(tmp_path, {"setup.py": text, "reqs": "torch==1.4.0\n"}) is None


# -- conda environment files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "newest"),
    [
        ("pytorch=1.4", "1.4.0"),
        ("pytorch=1.5", "1.5.1"),
        ("pytorch==1.5.1", "1.5.1"),
        ("torch=1.4.0=py3.7_cuda10.1.243_cudnn7.6.3_0", "1.4.0"),
        ("pytorch::pytorch=1.3", "1.3.1"),
        ("pytorch 1.2.*", "1.2.0"),
        ("pytorch>=1.2,<1.6", "1.5.1"),
        ("pytorch[version='>=1.0,<1.2']", "1.1.0"),
    ],
)
def test_conda_specs(tmp_path: Path, spec: str, newest: str) -> None:
    text = f"name: old\nchannels:\n  - pytorch\ndependencies:\n  - python=3.7\n  - {spec}\n"
    pin = _pin(tmp_path, {"environment.yml": text})
    assert pin == _expected(tmp_path, "environment.yml", 5, spec, newest)


@pytest.mark.parametrize("spec", ["pytorch", "pytorch>=1.6", "pytorch=1.5|1.6", "pytorch-cpu=1.0"])
def test_conda_specs_that_are_not_old_torch(tmp_path: Path, spec: str) -> None:
    text = f"dependencies:\n  - {spec}\n"
    assert _pin(tmp_path, {"environment.yml": text}) is None


def test_conda_pip_list_and_yaml_extension(tmp_path: Path) -> None:
    pin = _pin(
        tmp_path,
        {
            "environment.yaml": """
                name: old
                channels:
                  - pytorch  # not a dependency
                dependencies:
                - python=3.7
                - pip
                - pip:
                  - "torch==1.5.0+cu101"  # from the pytorch wheel index
                - numpy
                variables:
                  - pytorch=1.0
            """
        },
    )
    assert pin == _expected(tmp_path, "environment.yaml", 7, "torch==1.5.0+cu101", "1.5.0")


def test_conda_channels_and_other_keys_are_not_dependencies(tmp_path: Path) -> None:
    text = "channels:\n  - pytorch=1.4\nprefix: pytorch=1.4\ndependencies:\n  - pytorch>=1.6\n"
    assert _pin(tmp_path, {"environment.yml": text}) is None


# -- choosing among files ------------------------------------------------------------------------


def test_sources_are_tried_in_order(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {
        "environment.yml": "dependencies:\n  - pytorch=1.0\n",
        "setup.py": 'from setuptools import setup\nsetup(install_requires=["torch==1.1.0"])\n',
        "setup.cfg": "[options]\ninstall_requires =\n    torch==1.2.0\n",
    }
    pin = _pin(tmp_path, files)
    assert pin == _expected(tmp_path, "setup.cfg", 2, "torch==1.2.0", "1.2.0")
    (tmp_path / "setup.cfg").unlink()
    assert torch_pin(tmp_path) == _expected(tmp_path, "setup.py", 1, "torch==1.1.0", "1.1.0")
    (tmp_path / "setup.py").unlink()
    assert torch_pin(tmp_path) == _expected(tmp_path, "environment.yml", 1, "pytorch=1.0", "1.0.1")


@needs_tomllib
def test_requirements_come_before_pyproject(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {
        "pyproject.toml": '[project]\ndependencies = ["torch==1.3.0"]\n',
        "requirements/cpu.txt": "torch==1.5.0+cpu\n",
    }
    pin = _pin(tmp_path, files)
    assert pin == _expected(tmp_path, "requirements/cpu.txt", 0, "torch==1.5.0+cpu", "1.5.0")


def test_an_old_pin_is_reported_even_when_another_file_allows_new_torch(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {
        "requirements.txt": "torch>=1.6\n",
        "setup.cfg": "[options]\ninstall_requires = torch==1.4.0\n",
    }
    assert _pin(tmp_path, files) == _expected(tmp_path, "setup.cfg", 1, "torch==1.4.0", "1.4.0")


def test_accepts_a_str_workspace(tmp_path: Path) -> None:
    _write(tmp_path, {"requirements.txt": "torch==1.5.0\n"})
    assert torch_pin(str(tmp_path)) == _expected(
        tmp_path, "requirements.txt", 0, "torch==1.5.0", "1.5.0"
    )


# -- bad input: ignored, never raised ------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["requirements.txt", "pyproject.toml", "setup.cfg", "setup.py", "environment.yml"],
)
def test_binary_files_are_ignored(tmp_path: Path, name: str) -> None:
    data = b"torch==1.4.0\n\x00\x01\x02\xff\xfe binary \x00 torch<1.6\n"
    assert _pin(tmp_path, {name: data}) is None


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("requirements.txt", "torch==1.4.0\n"),
        ("setup.py", 'setup(install_requires=["torch==1.4.0"])\n'),
        ("environment.yml", "dependencies:\n  - pytorch=1.4\n"),
    ],
)
def test_files_over_the_size_limit_are_skipped(tmp_path: Path, name: str, line: str) -> None:
    padding = "#" + "x" * 99 + "\n"
    text = line + padding * (MAX_FILE_BYTES // len(padding) + 1)
    assert _pin(tmp_path, {name: text}) is None


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "requirements.txt",
            "torch==1.4.0 ; python_version <\ntorch===\n-r\n-r \n--requirement=\n",
        ),
        ("requirements.txt", "torch" + "=" * 200_000 + "\n" + "-r " + "x" * 5000 + "\n"),
        ("pyproject.toml", '[project\ndependencies = ["torch==1.4.0"'),
        ("pyproject.toml", '[project]\ndependencies = "torch==1.4.0"\noptional-dependencies = 3\n'),
        ("pyproject.toml", '[tool.poetry.dependencies]\ntorch = "^banana"\n'),
        ("pyproject.toml", 'x = """\n[' + " " * 200_000 + '\n"""\n'),
        ("setup.cfg", "[options\ninstall_requires ==== torch==1.4.0 [[[\n  ]]]\n"),
        ("setup.py", 'setup(install_requires=["torch==1.4.0"\n'),
        ("setup.py", "x = " + "(" * 100_000 + "\n"),
        ("setup.py", "A = A + B\nB = A\nsetup(install_requires=A, extras_require=B)\n"),
        ("environment.yml", "dependencies: [pytorch=1.4]\n- : -\n  - pip:\n    -\n"),
        ("environment.yml", "dependencies:\n  - pytorch[version='" + "version='" * 20_000 + "\n"),
    ],
)
def test_malformed_files_are_ignored(tmp_path: Path, name: str, text: str) -> None:
    assert _pin(tmp_path, {name: text}) is None


def test_unreadable_and_odd_paths_are_ignored(tmp_path: Path) -> None:
    assert torch_pin(tmp_path / "missing") is None
    (tmp_path / "file").write_text("torch==1.4.0\n")
    assert torch_pin(tmp_path / "file") is None
    assert torch_pin("bad\0path") is None
    (tmp_path / "requirements.txt").mkdir()
    (tmp_path / "requirements.txt" / "x.txt").write_text("torch==1.4.0\n")
    assert torch_pin(tmp_path) is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "requirements.txt")  # reading it would block forever
    assert torch_pin(tmp_path) is None


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads unreadable files"
)
def test_an_unreadable_file_is_skipped(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "requirements.txt": "torch==1.4.0\n",
            "setup.cfg": "[options]\ninstall_requires = torch<1.6\n",
        },
    )
    (tmp_path / "requirements.txt").chmod(0)
    try:
        pin = torch_pin(tmp_path)
    finally:
        (tmp_path / "requirements.txt").chmod(0o644)
    assert pin == _expected(tmp_path, "setup.cfg", 1, "torch<1.6", "1.5.1")
