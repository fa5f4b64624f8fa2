"""swag-lora: SWAG posteriors over LoRA weights, with Bayesian model averages and honest metrics."""
__version__ = "0.1.0"
