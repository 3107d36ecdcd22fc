"""Sweeps over seeds and init scales: the engine (:func:`gradjax.sweep`), its checksummed
store, the cost model that sizes tiles, devices and multi-process runs.
"""
