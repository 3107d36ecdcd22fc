"""Diagnosis of a user's model: measure (:mod:`~gradjax.diagnosis.measurement`), judge and
report (:mod:`~gradjax.diagnosis.report`), advise (:mod:`~gradjax.diagnosis.advice`), draw
(:mod:`~gradjax.diagnosis.report_plot`); :func:`gradjax.diagnose` runs the pipeline.
"""
