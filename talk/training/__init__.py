"""Training: the one loop (Accelerate, EMA, resumable checkpoints) every training stage runs."""
