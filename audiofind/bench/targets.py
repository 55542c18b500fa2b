"""The figures `bench speed` measures, and the goals it marks them against: the goals of issues 10 and 13 (and those after), per
device and CPU, each a bound on a figure or on its ratio to the reference measured in the same run."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One measured figure: what (label), how much (value, in unit), and the reference's in the same run."""

    key: str
    label: str
    value: float
    unit: str  # "s", "x real time", "%", "bytes", "clips/s", "rel"
    reference: float | None = None  # the reference AudioCLIP's figure, measured beside ours


@dataclass(frozen=True)
class Target:
    """A goal: `ratio` bounds value / reference (measured in the same run), `at_most` and `at_least` the value."""

    text: str
    ratio: float | None = None
    at_most: float | None = None
    at_least: float | None = None

    def met(self, value: float, reference: float | None) -> bool:
        """Whether a figure reaches this goal."""
        if self.ratio is not None:
            return reference is not None and value <= self.ratio * reference
        if self.at_most is not None:
            return value <= self.at_most
        return self.at_least is None or value >= self.at_least


def targets(device: str, extensions: list[str]) -> list[tuple[str, Target]]:
    """The goals of issues 10 and 13 for figure keys (shell patterns) on this device and CPU."""
    if device.startswith("cuda"):
        return [
            ("long_*_end_to_end_x", Target("≥ 2000x", at_least=2000.0)),
            ("*_share_of_decode", Target("≥ 70%", at_least=0.7)),
            ("text_*_s", Target("≤ 0.33x ref", ratio=0.33)),
        ]
    avx512 = "AVX-512" in extensions
    return [
        ("audio_5s_s", Target("≤ 0.67x ref", ratio=0.67)),
        (
            "audio_20s_s",
            Target("≤ 0.5x ref (AVX-512)", ratio=0.5) if avx512 else Target("≤ 0.7x ref (AVX2)", ratio=0.7),
        ),
        ("audio_20s_bf16_s", Target("≤ 0.3x ref (bf16)", ratio=0.3)),
        ("text_*_s", Target("≤ 0.33x ref", ratio=0.33)),
        ("*_share_of_model", Target("≥ 80%", at_least=0.8)),
        ("reindex_10k_s", Target("< 5 s", at_most=5.0)),
        ("query_*_s", Target("< 50 ms", at_most=0.05)),
        ("hybrid_adds_*_s", Target("< 10 ms", at_most=0.01)),
        ("cold_search_100k_s", Target("< 1.0 s", at_most=1.0)),
        ("serve_search_100k_s", Target("< 100 ms", at_most=0.1)),
        ("serve_page_50_s", Target("< 1 s", at_most=1.0)),
        ("serve_first_byte_transcoded_s", Target("< 200 ms", at_most=0.2)),
        ("group_100k_prints_s", Target("< 1 min", at_most=60.0)),
        ("pg_query_1000k_s", Target("< 50 ms", at_most=0.05)),
        ("pg_load_segments_per_s_*", Target("≥ 5,000/s", at_least=5000.0)),
        ("ray_overhead", Target("< 20% (2 CPUs)", at_most=0.2)),
    ]
