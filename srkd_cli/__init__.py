"""srkd: super-resolution with knowledge distillation."""
__version__ = "0.1.0"
