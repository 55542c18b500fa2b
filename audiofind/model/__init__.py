"""The AudioCLIP audio and text towers, written from ../shared/spec (the contract)."""

from audiofind.model.audio import AudioEncoder
from audiofind.model.audioclip import AudioCLIP, is_optional_key
from audiofind.model.config import TINY, AudioCLIPConfig, AudioConfig, TextConfig
from audiofind.model.text import TextEncoder

__all__ = ["TINY", "AudioCLIP", "AudioCLIPConfig", "AudioConfig", "AudioEncoder", "TextConfig", "TextEncoder", "is_optional_key"]
