"""Foundation-model workflows: frozen features computed once and cached, probes fitted on them, CLIP
zero-shot."""
