"""`audiofind embed`: print embeddings of audio files and captions."""
