"""
The benchmarks of LiPS: scripts that print figures, and ratios against peers measured in
the same invocation (C{python -m bench.NAME}; see C{bench/README.md}).  They share
L{bench._common}, never each other, and start real servers with L{lips.testing}.
"""
