"""Build tokenizer + base model + LoRA for a task, behind one interface: batch -> choice logits (B x C).

* Causal LMs (Llama, Mistral, Qwen, ...) answer multiple choice from the hidden state at the last real
  token (padding is on the LEFT) through a trained "letter head": a C x hidden linear layer initialised
  from the LM head's rows for the choice letters " A", " B", ...  For classification tasks the choices
  are the label names.  The prompt is documented in docs/tasks.md ("Prompt").
  With `experiment.choice_scoring=loglik` (or `loglik_norm`) a causal LM instead scores each choice by the summed
  (or per-token mean) log-probability of the choice's tokens after the prompt, lm-eval's acc (acc_norm) -- no
  head: the LM's own output layer, frozen, and LoRA alone is trained.  Small LMs (135M-270M) stay at chance with the
  letter head and reach ARC-Easy 0.46-0.60 zero-shot this way.
* Encoders (BERT, RoBERTa, ...) use sequence classification (GLUE-style tasks) or multiple choice.

LoRA comes from peft; the head is trained.  Nothing here knows about SWAG: it only exposes
named parameters, and `swag_tensors` picks the ones `modules_to_swag` names.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from swag_lora.config.schema import MODULES_TO_SWAG
from swag_lora.data.demo import HELD_OUT, MIX_TEMPLATES, OPENERS, SHIFTED_TEMPLATES, TEMPLATES, WORDS
from swag_lora.data.encode import CAUSAL_HEAD_SIZE, LETTERS
from swag_lora.distributed import reshard, write_
from swag_lora.errors import ConfigError, CorruptFile
from swag_lora.sources import model_source

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HEAD_FILE = "letter_head.safetensors"
META_FILE = "choice_model.json"


# ---------------------------------------------------------------- where the weights come from
def tiny_tokenizer(family: str):
    """A word-level tokenizer trained in-process (deterministic, ~0.02 s) for the tiny test models."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [*TEMPLATES, *OPENERS, *SHIFTED_TEMPLATES, *MIX_TEMPLATES, *(w for ws in WORDS.values() for w in ws),
              *(w for ws in HELD_OUT.values() for w in ws), "Question: Answer: Choices: Text: What is this sentence about?",
              " ".join(LETTERS), "sports food weather technology yes no the a of to is in"]
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase() if family == "encoder" else None
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")


