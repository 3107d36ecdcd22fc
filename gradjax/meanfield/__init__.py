"""Mean-field theory of deep networks: signal and gradient maps, fixed points, the critical
line, Gaussian expectations, and the activation table they are computed for.
"""
