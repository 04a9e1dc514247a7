"""Interoperability: torchvision checkpoints in, jackpots out to PyTorch (`torch_convert`; the
command is ``tools/convert_torch_weights.py``). torch is imported only when these run."""
