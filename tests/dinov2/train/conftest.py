import os
import sys

# Make tests/dinov2/train/batches.py importable as `batches` from the training and FSDP tests.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
