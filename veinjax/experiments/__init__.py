"""Experiments built on the library: the paper reproduction (`compare`) and its figures (`plots`).

Run the comparison with `python -m veinjax.experiments.compare --config=configs/default.py --workdir=DIR`.
"""
