"""Plumbing every package uses: errors, the CLI wrapper, options, progress bars, metrics logging,
the disk cache, the torchrun context, atomic files, device and precision, the optional W&B sink. Imports nothing else from lib.
"""
