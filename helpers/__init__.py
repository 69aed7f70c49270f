"""Helpers for the breast-imaging transfer-learning course.

One module per stage of the data flow (see README.md):
datasets -> splits -> preprocessing -> augmentation -> models -> training
-> evaluation -> reporting, with the runner (``python -m helpers``) on top.
"""

__version__ = "0.1.0"
