"""Posteriors over the trained (LoRA + head) tensors of a model.  Each is an object with a small API, separate from
the training loop: `SwagPosterior` (swag.py: collect / sample / save / load), `LoraLaplace` (laplace.py, on
laplace-torch: fit / predictive / save / load) and `IvonPosterior` (ivon.py: read off ivon-opt's optimizer; sample /
save / load).  Only SWAG is imported here: the others import their optional back-ends."""
from swag_lora.posteriors.swag import SwagPosterior

__all__ = ["SwagPosterior"]
