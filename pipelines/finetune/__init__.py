"""The fine-tuning job: training pairs from HR videos (Ray Data), the step, the per-worker loop and its
checkpoints, and the Ray Train wiring (trainer.py)."""
