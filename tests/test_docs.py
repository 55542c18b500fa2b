"""The README and the CLI document each other: commands have help, CI runs the README's test command."""

import re
from pathlib import Path

import click
import typer

from audiofind.cli import app

ROOT = Path(__file__).parent.parent


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((f"{prefix}{name}", cmd))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, f"{prefix}{name} ")
    return out


def test_every_command_has_help() -> None:
    commands = _commands(typer.main.get_command(app))  # type: ignore[arg-type]
    assert commands
    missing = [name for name, cmd in commands if not (cmd.help or "").strip()]
    assert not missing, f"commands without a docstring: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert len(blocks) >= 2, "the README opens with two set-up commands"
    test_command = blocks[1].strip()
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
