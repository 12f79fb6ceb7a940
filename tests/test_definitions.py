"""The Dagster code location loads and validates; the engine never imports Dagster."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dagster_definitions_validate(test_env):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "All code locations passed validation" in result.stderr + result.stdout


def test_engine_and_cli_do_not_import_dagster():
    modules = sorted(
        "kryonix_dagster." + ".".join(p.relative_to(ROOT / "kryonix_dagster").with_suffix("").parts)
        for p in (ROOT / "kryonix_dagster" / "engine").rglob("*.py")
    )
    code = "import sys, importlib\n" + "".join(f"importlib.import_module({m.removesuffix('.__init__')!r})\n" for m in modules)
    code += "import kryonix_dagster.cli\nassert 'dagster' not in sys.modules, 'dagster imported'\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
