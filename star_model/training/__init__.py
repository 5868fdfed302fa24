"""What fine-tuning needs from the model package: the losses (v-loss + DF loss), the degradations that
make training pairs, and what trains in a STAR denoiser and how the rest is frozen."""
