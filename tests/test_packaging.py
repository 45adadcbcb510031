"""The client builds, the .vsix carries the server's libraries, and it runs in real VS Code."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import INITIALIZE_REQUEST, ROOT, lsp_frame

VSIX = ROOT / "dist" / "torchls.vsix"
NODE_MODULES = ROOT / "node_modules"
VSCODE_HARNESS = ROOT / "tests" / "vscode" / "node_modules" / "code-server"

needs_node = pytest.mark.skipif(
    shutil.which("node") is None or not NODE_MODULES.is_dir(),
    reason="the client's npm packages are not installed (run scripts/setup.sh)",
)


def _npm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["npm", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def vsix() -> Path:
    """Packages the extension once per test session, exactly as a release would."""
    result = _npm("run", "package")
    assert result.returncode == 0, result.stdout + result.stderr
    assert VSIX.is_file()
    return VSIX


@needs_node
def test_client_typechecks_in_strict_mode() -> None:
    config = json.loads((ROOT / "tsconfig.json").read_text())
    assert config["compilerOptions"]["strict"] is True
    result = _npm("run", "typecheck")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_node
def test_vsix_holds_the_client_and_the_bundled_server(vsix: Path) -> None:
    names = set(zipfile.ZipFile(vsix).namelist())
    for required in [
        "extension/package.json",
        "extension/dist/extension.js",
        "extension/bundled/tool/torchls_server.py",
        "extension/bundled/libs/torchls/cli.py",
        "extension/bundled/libs/torchls/worker/boot.py",
        "extension/bundled/libs/pygls/__init__.py",
        "extension/bundled/libs/lsprotocol/types.py",
        "extension/bundled/libs/cattrs/__init__.py",
        "extension/bundled/libs/attrs/__init__.py",
        "extension/bundled/libs/exceptiongroup/__init__.py",
    ]:
        assert required in names, f"{required} missing from the .vsix"
    # Pure Python only: a compiled module would tie the .vsix to one platform.
    assert not [n for n in names if n.endswith((".so", ".pyd", ".dylib", ".pyc"))]
    # Nothing from the source tree that a user does not need.
    assert not [n for n in names if n.startswith(("extension/tests/", "extension/node_modules/"))]
    manifest = json.loads(zipfile.ZipFile(vsix).read("extension/package.json"))
    assert manifest["capabilities"]["untrustedWorkspaces"]["supported"] == "limited"


@needs_node
def test_bundled_server_runs_on_an_interpreter_without_pygls(
    vsix: Path, bare_python: str, tmp_path: Path
) -> None:
    """The user's environment needs torch and friends, never pygls: the .vsix brings it."""
    zipfile.ZipFile(vsix).extractall(tmp_path)
    libs = tmp_path / "extension" / "bundled" / "libs"
    stdin = lsp_frame(INITIALIZE_REQUEST) + lsp_frame({"jsonrpc": "2.0", "method": "exit"})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(libs)
    result = subprocess.run(
        [bare_python, "-m", "torchls", "serve", "--stdio"],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert b'"name": "torchls"' in result.stdout or b'"name":"torchls"' in result.stdout, (
        result.stdout + result.stderr
    )


@needs_node
def test_bundled_server_starts_isolated_from_pythonpath_and_the_current_folder(
    vsix: Path, bare_python: str, tmp_path: Path
) -> None:
    """Started as the VS Code client starts it, `python -I bundled/tool/torchls_server.py
    serve`, the server answers with the bundled libraries, and a `sitecustomize.py` on
    PYTHONPATH or in the current folder, or a `uuid.py` there, never runs in it."""
    zipfile.ZipFile(vsix).extractall(tmp_path)
    bootstrap = tmp_path / "extension" / "bundled" / "tool" / "torchls_server.py"
    marker = tmp_path / "imported"
    hostile = f"open({str(marker)!r}, 'a').write(__name__ + ' ')\n"
    on_path, project = tmp_path / "on-pythonpath", tmp_path / "project"
    for folder in (on_path, project):
        folder.mkdir()
        (folder / "sitecustomize.py").write_text(hostile)
    (project / "uuid.py").write_text(hostile)
    stdin = lsp_frame(INITIALIZE_REQUEST) + lsp_frame({"jsonrpc": "2.0", "method": "exit"})
    env = dict(os.environ, PYTHONPATH=str(on_path))
    result = subprocess.run(
        [bare_python, "-I", "-u", str(bootstrap), "serve", "--stdio"],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=project,
        timeout=60,
    )
    assert b'"name": "torchls"' in result.stdout or b'"name":"torchls"' in result.stdout, (
        result.stdout + result.stderr
    )
    assert not marker.exists(), f"the server imported: {marker.read_text()}"
    # The same interpreter without -I imports it: the files above are live.
    subprocess.run([bare_python, "-c", "pass"], env=env, cwd=project, check=True)
    assert marker.read_text() == "sitecustomize "


@needs_node
@pytest.mark.skipif(
    not VSCODE_HARNESS.is_dir() or not Path("/usr/bin/chromium").exists(),
    reason="code-server or chromium is not installed (run scripts/setup.sh)",
)
def test_real_vscode_smoke(vsix: Path) -> None:
    """tests/vscode/*.test.mjs: the .vsix in code-server driven by headless Chromium, every
    feature as a user meets it (about 1.5 minutes on 2 cores). Each test keeps screenshots."""
    artifacts = ROOT / "tests" / "vscode" / "artifacts"
    shutil.rmtree(artifacts, ignore_errors=True)  # what is there afterwards, this run made
    env = dict(os.environ, TORCHLS_VSIX=str(vsix), TORCHLS_TEST_PYTHON=sys.executable)
    result = subprocess.run(
        ["node", "--test", "tests/vscode/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "# fail 0" in result.stdout
    passed = re.search(r"# pass (\d+)", result.stdout)
    assert passed and int(passed.group(1)) >= 27, result.stdout[-4000:]
    expected = [
        "status-bar",  # torch 2.13.0 in the status bar
        "output-log",  # the torchls output channel with the server's status line
        "hover-model-class",
        "hover-construction",
        "load-diagnostics",
        "quick-fix-menu",
        "quick-fix-applied",
        "kfold-inserted",
        "downgrade-notification",
        "explorer-menu-checkpoint",
        "explorer-menu-python",
        "interpreter-without-torch",
        "interpreter-restored",
        "untrusted-hover",
        "untrusted-diagnostics",
        "worker-killed-status",
        "worker-killed-next-hover",
        "hover-variable",  # the variable a model is bound to
        "hover-submodule-line",  # self.encoder = Encoder(...): its share of the parent
        "viewer-training-checkpoint",  # the checkpoint viewer: header, tree, table
        "viewer-filter",  # 50,000 tensors filtered
        "viewer-compare",  # Compare with a model: DataParallel's module. prefix
        "viewer-hostile-pickle",  # the weights_only verdict of a pickle that would run a command
        "viewer-sharded",  # a sharded model folder: shard column and the index's problems
        "viewer-high-contrast",
        "viewer-diff",  # Compare checkpoints: changed shapes and values
        "viewer-untrusted",  # the viewer in Restricted Mode
        "inlay-shapes",  # SmallConvNet.forward with a real forward's shapes
        "codelens",  # the line above the class: params, MACs, input
        "model-report",  # the CodeLens click: SmallConvNet's tree, rows as torch counts them
        "model-report-filter",  # the report's filter keeps matches and their ancestors
        "model-report-blocks",  # three identical blocks folded into one row, opened
        "shape-fix-menu",  # Ctrl+. on the forward line: the verified in_features fix
        "shape-fix-applied",  # the fix applied, saved, the error gone
    ]
    missing = [name for name in expected if not (artifacts / f"{name}.png").is_file()]
    assert not missing, f"screenshots not kept: {missing}"
    failures = sorted(p.name for p in artifacts.glob("*-failure.png"))
    assert not failures, failures


def test_manifest_contributes_the_downgrade_command_menus_and_setting() -> None:
    """The client's command, where it shows, and its setting; the server's id stays free."""
    import re

    manifest = json.loads((ROOT / "package.json").read_text())
    contributes = manifest["contributes"]
    commands = {c["command"]: c for c in contributes["commands"]}
    assert commands["torchls.downgrade"]["title"] == "Downgrade checkpoint"
    assert commands["torchls.downgrade"]["category"] == "TorchLS"
    # vscode-languageclient registers the server's command under this id: a clash breaks it.
    assert "torchls.downgradeCheckpoint" not in commands

    palette = [
        m for m in contributes["menus"]["commandPalette"] if m["command"] == "torchls.downgrade"
    ]
    assert palette and all("when" not in m for m in palette)

    (explorer,) = [
        m for m in contributes["menus"]["explorer/context"] if m["command"] == "torchls.downgrade"
    ]
    when = explorer["when"]
    assert "explorerResourceIsFolder && resourcePath in torchls.modelFolders" in when
    literal = re.search(r"resourceExtname =~ /(.+)/([a-z]*)\)", when)
    assert literal is not None, when
    assert literal.group(2) == "i"
    extension = re.compile(literal.group(1), re.IGNORECASE)
    for name in [".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".PT", ".SafeTensors"]:
        assert extension.match(name), name
    for name in [".py", ".json", ".ptx", "pt", ".pt.bak"]:
        assert not extension.match(name), name

    suffix = contributes["configuration"]["properties"]["torchls.downgrade.suffix"]
    assert suffix["type"] == "string" and suffix["default"] == "legacy"
    assert "<name>.<suffix><ext>" in suffix["markdownDescription"]
    assert "<folder>-<suffix>/" in suffix["markdownDescription"]
    # Commands are activation events by themselves from VS Code 1.74 on.
    assert tuple(map(int, manifest["engines"]["vscode"].lstrip("^").split(".")[:2])) >= (1, 74)
