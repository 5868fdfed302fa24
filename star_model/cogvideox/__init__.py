"""The CogVideoX-based STAR (the official release's second backbone): a diffusers CogVideoX DiT with the
LR latent concatenated on channels, LIEM gates in every block and the LoRA merged, sampled with
CogVideoX's own v-prediction VP-SDE DPM-Solver++(2M) from pure noise."""
