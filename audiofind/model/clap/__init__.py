"""LAION-CLAP (HTSAT-tiny audio tower, RoBERTa-base text tower, unfused), written from its definition.

config (sizes), frontend (48 kHz windows, STFT and mel constants), htsat and roberta (the towers), model (CLAP,
loading reference state dicts), bpe (the tokenizer) and textnp (the text tower in numpy). Nothing is imported here:
bpe and textnp must stay importable without torch, for a cold search.
"""
