"""swag-lora: SWAG posteriors over LoRA weights, with Bayesian model averages and honest metrics."""
import logging

__version__ = "0.1.0"

# bitsandbytes (imported by peft when installed) warns at import that an optional CPU kernel package is missing;
# 4-bit on the CPU then uses its pure-PyTorch path (README "Multi-GPU, precision, pre-emption").
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
