"""gradjax's own networks: ``NetConfig``, initialisers, the pure forward pass and its
parameter layout.
"""
