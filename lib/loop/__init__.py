"""What every training loop shares: the loop skeleton and its extension points, the gradient step,
optimizer and schedules, loop state, stop requests, weight averaging, the work-folder life cycle.
May import lib.core, lib.data and lib.model.
"""
