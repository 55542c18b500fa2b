"""What one sync did, as it goes (Event) and in sum (Report): index prints them, watch streams them, --json dumps them."""

from dataclasses import asdict, dataclass, field


@dataclass
class Report:
    """What one sync did; the JSON summary of `index` is this plus timing.

    seen = embedded + reused + moved + skipped + failed + changing, unless the run was stopped.
    """

    seen: int = 0  # audio files found under the available roots
    embedded: int = 0
    skipped: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0
    reused: int = 0  # new paths whose content was already indexed (copies): no embedding needed
    changing: int = 0  # changed while being read (still being written): indexed once they settle
    kept: int = 0  # gone from disk but kept: under an unavailable root, or too many at once (see --prune)
    unavailable: list[str] = field(default_factory=list)  # roots missing, empty or unreadable: their files kept
    # New folders holding a missing root's files (it moved?): {"old", "new", "files"}; nothing indexed under new
    relocated: list[dict] = field(default_factory=list)
    # Audio files under the roots, in no index, that the run's extensions left out: extension -> count
    left_out: dict[str, int] = field(default_factory=dict)
    segments: int = 0
    audio_seconds: float = 0.0  # of the files this run embedded (copies too), summed as `status` sums it
    truncated: int = 0  # of those, files that hold less audio than their header declares (indexed with a warning)
    windows_kept: int = 0  # of long recordings this run did not finish (stopped): committed, continued next time
    seconds_kept: float = 0.0  # the audio those windows cover
    seconds: float = 0.0
    device: str = ""
    model: str = ""
    stopped: bool = False

    def as_dict(self) -> dict:
        """Plain dict for JSON output."""
        return asdict(self)


@dataclass(frozen=True)
class Event:
    """One change made to the index, reported as it happens (index prints failures, watch prints all)."""

    event: str  # embedded | moved | removed | failed | reused | changing | unavailable | kept | relocated
    path: str
    source: str | None = None  # the old path of a move; the missing root a relocated folder matches
    reason: str | None = None
    segments: int = 0
    duration: float = 0.0
    count: int = 0  # unavailable, kept: how many indexed files were kept; relocated: how many matched
