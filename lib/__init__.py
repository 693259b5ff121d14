"""Machinery behind train.py, predict.py, sweep.py and ensemble.py."""
