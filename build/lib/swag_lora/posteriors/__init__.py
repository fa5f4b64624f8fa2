"""Posteriors over the trained (LoRA + head) tensors of a model.  Each is an object with a small API, separate from
the training loop: `SwagPosterior` (collect / sample / save / load)."""
from swag_lora.posteriors.swag import SwagPosterior

__all__ = ["SwagPosterior"]
