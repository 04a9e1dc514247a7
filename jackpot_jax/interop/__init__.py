"""Interoperability: torchvision checkpoints in, jackpots out to PyTorch (`torch_convert`; its
command line is `cli.main`, run as ``tools/convert_torch_weights.py``). torch is imported only
when these run."""
