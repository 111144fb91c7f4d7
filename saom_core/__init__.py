"""SAOM core: simulator data, model, fine-tuning, inference and evaluation (no ROS imports)."""

__version__ = "0.1.0"
