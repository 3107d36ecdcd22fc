"""Measurements on one network: gradients, Jacobians and their spectra (exact and
matrix-free), Lyapunov exponents, Hessian sharpness, isometry, normalisation and residual
stacks, forward statistics, and the probes that sweeps vmap.
"""
