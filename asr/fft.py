"""FFT lengths: the shared helper of every FFT convolution in the package (the model's positional
convolution, the synthetic corpus' reverberation)."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=512)
def fast_fft_length(n: int) -> int:
    """The smallest integer >= n whose only prime factors are 2, 3 and 5 (fast for cuFFT/pocketfft)."""
    best = 1 << max(n - 1, 0).bit_length()  # a power of two always qualifies
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            candidate = p35
            while candidate < n:
                candidate *= 2
            best = min(best, candidate)
            p35 *= 3
        p5 *= 5
    return best
