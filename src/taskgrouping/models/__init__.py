"""The shared-trunk multi-task model, its training and evaluation."""
