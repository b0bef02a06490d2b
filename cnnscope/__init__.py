"""cnnscope: train compact CNNs, then inspect how they see."""

__version__ = "0.1.0"