def load_tokenizer(model_cfg, source: str):
    from transformers import AutoTokenizer
    if model_cfg.tiny:
        tok = tiny_tokenizer(model_cfg.family)
    else:
        try:
            tok = AutoTokenizer.from_pretrained(source, trust_remote_code=model_cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            raise ConfigError(f"no tokenizer can be loaded from {source} ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:160]}); allowed: a save_pretrained folder with its "
                              f"tokenizer (download_models4cluster.py), or a hub id") from None
    if model_cfg.family == "causal":
        tok.padding_side = "left"      # the answer is read at position -1: it must be a real token
        tok.truncation_side = "left"   # keep the end of the prompt ("Answer:")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    return tok


def _tiny_config(model_cfg, vocab_size: int, num_labels: int):
    from transformers import DistilBertConfig, LlamaConfig, RobertaConfig
    t = SimpleNamespace(**model_cfg.tiny)
    if model_cfg.tiny.get("arch") == "distilbert":
        return DistilBertConfig(vocab_size=vocab_size, dim=t.hidden_size, hidden_dim=t.intermediate_size,
                                n_layers=t.num_layers, n_heads=t.num_heads, max_position_embeddings=520, pad_token_id=0,
                                num_labels=num_labels)
    if model_cfg.family == "causal":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                           num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads,
                           max_position_embeddings=512, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                           tie_word_embeddings=False)
    return RobertaConfig(vocab_size=vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                         num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, max_position_embeddings=520,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3, type_vocab_size=1, num_labels=num_labels,
                         hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def encoder_arch(task) -> str:
    return "seq_cls" if task.format == "cls" else "multiple_choice"


def load_base_model(model_cfg, source: str, arch: str, num_labels: int, vocab_size: int):
    """The pretrained (or, for tiny models, seeded random) base model."""
    from transformers import AutoModelForCausalLM, AutoModelForMultipleChoice, AutoModelForSequenceClassification
    cls = {"causal": AutoModelForCausalLM, "seq_cls": AutoModelForSequenceClassification,
           "multiple_choice": AutoModelForMultipleChoice}[arch]
    dtype = DTYPES[model_cfg.dtype]
    if model_cfg.tiny:      # its own random stream: the run's seed still draws LoRA's initialisation after it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(model_cfg.tiny["init_seed"]))
            return cls.from_config(_tiny_config(model_cfg, vocab_size, num_labels)).to(dtype)
    kwargs = {"dtype": dtype, "trust_remote_code": model_cfg.trust_remote_code}
    if arch == "seq_cls":
        kwargs["num_labels"] = num_labels
    quant = model_cfg.quantization
    if quant in ("4bit", "8bit"):
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=quant == "4bit", load_in_8bit=quant == "8bit", bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True)
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    folder = Path(source)
    if folder.is_dir():         # safetensors, never torch.load, unless a folder has only pytorch_model.bin
        kwargs["use_safetensors"] = any(folder.glob("*.safetensors"))
        if not kwargs["use_safetensors"]:
            print(f"[swag-lora] {folder} has no .safetensors weights: loading its pytorch_model.bin with torch.load "
                  f"(convert it once with save_pretrained to avoid this)")
    else:
        kwargs["use_safetensors"] = None    # the hub: safetensors where the repository has them
    model = cls.from_pretrained(source, **kwargs)
    if quant in ("4bit", "8bit"):
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=model_cfg.gradient_checkpointing)
    elif model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


