"""Optimisation: the optimizer's parameter groups and the learning-rate schedules."""
