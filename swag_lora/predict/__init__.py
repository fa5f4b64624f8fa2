"""Prediction: weight draws -> probabilities (draws.py: `score` over an iterable of draws), the evaluation methods
(methods.py), temperature scaling (temperature.py), and one evaluation's plan and run (evaluation.py)."""
from swag_lora.predict.draws import AsIs, DropoutPass, SwagSample, Written, predict_probs, score

__all__ = ["AsIs", "DropoutPass", "SwagSample", "Written", "predict_probs", "score"]