# ---------------------------------------------------------------- the model
class ChoiceModel(nn.Module):
    """A LoRA-adapted model that maps a batch to logits over (up to) `num_choices` answers."""

    def __init__(self, peft_model: nn.Module, arch: str, num_choices: int, letter_ids: list[int] | None = None,
                 normalize: bool = False):
        super().__init__()
        self.peft = peft_model
        self.arch = arch    # causal (letter head), loglik (choice log-likelihoods), seq_cls or multiple_choice
        self.num_choices = num_choices
        self.letter_ids = letter_ids
        self.normalize = normalize    # loglik: the mean log-probability per choice token (loglik_norm), not the sum
        self.head = None
        if arch == "causal":
            base = peft_model.get_base_model()
            weight = base.get_output_embeddings().weight[letter_ids].detach().float().clone()
            self.head = nn.Linear(weight.shape[1], num_choices, bias=False, device=weight.device)
            self.head.weight.data.copy_(weight)

    def forward(self, input_ids, attention_mask, choice_mask, token_type_ids=None, labels=None,
                cont_ids=None, cont_mask=None) -> torch.Tensor:
        if self.arch == "loglik":
            logits = self.choice_logliks(input_ids, attention_mask, cont_ids, cont_mask)
        elif self.arch == "causal":
            base = self.peft.get_base_model()
            backbone = getattr(base, base.base_model_prefix)
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, -1]
            logits = self.head(hidden.float())
        else:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            logits = self.peft(**kwargs).logits.float()
        return logits.masked_fill(~choice_mask, torch.finfo(logits.dtype).min)

    def choice_logliks(self, input_ids, attention_mask, cont_ids, cont_mask) -> torch.Tensor:
        """B x C scores: sum_t log p(choice token t | prompt, choice tokens < t) over each choice's tokens, divided by
        their number when `normalize`.  The prompt (B x L, left-padded) runs once; its keys and values are repeated for
        the C choices (B C x K, right-padded), which continue it at the prompt's true positions.  The output layer
        is applied only where a choice token is predicted."""
        B, C, K = cont_ids.shape
        base = self.peft.get_base_model()
        backbone = getattr(base, base.base_model_prefix)
        positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        prompt = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True)
        cache = prompt.past_key_values
        cache.batch_repeat_interleave(C)
        ids, cmask = cont_ids.reshape(B * C, K), cont_mask.reshape(B * C, K)
        start = attention_mask.sum(-1).repeat_interleave(C)[:, None]
        cont = backbone(input_ids=ids, attention_mask=torch.cat([attention_mask.repeat_interleave(C, 0), cmask.long()], 1),
                        position_ids=start + torch.arange(K, device=ids.device), past_key_values=cache, use_cache=True)
        # the state before choice token t: the prompt's last for t = 0, the choice's own t - 1 after that
        before = torch.cat([prompt.last_hidden_state[:, -1:].repeat_interleave(C, 0), cont.last_hidden_state[:, :-1]], 1)
        rows = torch.arange(B * C, device=ids.device)[:, None].expand(-1, K)[cmask]
        logits = base.get_output_embeddings()(before[cmask]).float()
        cap = getattr(base.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        token_lp = torch.log_softmax(logits, -1).gather(-1, ids[cmask][:, None])[:, 0]
        scores = torch.zeros(B * C, device=ids.device, dtype=token_lp.dtype).index_add(0, rows, token_lp)
        if self.normalize:
            scores = scores / cmask.sum(1).clamp_min(1)
        return scores.reshape(B, C)

    # ------------------------------------------------------------ the head: last-layer posteriors
    def head_module(self) -> nn.Module:
        """The module that maps features to the (pre-mask) logits: the letter head of a causal LM, the trained copy
        of an encoder's classifier (peft modules_to_save)."""
        if self.arch == "causal":
            return self.head
        if self.arch == "loglik":
            raise ValueError("experiment.choice_scoring=loglik scores choices through the LM's own output layer (frozen, "
                             "tied to the embeddings): there is no trained head for a last-layer posterior; allowed: "
                             "posteriors over LoRA (method.modules_to_swag=grad_only, evaluation.laplace_subset=all)")
        suffix = ".modules_to_save.default"
        wrappers = {n[: -len(suffix)]: m for n, m in self.peft.named_modules() if n.endswith(suffix)}
        if not wrappers:
            raise ValueError("this model has no trained head (no modules_to_save): last-layer posteriors need one; "
                             "allowed: an encoder with model.modules_to_save=[classifier], or a causal LM's letter head")
        # the module named exactly `classifier` / `score`: peft also wraps DistilBERT's `pre_classifier` (a hidden layer
        # before the classifier), whose name ends in "classifier" too
        exact = [n for n in wrappers if n.rsplit(".", 1)[-1] in ("classifier", "score")]
        return wrappers[exact[-1] if exact else list(wrappers)[-1]]

    def has_head(self) -> bool:
        """Whether a trained head maps features to logits (last-layer posteriors apply)."""
        return self.arch == "causal" or (self.arch != "loglik" and any(
            n.endswith(".modules_to_save.default") for n, _ in self.peft.named_modules()))

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """The head's parameters, named as in `named_parameters` (what a last-layer posterior covers)."""
        head = {id(p) for p in self.head_module().parameters()}
        return {n: p for n, p in self.named_parameters() if id(p) in head}

    @torch.no_grad()
    def head_inputs(self, batch: dict) -> tuple:
        """One backbone pass: the arguments the head is called with (its features) for `batch`."""
        seen = []
        hook = self.head_module().register_forward_pre_hook(lambda module, args: seen.append(args))
        try:
            self(**batch)
        finally:
            hook.remove()
        return seen[-1]

    def logits_from_head(self, head_inputs: tuple, batch: dict) -> torch.Tensor:
        """The model's logits, from the head applied to cached features (`head_inputs`): what `forward` returns."""
        logits = self.head_module()(*head_inputs).float().reshape(batch["choice_mask"].shape[0], -1)
        return logits.masked_fill(~batch["choice_mask"], torch.finfo(logits.dtype).min)

    # ------------------------------------------------------------ adapter files
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """LoRA and head weights: what an adapter checkpoint holds (tensor names as in named_parameters)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def save_adapter(self, folder: str | os.PathLike, state: dict[str, torch.Tensor] | None = None) -> None:
        """peft adapter (loadable by `PeftModel.from_pretrained`) + the letter head + a small JSON.
        `state` gives whole values for the trainable tensors (by name; e.g. gathered shards, or a SWA mean);
        by default the model's own."""
        folder = Path(folder)
        state = state if state is not None else {n: t.detach() for n, t in self.trainable_state().items()}
        self.peft.save_pretrained(str(folder), state_dict={n[len("peft."):]: t.cpu() for n, t in state.items()
                                                           if n.startswith("peft.")})
        if self.head is not None:
            save_file({"weight": state["head.weight"].detach().cpu().contiguous()}, str(folder / HEAD_FILE))
        (folder / META_FILE).write_text(json.dumps({"kind": self.arch, "num_choices": self.num_choices,
                                                    "letter_ids": self.letter_ids, "normalize": self.normalize}, indent=1))

    def adapter_keys(self) -> dict[str, str]:
        """Key in adapter_model.safetensors -> trainable tensor name, by peft's own naming (the adapter name
        dropped, modules_to_save unwrapped): `get_peft_model_state_dict` applied to an index per tensor."""
        from peft import get_peft_model_state_dict
        names = [n for n in self.trainable_state() if n.startswith("peft.")]
        index = {n[len("peft."):]: torch.tensor(i) for i, n in enumerate(names)}
        return {k: names[int(v)] for k, v in get_peft_model_state_dict(self.peft, state_dict=index).items()}

    @torch.no_grad()
    def load_adapter(self, folder: str | os.PathLike) -> None:
        """Load an adapter saved by `save_adapter` into the trainable tensors, in place (sharded ones too)."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / META_FILE).read_text())
            kind, width = meta["kind"], meta["num_choices"]
            saved = load_file(str(folder / "adapter_model.safetensors"))
            head = load_file(str(folder / HEAD_FILE))["weight"] if self.head is not None else None
        except Exception as e:  # noqa: BLE001 -- safetensors, JSON or shape errors: the file is unusable
            raise CorruptFile(f"adapter {folder} is unusable ({type(e).__name__}: {str(e)[:160]})") from None
        if kind != self.arch or (self.arch in ("causal", "seq_cls") and width != self.num_choices):
            raise CorruptFile(f"adapter in {folder} is a {kind} model with {width} choices; "
                              f"this model is {self.arch} with {self.num_choices}")
        keys = self.adapter_keys()
        unexpected, missing = sorted(set(saved) - set(keys)), sorted(set(keys) - set(saved))
        if unexpected or missing:
            raise CorruptFile(f"adapter in {folder} does not fit this model: "
                              + (f"the file has weights this model has not, {unexpected[:3]}" if unexpected
                                 else f"the file has no weights for {missing[:3]}"))
        values = {keys[k]: v for k, v in saved.items()}
        if head is not None:
            values["head.weight"] = head
        state = self.trainable_state()
        for name, value in values.items():
            if tuple(value.shape) != tuple(state[name].shape):
                raise CorruptFile(f"adapter in {folder}: {name} has shape {tuple(value.shape)}, the model's is "
                                  f"{tuple(state[name].shape)}")
            if not torch.isfinite(value).all():
                raise CorruptFile(f"adapter in {folder} holds non-finite values in {name}; it cannot be evaluated")
        reshard(self)
        write_(self.trainable_state(), values)


def swag_tensors(model: nn.Module, modules_to_swag: str) -> dict[str, torch.Tensor]:
    """The named parameters the SWAG posterior covers: everything trained (LoRA + head), LoRA only, the head only
    (last-layer SWAG), or all."""
    if modules_to_swag not in MODULES_TO_SWAG:
        raise ValueError(f"unknown modules_to_swag {modules_to_swag!r}; allowed: {', '.join(MODULES_TO_SWAG)}")
    if modules_to_swag == "head":
        return model.head_tensors()
    named = dict(model.named_parameters())
    if modules_to_swag == "lora_only":
        return {n: p for n, p in named.items() if "lora_" in n}
    if modules_to_swag == "grad_only":
        return {n: p for n, p in named.items() if p.requires_grad}
    return named


def letter_token_ids(tokenizer, n: int) -> list[int]:
    """Token id of " A", " B", ... (the last piece, so "▁A" for sentencepiece and "ĠA" for BPE)."""
    ids = [tokenizer.encode(f" {LETTERS[i]}", add_special_tokens=False)[-1] for i in range(n)]
    if len(set(ids)) != n:
        raise ValueError(f"the tokenizer does not give the choice letters distinct tokens: {ids}")
    return ids


def model_arch(model_cfg, exp_cfg, task) -> str:
    """causal (letter head) or loglik (choice log-likelihoods) for a causal LM; seq_cls or multiple_choice for an
    encoder, by the task's format."""
    if model_cfg.family == "causal":
        return "causal" if getattr(exp_cfg, "choice_scoring", "letter") == "letter" else "loglik"
    return encoder_arch(task)


def linear_names(model: nn.Module) -> set[str]:
    """The last name part of every linear layer (what LoRA's target_modules match)."""
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear) and n}


