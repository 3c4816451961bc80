"""Launchers: the training CLI, the train loop, mesh, optimizers and checkpoints."""
