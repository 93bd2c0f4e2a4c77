"""Training: optimizers and schedule, the training loop, evaluation."""
