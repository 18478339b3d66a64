"""Training, evaluation, checkpoints, logging and the reproduction runner."""
