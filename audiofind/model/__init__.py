"""The models: AudioCLIP's towers written from ../shared/spec, their encoder, tokenizer, numpy text tower and weights.

Import the submodule you need (`audiofind.model.config`, `.encoder`, ...): this package imports nothing, so the
torch-free parts (the numpy text tower, the tokenizer, the weights registry) load without torch.
"""
