"""Training: the one loop, AdamW, run folders and checkpoints, the pretraining and fine-tuning jobs, metrics."""
