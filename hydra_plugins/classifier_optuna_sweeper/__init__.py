"""A Hydra sweeper on Optuna (conf/hydra/sweeper/classifier_optuna.yaml, hparams_search=optuna).

Hydra's own hydra-optuna-sweeper pins optuna<3, whose database storage fails on SQLAlchemy 2, so a
study could not be stored and resumed; this one keeps its config schema (sampler, direction,
storage, study_name, n_trials, n_jobs, params with choice/range/interval/tag(log, ...)) on
today's Optuna. Hydra imports every module here when it starts: Optuna is imported only by a sweep.
"""
