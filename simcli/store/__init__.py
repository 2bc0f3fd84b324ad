"""The download store: the cache directory and the offline switch, sha256 records beside cached files, resumable
size-checked downloads (cache.py, download.py), and the Hugging Face Hub cache and its snapshots (hub.py).

A leaf of the house: every layer may import it; it imports only the leaves (`simcli.errors`, `simcli.rundir`,
the package root). It knows no catalog: which files there are, their URLs and sizes and where they go in the
cache are the callers' (simcli.teachers.edm_files, simcli.eval.references, the eval backends).
"""
