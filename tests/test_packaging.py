"""`pip install .` gives an importable swag_lora with its configs (installed apart from the checkout)."""
import os
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO


@pytest.mark.slow
def test_pip_install_gives_an_importable_package_with_its_configs(tmp_path):
    import shutil
    source = tmp_path / "src"       # a copy: building in place would leave build/ and *.egg-info in the checkout
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "results", "wandb", "build", "*.egg-info", "__pycache__", ".pytest_cache", "outputs", "logs"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "wheel").glob("swag_lora-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("swag_lora/conf/config.yaml", "swag_lora/conf/eval.yaml", "swag_lora/conf/method/swag.yaml",
              "swag_lora/conf/model/llama_7b_hf.yaml", "swag_lora/conf/evaluation/default.yaml",
              "swag_lora/posteriors/swag.py", "swag_lora/train/callback.py"):
        assert f in names, f
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for script in ("swag-lora-train = swag_lora.cli:train_entry", "swag-lora-evaluate = swag_lora.cli:evaluate_entry",
                   "swag-lora-report = swag_lora.report.tables:main"):
        assert script in entry_points
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    code = ("import swag_lora, pathlib; from swag_lora import SwagPosterior, SwagCallback; "
            "from swag_lora.config import compose, parse_run; run = parse_run(compose('config', ['method=swag'])); "
            "print(pathlib.Path(swag_lora.__file__).parent, run.method.swag_start, SwagCallback.__name__)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    where, swag_start, name = p.stdout.split()
    assert where.startswith(str(tmp_path / "site")) and swag_start == "8" and name == "SwagCallback"
