"""swag-lora: SWAG posteriors over LoRA weights, with Bayesian model averages and honest metrics.

    from swag_lora import SwagPosterior, SwagCallback, SwagCollector
"""
import logging

__version__ = "0.2.0"
__all__ = ["SwagCallback", "SwagCollector", "SwagPosterior"]

# bitsandbytes (imported by peft when installed) warns at import that an optional CPU kernel package is missing;
# 4-bit on the CPU then uses its pure-PyTorch path (docs/distributed.md).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def __getattr__(name):   # lazy: `import swag_lora` stays light (no torch/transformers until asked)
    if name == "SwagPosterior":
        from swag_lora.posteriors.swag import SwagPosterior
        return SwagPosterior
    if name == "SwagCollector":
        from swag_lora.train.collector import SwagCollector
        return SwagCollector
    if name == "SwagCallback":
        from swag_lora.train.callback import SwagCallback
        return SwagCallback
    raise AttributeError(f"module 'swag_lora' has no attribute {name!r}")
