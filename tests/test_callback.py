"""SWAG as a library for any transformers.Trainer: SwagCallback collects what the loop's collector collects, and the
docs/library.md's example runs as written."""
import re

import numpy as np
import pytest
import torch
from conftest import REPO


class Snapshots:
    """A second callback that keeps a copy of the trained tensors at the steps SWAG should collect."""

    def __init__(self, steps):
        from transformers import TrainerCallback
        self.steps, self.seen = set(steps), []
        outer = self

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step in outer.steps:
                    outer.seen.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        self.callback = CB()


def test_callback_posterior_equals_the_snapshots_it_should_have_taken(tmp_path):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import RobertaConfig, RobertaForSequenceClassification, Trainer, TrainingArguments

    from swag_lora import SwagCallback
    torch.manual_seed(0)
    base = RobertaForSequenceClassification(RobertaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                                          num_hidden_layers=2, num_attention_heads=4, num_labels=2,
                                                          max_position_embeddings=40, pad_token_id=0))
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    g = torch.Generator().manual_seed(1)
    ds = Dataset.from_dict({"input_ids": torch.randint(3, 50, (64, 12), generator=g).tolist(),
                            "labels": torch.randint(0, 2, (64,), generator=g).tolist()})
    cb = SwagCallback(max_rank=3, start_step=4, every_steps=3)      # collects at steps 7, 10, 13, 16
    snaps = Snapshots([7, 10, 13, 16])
    args = TrainingArguments(str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=8, learning_rate=5e-3,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb, snaps.callback]).train()
    post = cb.posterior
    assert post.num_snapshots == 4 and post.rank == 3 and len(snaps.seen) == 4
    for name in post.shapes:
        stack = np.stack([s[name].numpy().ravel() for s in snaps.seen])
        np.testing.assert_allclose(post.mean()[name].numpy().ravel(), stack.mean(0), atol=1e-6)
        np.testing.assert_allclose(post.variance()[name].numpy().ravel(), np.clip(stack.var(0), 1e-30, None), atol=1e-6)
    assert any("classifier" in n for n in post.shapes) and any("lora_A" in n for n in post.shapes)
    post.save(tmp_path / "swag")
    assert (tmp_path / "swag" / "swag_posterior.safetensors").is_file()


def test_callback_posterior_is_none_before_the_first_collection():
    from swag_lora import SwagCallback
    assert SwagCallback().posterior is None
    with pytest.raises(ValueError, match="every_steps=0 must be >= 1"):
        SwagCallback(every_steps=0)


@pytest.mark.slow
def test_the_library_example_runs_as_written(tmp_path, monkeypatch):
    doc = (REPO / "docs" / "library.md").read_text()
    code = re.search(r"<!-- trainer-example -->\n```python\n(.*?)```", doc, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "docs/library.md", "exec"), scope)
    assert (tmp_path / "swag" / "swag_posterior.safetensors").is_file()
    bma = scope["bma"]
    assert bma.shape == (2, 2) and torch.allclose(bma.sum(-1), torch.ones(2), atol=1e-5)
    assert scope["cb"].posterior.num_snapshots == 12
