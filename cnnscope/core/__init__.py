"""Analyses and training over an nn.Module and tensors: no SPECs, run folders, files or Click."""
