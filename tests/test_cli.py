"""The command line: output, JSON, exit codes, and messages instead of tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nnmem.cli import main

MLP_PARAMS = 784 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 10 + 10


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nnmem", *args], capture_output=True, text=True, check=False)


def test_json_is_the_reports_dict(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["estimate", "--model", "nnmem.zoo:mlp", "--input", "16x784", "--device", "cpu", "--json"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["parameters"] == MLP_PARAMS
    assert data["categories"]["parameter"] == MLP_PARAMS * 4
    assert data["peak_bytes"] == sum(data["categories"].values())


def test_summary_names_the_peak(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--model", "nnmem.zoo:mlp", "--input", "16x784", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "peak" in out and "optimizer_state" in out and "MiB" in out


def test_a_factory_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "mine.py"
    source.write_text(
        textwrap.dedent("""
        import torch
        def build():
            return torch.nn.Linear(8, 2)
    """)
    )
    assert (
        main(["estimate", "--model", f"{source}:build", "--input", "4x8", "--json", "--device", "cpu"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["parameters"] == 8 * 2 + 2


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--model", "nnmem.zoo:mlp", "--input", "16x784", "--optimizer", "adamm"], 2, "did you mean 'adam'"),
        (["--model", "nnmem.zoo:mpl", "--input", "16x784"], 4, "did you mean 'mlp'"),
        (
            ["--model", "no_such_module:build", "--input", "16x784"],
            4,
            "cannot import module 'no_such_module'",
        ),
        (["--model", "/no/such/file.py:build", "--input", "16x784"], 4, "no such file"),
        (["--model", "nnmem.zoo:mlp", "--input", "16x783"], 4, "module '0'"),
        (["--model", "nnmem.zoo:mlp", "--input", "16xx784"], 2, "write a shape"),
        (["--model", "nnmem.zoo:mlp"], 2, "--input"),
        (["--model", "nnmem.zoo:mlp", "--input", "16x784", "--mode", "infer"], 2, "did you mean 'inference'"),
        (["--model", "nnmem.zoo:mlp", "--input", "16x784", "--dtype", "bf61"], 2, "unknown dtype"),
    ],
)
def test_bad_input_gets_a_message_and_an_exit_code(args: list[str], code: int, message: str) -> None:
    result = run("estimate", *args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_python_dash_m_and_the_script_agree() -> None:
    result = run("estimate", "--model", "nnmem.zoo:mlp", "--input", "2x784", "--json", "--device", "cpu")
    assert result.returncode == 0
    assert json.loads(result.stdout)["parameters"] == MLP_PARAMS
