"""Prediction: weight draws -> probabilities (draws.py), the evaluation methods (methods.py), temperature scaling
(temperature.py), and one evaluation's plan and run (evaluation.py)."""
from swag_lora.predict.draws import draw_probs, predict_probs

__all__ = ["draw_probs", "predict_probs"]
