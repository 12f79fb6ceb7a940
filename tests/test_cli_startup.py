"""The CLI starts without the heavy libraries a command does not use: importing
`kryonix_dagster.cli` (what every invocation, `--help` included, pays) loads no Dagster, boto3,
pika, requests, pydantic, pandas or tabulate module. Logic, not timing: a fresh interpreter's
`sys.modules` is inspected."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kryonix_dagster

CODE_ROOT = Path(kryonix_dagster.__file__).resolve().parents[1]  # the code under test comes first
HEAVY = ("dagster", "boto3", "botocore", "pika", "requests", "pydantic", "pandas", "tabulate")


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=CODE_ROOT).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_cli_import_loads_no_heavy_library():
    loaded = loaded_after("import kryonix_dagster.cli")
    assert "click" in loaded  # the probe works
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_help_loads_no_heavy_library():
    loaded = loaded_after("from kryonix_dagster.cli import main\n"
                          "try:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
