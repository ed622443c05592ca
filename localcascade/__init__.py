"""localcascade: run Nemotron-Cascade-2-30B-A3B on your own machine at the best quality it holds."""

__version__ = "0.1.0"
