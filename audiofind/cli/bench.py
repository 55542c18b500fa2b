"""`audiofind bench`: the benchmark commands (clotho here; speed in cli/speed.py)."""

from audiofind.cli.common import app, sub_app

bench_app = sub_app("Benchmarks: retrieval quality (clotho) and speed.")
app.add_typer(bench_app, name="bench")
