"""Training with Optax mitigation chains (:func:`gradjax.train`): configuration, the loop and
its results, output folders, statistics over seeds, monitoring and data.
"""
