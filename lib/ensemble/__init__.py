"""Combining finished runs: members, pooling, stacking, calibration, prior correction, and training
the members. May import every package below it, lib.finetune included.
"""
