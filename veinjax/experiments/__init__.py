"""Experiments built on the library: the paper reproduction (`compare`), its figures (`plots`) and the
choice between training recipes on the validation split (`recipes`).

Run the comparison with `python -m veinjax.experiments.compare --config=configs/default.py --workdir=DIR`;
compare recipes with `python -m veinjax.experiments.recipes --workdirs=REFERENCE_DIR,CANDIDATE_DIR,...`.
"""
