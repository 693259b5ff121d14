"""Masked-language-model pretraining into a model folder train.py fine-tunes.
May import core, data, model and loop; never lib.finetune.
"""