def build_model(model_cfg, exp_cfg, task, tokenizer, source: str) -> ChoiceModel:
    """Base model + LoRA (peft) + head for `task`."""
    from peft import LoraConfig, TaskType, get_peft_model
    arch = model_arch(model_cfg, exp_cfg, task)
    base = load_base_model(model_cfg, source, "causal" if arch == "loglik" else arch,
                           task.num_choices if arch == "seq_cls" else 1, len(tokenizer))
    target = list(model_cfg.lora_target_modules)
    common = dict(r=exp_cfg.lora_r, lora_alpha=exp_cfg.lora_alpha, lora_dropout=exp_cfg.lora_dropout,
                  target_modules=target, bias=exp_cfg.train_biases)
    if arch in ("causal", "loglik"):   # the letter head is trained in any case; modules_to_save as the original
        lora = LoraConfig(task_type=TaskType.CAUSAL_LM, modules_to_save=list(model_cfg.head_modules) or None, **common)
    elif arch == "seq_cls":
        lora = LoraConfig(task_type=TaskType.SEQ_CLS, modules_to_save=list(model_cfg.head_modules), **common)
    else:
        lora = LoraConfig(modules_to_save=list(model_cfg.head_modules), **common)
    try:
        peft_model = get_peft_model(base, lora)
    except ValueError as e:              # peft: no module of the base model matches the target names
        kind = getattr(base.config, "model_type", type(base).__name__)
        raise ConfigError(f"model.target_modules={target} matches no module of {source} (a {kind} model): "
                          f"{str(e).splitlines()[0][:160]}; allowed: its own linear layers' names, e.g. "
                          f"{sorted(linear_names(base))[:6]}") from None
    if arch == "causal":
        return ChoiceModel(peft_model, arch, CAUSAL_HEAD_SIZE, letter_token_ids(tokenizer, CAUSAL_HEAD_SIZE))
    return ChoiceModel(peft_model, arch, task.num_choices, normalize=getattr(exp_cfg, "choice_scoring", "") == "loglik_norm")


def load_model(model_cfg, exp_cfg, task, offline: bool = False, model_path: str | None = None):
    """(tokenizer, ChoiceModel) for `task`, from wherever `model_source` says the weights are."""
    source = model_source(model_cfg, offline, model_path)
    tokenizer = load_tokenizer(model_cfg, source)
    return tokenizer, build_model(model_cfg, exp_cfg, task, tokenizer, source)
