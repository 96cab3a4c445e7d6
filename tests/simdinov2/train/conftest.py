import os
import sys

# Make tests/dinov2/train/batches.py (deterministic tiny collated batches) importable as `batches`.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "dinov2", "train"))
