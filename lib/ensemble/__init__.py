"""Combining finished runs: members, pooling, stacking, calibration, prior correction, model soups
(averaged weights), and training the members. May import every package below it, lib.finetune included.
"""
