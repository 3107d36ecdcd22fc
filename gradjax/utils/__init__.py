"""Shared helpers that know nothing of gradjax's science: errors, files, numerics, fits,
pytree results, tree paths, threads, LAPACK calls and plotting.
"""
