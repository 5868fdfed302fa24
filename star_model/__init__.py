"""STAR (arXiv 2501.02976) in PyTorch: the denoiser with the official checkpoint layout, and the
pieces that turn low-quality frames into restored frames. Knows nothing of Ray or buckets."""
