"""Spec errors and help come before torch: a mistyped option must not cost the seconds torch takes to import.

One fresh interpreter runs every case through the real entry point (simcli.cli.app.main) and records, after
each, its exit code and whether torch has been imported; torch never leaves sys.modules once in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CASES = {
    "unknown key": (["distill", "--teacher", "gmm-ring8", "--set", "loss.nope=1"], 2),
    "bad value": (["distill", "--teacher", "gmm-ring8", "--set", "loss.method=bogus"], 2),
    "unknown teacher": (["distill", "--teacher", "no-such-teacher", "--out", "x"], 2),
    "kimg with steps": (["distill", "--teacher", "gmm-ring8", "--kimg", "1", "--steps", "5"], 2),
    "threads and a bad key": (["distill", "--teacher", "gmm-ring8", "--threads", "1", "--set", "nope=1"], 2),
    "bad preset": (["distill", "--teacher", "gmm-ring8", "--preset", "nope"], 2),
    "no run directory": (["distill", "--teacher", "gmm-ring8"], 2),
    "eval without input": (["eval", "--fid"], 2),
    "sample without source": (["sample", "--out", "x.npz"], 2),
    "root help": (["--help"], 0),
    "distill help": (["distill", "--help"], 0),
    "sample help": (["sample", "--help"], 0),
    "eval help": (["eval", "--help"], 0),
    "compare help": (["compare", "--help"], 0),
}

SCRIPT = """
import json, sys, time
from simcli.cli.app import main
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    sys.argv = ["simcli", *argv]
    start = time.perf_counter()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    results[name] = {"code": code, "torch": "torch" in sys.modules, "s": time.perf_counter() - start}
print("RESULTS " + json.dumps(results), file=sys.stderr)
"""


def test_spec_errors_and_help_do_not_import_torch(tmp_path):
    argvs = {name: argv for name, (argv, _) in CASES.items()}
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("SIMCLI_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(argvs)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("RESULTS ")]
    assert lines, proc.stderr[-2000:]
    results = json.loads(lines[-1].removeprefix("RESULTS "))
    assert "Traceback" not in proc.stderr
    for name, (_, code) in CASES.items():
        assert results[name]["code"] == code, (name, results[name], proc.stderr[-2000:])
    imported = [name for name, r in results.items() if r["torch"]]
    assert imported == [], f"torch was imported by: {imported}"
    assert "unknown spec key 'loss.nope'" in proc.stderr
    assert "--kimg and --steps both given" in proc.stderr
