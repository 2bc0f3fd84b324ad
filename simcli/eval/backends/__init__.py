"""Feature-extractor backends behind `simcli.eval.features.get_extractor`: torch-fidelity and clean-fid.

Each module imports its library lazily (inside functions), so simcli works without the `eval` extra until a
backend is asked for.
"""
