"""Helpers for the breast-imaging transfer-learning course.

One module per stage of the data flow (see README.md):
datasets -> splits -> preprocessing -> augmentation -> models -> training
-> evaluation -> reporting, with the runner (``python -m helpers``) on top.
"""

import os

__version__ = "0.1.0"

# TensorFlow's C++ start-up messages (CUDA probing, oneDNN notices) carry timestamps and process
# ids; they would land in notebook outputs and break nbval's comparison. Errors still raise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
