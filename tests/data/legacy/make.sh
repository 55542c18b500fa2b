#!/usr/bin/env bash
# How index-7caaa9c.db was made: by audiofind at commit 7caaa9c (the last release before the store became a
# protocol), so tests/test_legacy_index.py can prove that every later audiofind still opens and searches it.
# Run from the repository root at that commit, in its virtual environment; the files live under a fixed /tmp path
# so the stored paths are the same on every machine.
set -euo pipefail
export AUDIOFIND_HOME=$(mktemp -d) AUDIOFIND_DB=/tmp/audiofind-legacy/index.db
rm -rf /tmp/audiofind-legacy && mkdir -p /tmp/audiofind-legacy/library/doors /tmp/audiofind-legacy/library/rain
python - <<'PY'
import sys; sys.path[:0] = ["tests"]
from pathlib import Path
from audiogen import chirp, noise, sine, write_audio, write_not_audio
from modelkit import register_tiny
lib = Path("/tmp/audiofind-legacy/library")
register_tiny("tiny")
write_audio(lib / "doors" / "door_creak_slow_01.wav", chirp(300, 900, 1.5))
write_audio(lib / "doors" / "Door Slam Old 02.flac", noise(0.8, seed=3))
write_audio(lib / "rain" / "rain on tin roof.wav", noise(25.0, seed=7, amp=0.2))  # long: several windows
write_audio(lib / "rain" / "copy of rain.wav", noise(25.0, seed=7, amp=0.2))  # a copy: shares vectors
write_audio(lib / "kick_808_soft.mp3", sine(55, 0.6))
write_not_audio(lib / "broken.wav")
PY
audiofind index /tmp/audiofind-legacy/library -w tiny
cp /tmp/audiofind-legacy/index.db tests/data/legacy/index-7caaa9c.db
audiofind status --json > tests/data/legacy/status.json
audiofind search "door creak" -w tiny -k 5 --mode audio --json > tests/data/legacy/search-audio.json
audiofind search "door creak" -w tiny -k 5 --mode text --json > tests/data/legacy/search-text.json
