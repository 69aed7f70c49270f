"""Helpers for the breast-imaging transfer-learning course.

One module per stage of the data flow (see README.md):
datasets -> splits -> preprocessing -> augmentation -> models -> training
-> evaluation -> reporting, with the runner (``python -m helpers``) on top.
"""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0"

# TensorFlow logs C++ start-up notices (oneDNN, CUDA probing) with timestamps and process ids
# while it is imported, before its log level applies. In a notebook they would land in a cell's
# output at random and break nbval's comparison; so Keras is imported here once with the process'
# stderr briefly sent to /dev/null, and later C++ messages below errors are silenced.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _import_keras_quietly() -> None:
    if "keras" in sys.modules:
        return
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to silence
        import keras  # noqa: F401
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_keras_quietly()
