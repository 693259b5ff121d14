"""Backbones: tokenizers, scratch presets, classifiers and the masked-language model.
May import lib.core and lib.data.
"""
