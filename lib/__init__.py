"""Machinery behind the entry scripts, one package per concern, in layers.

    core -> data -> model -> loop -> finetune | pretrain -> ensemble | search

A package imports only from the packages to its left; finetune and pretrain are siblings that
share what they both need through loop and never import each other.
"""
