"""Texts and labels: tables, preprocessing, augmentation, token ids and batches, MLM packing and
masking, back translation. May import lib.core.
"""
