"""Packaging: the built wheel holds everything a non-editable install needs. Build it, install it (--no-deps) in a
fresh venv that borrows this venv's dependencies through a .pth line (fast, offline), and run the installed
`mlx-embed convert --dwq` (the packaged calibration set, no --calibration) and `mlx-embed serve` from outside the
source tree."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

import mlx_qwen3_embed as mqe
from server_process import running_server

pytest.importorskip("build")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the tree (a build leaves build/ and *.egg-info beside the sources)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "tests", "bench", "build", "*.egg-info",
                                                                "__pycache__", ".pytest_cache", ".venv"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(work / "dist"),
                    str(source)], check=True, capture_output=True, timeout=300)
    return next((work / "dist").glob("*.whl"))


@pytest.fixture(scope="module")
def fresh(wheel, tmp_path_factory) -> Path:
    """A new venv with only the wheel installed; its dependencies come from this venv's site-packages."""
    venv = tmp_path_factory.mktemp("venv") / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # a plain path line: .pth files inside that folder (our editable install's finder) are not run from it
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, capture_output=True, timeout=300)
    return venv


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_wheel_holds_the_calibration_set_and_every_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "mlx_qwen3_embed/data/calibration/calibration.jsonl" in names
    for module in ("serve/ollama.py", "serve/tei.py", "serve/metrics.py", "verify.py", "cli/verify.py",
                   "integrations/langchain.py", "models/qwen3.py"):
        assert f"mlx_qwen3_embed/{module}" in names


def test_installed_package_is_the_wheel_not_the_source(fresh, tmp_path):
    where = subprocess.run([str(fresh / "bin" / "python"), "-c",
                            "import mlx_qwen3_embed; print(mlx_qwen3_embed.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path, env=clean_env()).stdout
    assert where.startswith(str(fresh))


@pytest.fixture(scope="module")
def converted(fresh, hub_model, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("dwq")
    dst = work / "tiny-4bit-dwq"
    done = subprocess.run([str(fresh / "bin" / "mlx-embed"), "convert", str(hub_model), str(dst), "--group-size",
                           "32", "--dwq", "--steps", "2"], capture_output=True, text=True, cwd=work, env=clean_env(),
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return dst


def test_installed_convert_dwq_uses_the_packaged_calibration_set(converted):
    assert (converted / "config.json").is_file()
    assert "quantization" in json.loads((converted / "config.json").read_text())


def test_installed_serve_answers_the_librarys_vectors(fresh, converted, sample, tmp_path):
    with running_server(["--model", str(converted), "--log-level", "warning"], tmp_path / "serve.log",
                        mlx_embed=fresh / "bin" / "mlx-embed", cwd=tmp_path, env=clean_env()) as url:
        request = urllib.request.Request(url + "/api/embed", data=json.dumps({"input": sample}).encode(),
                                         headers={"content-type": "application/json"})
        got = np.array(json.loads(urllib.request.urlopen(request, timeout=60).read())["embeddings"])
    np.testing.assert_allclose(got, mqe.load(str(converted)).embed(sample), atol=1e-5)
