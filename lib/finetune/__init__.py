"""One fine-tuning run: config, plan, splits, preparation, the loop, selection, the run folder and
predictions from it. May import core, data, model and loop; never lib.pretrain.
"""
