"""The README and the CLI document each other: commands have help, CI runs the README's test command."""

import re
from pathlib import Path

import typer

from audiofind.cli import app

ROOT = Path(__file__).parent.parent


def _commands(group: object, prefix: str = "") -> list[tuple[str, object]]:
    """Every command and sub-command of a (click-like) group, by its full name."""
    out: list[tuple[str, object]] = []
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        out.append((f"{prefix}{name}", cmd))
        if hasattr(cmd, "commands"):
            out += _commands(cmd, f"{prefix}{name} ")
    return out


def test_every_command_has_help() -> None:
    commands = _commands(typer.main.get_command(app))
    assert len(commands) >= 12
    missing = [name for name, cmd in commands if not (getattr(cmd, "help", "") or "").strip()]
    assert not missing, f"commands without a docstring: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert len(blocks) >= 2, "the README opens with two set-up commands"
    test_command = blocks[1].strip()
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_argument_errors_are_one_line() -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    for args in (["search", "rain", "-k", "0"], ["index"], ["--nope"], ["weights", "download", "a", "b"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], (args, result.stderr)
    assert runner.invoke(app, ["--version"]).stdout.startswith("audiofind ")


def test_public_api_loads_lazily() -> None:
    import subprocess
    import sys

    code = "import sys, audiofind, audiofind.cli; assert 'torch' not in sys.modules, 'import audiofind pulled in torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
    import audiofind

    assert callable(audiofind.load_model) and callable(audiofind.open_index) and callable(audiofind.search_text)
    assert {m.name for m in audiofind.available_models()} >= {"audioclip-full", "audioclip-partial"}


def test_help_shows_what_to_type_not_type_names() -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    for name, _ in _commands(typer.main.get_command(app)):
        result = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (name, result.output)
        assert not re.search(r"<(bool|str|int|float|path|Path|list\[\w+\])>", result.stdout), (name, result.stdout)
    search = runner.invoke(app, ["search", "--help"], env={"COLUMNS": "200"}).stdout
    assert "-k      N" in search or " N " in search
    assert [line for line in search.splitlines() if "--json" in line][0].split("--json")[1].split()[
        0
    ] == "Machine-readable"
