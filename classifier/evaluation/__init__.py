"""Evaluation and reporting: metrics, the val/test passes with temperature scaling and TTA, report
files and figures, the model card, Grad-CAM."""
