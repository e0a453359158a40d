"""Training: the one loop, AdamW, the pretraining and fine-tuning jobs, metrics, atomic artifacts."""
