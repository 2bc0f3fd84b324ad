"""The run directory and other files simcli writes: every file name in it (layout), atomic writes, snapshots and
states, the metrics log, the lock.

A leaf of the house: every layer may import it; it imports only `simcli.errors`.
"""
