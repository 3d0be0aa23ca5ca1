"""The ground layer: atomic files and digests, image decoding, checkpoints, device choice.

It imports nothing of ``stylers``, ``recsys``, ``evaluation`` or ``stylerec``; they all
build on it.
"""
