"""Helpers that tests, simulations and benchmarks share.

``clock`` has no dependencies beyond the package; ``strategies`` needs the
``test`` extra (hypothesis) and is imported only by code that has it.
"""
