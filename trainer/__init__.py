"""Training: the model, the synthetic tasks, checkpoint schedules and the training loop."""
