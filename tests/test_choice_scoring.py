"""experiment.choice_scoring=loglik / loglik_norm: each choice scored by the log-likelihood of its tokens after the
prompt, checked against the causal LM's own per-sequence log-probabilities, and run through every method."""
import numpy as np
import pytest
import torch
from conftest import TINY, compose, run_config

from swag_lora.config import ConfigError, parse_eval
from swag_lora.data import get_task
from swag_lora.data.encode import Encoding
from swag_lora.model import load_model

ROWS = [{"text": "the rain and the storm were in the news", "text_pair": None, "label": 0,
         "choices": ["the weather report", "football", "the pasta", "the laptop"]},
        {"text": "we argued about the chef", "text_pair": None, "label": 2, "choices": ["tennis", "the app", "the soup"]},
        {"text": "my friend asked me about the server and the network", "text_pair": None, "label": 1,
         "choices": ["the cake", "the database", "the frost", "the league"]}]


def tiny_loglik(scoring):
    run = run_config(*TINY, "model=tiny_llama", f"experiment.choice_scoring={scoring}")
    task = get_task("obqa")
    tok, model = load_model(run.model, run.experiment, task)
    with torch.no_grad():                  # LoRA's B starts at 0: move it, so that the adapter takes part
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    return tok, model.eval(), task


@pytest.mark.parametrize("scoring", ["loglik", "loglik_norm"])
def test_choice_scores_are_the_lms_own_log_probabilities_of_each_choice(scoring):
    tok, model, task = tiny_loglik(scoring)
    enc = Encoding.of_model(tok, model, 64)
    feats = enc.features(ROWS, task)
    batch = enc.collator(task)(feats)
    assert batch["cont_ids"].shape[:2] == (3, 4) and not batch["choice_mask"][1, 3]    # a dummy 4th choice, masked
    assert len({len(f["input_ids"]) for f in feats}) > 1        # prompts of different lengths: left padding is tested
    with torch.no_grad():
        scores = model(**{k: v for k, v in batch.items() if k != "labels"})
    lm = model.peft.get_base_model()
    for i, f in enumerate(feats):
        for c, cont in enumerate(f["cont_ids"]):
            ids, k = f["input_ids"] + cont, len(cont)
            with torch.no_grad():          # one unpadded sequence through the LM's own forward (its lm_head, its logits)
                logp = torch.log_softmax(lm(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            want = sum(logp[t - 1, ids[t]] for t in range(len(ids) - k, len(ids)))
            want = want / k if scoring == "loglik_norm" else want
            assert scores[i, c].item() == pytest.approx(want.item(), abs=1e-4)
    assert scores[1, 3] == torch.finfo(scores.dtype).min
    probs = torch.softmax(scores, -1)
    assert torch.allclose(probs.sum(-1), torch.ones(3)) and probs[1, 3] == 0


def test_an_encoder_or_a_last_layer_posterior_with_loglik_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="choice_scoring=loglik scores a causal LM"):
        run_config(*TINY, "model=tiny_roberta", "experiment.choice_scoring=loglik")
    with pytest.raises(ConfigError, match="no trained head"):
        run_config(*TINY, "model=tiny_llama", "method=swag", "method.modules_to_swag=head", "experiment.choice_scoring=loglik")
    with pytest.raises(ConfigError, match="no trained head"):
        run_config(*TINY, "model=tiny_llama", "experiment.choice_scoring=loglik", "evaluation.table_methods=[map,ll-laplace]")


@pytest.fixture(scope="module")
def loglik_runs(tmp_path_factory):
    from swag_lora.train.loop import train
    root = tmp_path_factory.mktemp("loglik")
    return [train(run_config(*TINY, "model=tiny_llama", "method=swag", "experiment.num_epochs=2", "method.swag_start=1",
                             "method.swag_c_steps=2", "method.swag_max_num_models=3", "experiment.choice_scoring=loglik_norm",
                             f"experiment.save_folder={root}", "experiment.eval_upon_save=false", f"experiment.seed={seed}"))
            for seed in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [
    ("base", ["evaluation.temperature_scaling=true"]), ("dropout", []), ("swag", []),
    ("laplace", ["evaluation.laplace_hessian=diag", "evaluation.laplace_jacobian_rows=4"]), ("ensemble", []),
    ("multiswag", [])])
def test_every_method_runs_with_choice_loglikelihoods_in_and_out_of_distribution(loglik_runs, tmp_path, method, extra):
    from swag_lora.predict.evaluation import evaluate, resolve_plan
    where = ([f"evaluation.eval_model_paths=[{','.join(map(str, loglik_runs))}]"] if method in ("ensemble", "multiswag")
             else [f"evaluation.eval_model_path={loglik_runs[0]}"])
    records = evaluate(resolve_plan(parse_eval(compose(
        f"evaluation.eval_method={method}", *where, "evaluation.num_samples=3", "experiment.max_eval_samples=16",
        "experiment.ood_task=demo", "experiment.ood_subtask=shifted", f"evaluation.output_dir={tmp_path}", *extra,
        config_name="eval"))))
    assert [r["distribution"] for r in records] == ["id", "ood"]
    for r in records:
        assert r["num_classes"] == 4 and all(np.isfinite(v) for k, v in r["metrics"].items() if k != "mcc")
    assert 0 <= records[1]["metrics"]["auroc_entropy"] <= 1


@pytest.mark.slow
def test_a_last_layer_laplace_of_a_loglik_run_is_refused_before_it_loads(loglik_runs):
    from swag_lora.predict.evaluation import resolve_plan
    with pytest.raises(ConfigError, match="no trained head"):
        resolve_plan(parse_eval(compose("evaluation.eval_method=laplace", f"evaluation.eval_model_path={loglik_runs[0]}",
                                        "evaluation.laplace_subset=head", config_name="eval")))
