"""Helpers for the breast-imaging transfer-learning course.

One module per stage of the data flow (see README.md):
datasets -> splits -> preprocessing -> augmentation -> models -> training
-> evaluation (with ``explain``: CAM, Grad-CAM and a localisation score) -> reporting, with the
runner (``python -m helpers``) on top.

``import helpers`` does not import Keras: the modules that use it import ``helpers.backend``
first, which imports Keras quietly (see there), so that commands needing no model start at once.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# TensorFlow's C++ messages below errors stay silent, whoever imports it first (see helpers.backend).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
