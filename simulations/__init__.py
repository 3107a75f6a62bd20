"""Simulations that check the store keeps its promises: a deterministic simulator and real-process chaos runs.

``python -m simulations run`` runs seeded scenarios in the simulator,
``python -m simulations replay --seed N`` replays one with a trace, and
``python -m simulations chaos`` runs real ``crdtstore serve`` processes under
faults. Both record a history (``simulations.history``) that the same
checkers (``simulations.checkers``) judge.
"""
