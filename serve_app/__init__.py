"""A multiplexed computer-vision model server on Ray Serve."""

__version__ = "0.1.0"
