"""The LAION-CLAP audio front end: 48 kHz mono in [-1, 1], quantised through int16, fitted to 10 s windows; and the
constant STFT and mel tensors, built in numpy exactly as the reference builds them (torchlibrosa over librosa).
"""

import numpy as np

SAMPLE_RATE = 48000
WINDOW_SECONDS = 10
WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS  # 480000: the model sees exactly this many samples
N_FFT = 1024  # STFT frame, periodic Hann window of the same length
HOP_LENGTH = 480  # 10 ms
N_FRAMES = 1 + WINDOW_SAMPLES // HOP_LENGTH  # 1001: centred (reflect-padded) frames of one window
FMIN, FMAX = 50.0, 14000.0  # mel bank edges in Hz
INT16_SCALE = 32767.0  # the reference scales by 32767, not 32768, both ways


def quantize(audio: np.ndarray) -> np.ndarray:
    """Float32 samples -> the same through int16, as the reference does before embedding (its use_tensor=False)."""
    x = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    # The product stays float32 (as the reference's) before astype truncates toward zero; the division is float64.
    return ((x * np.float32(INT16_SCALE)).astype(np.int16) / INT16_SCALE).astype(np.float32)


def repeat_pad(audio: np.ndarray) -> np.ndarray:
    """(n,) with 0 < n <= 480000 -> (480000,): the clip repeated whole 480000 // n times, then zeros to 10 s."""
    n = len(audio)
    if not 0 < n <= WINDOW_SAMPLES:
        raise ValueError(f"repeat_pad takes 1 to {WINDOW_SAMPLES} samples, not {n}")
    # The reference writes int(480000 / n): equal to // for every n up to 480000 (the quotient cannot round up).
    tiled = np.tile(np.asarray(audio, dtype=np.float32), WINDOW_SAMPLES // n)
    return np.pad(tiled, (0, WINDOW_SAMPLES - len(tiled)))


def prepare(audio: np.ndarray) -> np.ndarray:
    """A clip of at most 10 s -> the (480000,) float32 window the model embeds: quantised, then repeat-padded."""
    return repeat_pad(quantize(audio))


def windows(audio: np.ndarray) -> np.ndarray:
    """Any clip -> (W, 480000) float32 windows: one repeat-padded window up to 10 s; beyond, whole 10 s windows from
    the start, the last one ending at the clip's end (overlapping its neighbour) so no window holds padding.

    The reference crops a longer clip at a random offset; fixed windows make embedding deterministic, and the
    caller decides how to combine their embeddings.
    """
    x = quantize(audio)
    if len(x) <= WINDOW_SAMPLES:
        return repeat_pad(x)[None]
    starts = list(range(0, len(x) - WINDOW_SAMPLES, WINDOW_SAMPLES)) + [len(x) - WINDOW_SAMPLES]
    return np.stack([x[s : s + WINDOW_SAMPLES] for s in starts])


def hann(n: int) -> np.ndarray:
    """Periodic Hann window (scipy's get_window('hann', n, fftbins=True)), float64."""
    # scipy's general_cosine: 0.5 + 0.5 cos over n + 1 points from -pi to pi, the last point dropped.
    return (0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, n + 1)))[:n]


def stft_kernels(n_fft: int = N_FFT) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary STFT conv kernels, each (n_fft // 2 + 1, 1, n_fft) float32: windowed DFT rows.

    Built as the reference does, the DFT matrix as numpy's complex power omega ** (n * k): this is bitwise equal to
    the reference's kernels, where cos/sin of 2 pi (n k mod N) / N differ from them by one float32 ulp in ~1% of
    the entries.
    """
    k = n_fft // 2 + 1
    n = np.arange(n_fft)
    dft = np.power(np.exp(-2j * np.pi / n_fft), n[:, None] * n[None, :k])  # (n_fft, k)
    windowed = (dft * hann(n_fft)[:, None]).T  # (k, n_fft)
    return windowed.real.astype(np.float32)[:, None, :], windowed.imag.astype(np.float32)[:, None, :]


# Slaney's mel scale, as librosa writes it: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
MEL_HZ = 200.0 / 3  # Hz per mel on the linear part
LOG_MEL = 1000.0 / MEL_HZ  # 15: where the log part starts, computed as librosa does for identical rounding
LOG_STEP = np.log(6.4) / 27.0  # log-Hz per mel on the log part


def hz_to_mel(hz: float) -> float:
    """Slaney mel of a frequency in Hz."""
    return LOG_MEL + np.log(hz / 1000.0) / LOG_STEP if hz >= 1000.0 else hz / MEL_HZ


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of hz_to_mel, on an array."""
    return np.where(mel >= LOG_MEL, 1000.0 * np.exp(LOG_STEP * (mel - LOG_MEL)), MEL_HZ * mel)


def mel_filters(n_mels: int = 64, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-normalised mel filter bank (librosa.filters.mel, htk=False, norm='slaney'), (n_fft // 2 + 1, n_mels)."""
    edges = mel_to_hz(np.linspace(hz_to_mel(FMIN), hz_to_mel(FMAX), n_mels + 2))  # (n_mels + 2,) Hz
    ramps = edges[:, None] - np.fft.rfftfreq(n_fft, 1.0 / sr)[None, :]  # (n_mels + 2, n_fft // 2 + 1)
    width = np.diff(edges)
    rising, falling = -ramps[:-2] / width[:-1, None], ramps[2:] / width[1:, None]
    # librosa stores the triangles in float32 first and scales them after: two roundings, kept for exact equality.
    triangles = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    area = 2.0 / (edges[2:] - edges[:-2])  # Slaney norm: each filter integrates to the same area
    return (triangles * area[:, None]).astype(np.float32).T
