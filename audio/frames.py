"""The Mimi frame every part of the loop moves in: 80 ms of 24 kHz mono audio."""

SAMPLE_RATE_HZ = 24_000
FRAME_SAMPLES = 1920  # 80 ms at 24 kHz, one Mimi frame
FRAME_MS = 80
