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


def test_tier_assets_are_siblings_feeding_the_restore_point():
    from kryonix_dagster.definitions import defs
    from kryonix_dagster.engine.tiers import TIERS

    graph = defs.resolve_asset_graph()
    tiers = {t.asset_key for t in TIERS}
    assert len(tiers) == 6
    for key in graph.get_all_asset_keys():
        if key.to_user_string() in tiers:
            assert not graph.get(key).parent_keys, f"{key.to_user_string()} is drawn as derived from another asset"
    restore_point = next(k for k in graph.get_all_asset_keys() if k.to_user_string() == "restore_point")
    assert {k.to_user_string() for k in graph.get(restore_point).parent_keys} == tiers


def test_run_log_progress_never_says_zero_bytes():
    from kryonix_dagster.backup.assets import DagsterReporter

    lines: list[str] = []
    log = type("Log", (), {"info": lambda self, m: lines.append(m), "warning": lambda self, m: lines.append(m)})()
    reporter = DagsterReporter(log)
    reporter.progress("demo1 postgresql", 0, 4096)
    assert lines == []
    reporter.progress("demo1 postgresql", 2048, 4096)
    reporter.progress("demo1 postgresql", 4096, 4096)  # within 15 s of the last line: not repeated
    assert lines == ["demo1 postgresql: 2048 bytes of 4096"]


def test_cli_progress_lines_never_say_zero_bytes(capsys):
    from kryonix_dagster.progress import TerminalReporter

    reporter = TerminalReporter()
    reporter.tty = False  # as in a log file or CI: one line at most every 10 s
    reporter.progress("demo3 redis keys", 0, None)
    assert capsys.readouterr().err == ""
    reporter.progress("demo3 redis keys", 4096, None)
    assert capsys.readouterr().err == "demo3 redis keys: 4.0 KiB\n"
