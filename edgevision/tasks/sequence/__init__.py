"""Sequence task: 1-D networks on sensor windows [B, C, T] (``resnet1d``,
``residual_mobilenet1d``, ``fusionactnet``), sensor data sets (UCI HAR, MotionSense, UEA
BasicMotions) and the training task. Importing this package registers the models."""

from edgevision.tasks.sequence import fusion, models  # noqa: F401  (registration)
