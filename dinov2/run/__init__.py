"""Cluster launch: submitit jobs for training and evaluation, and graceful preemption."""
