"""Preprocessing: fetch, decode, split channels, resample to 16 kHz, cut speech-aware windows of
at most 30 s, and measure the call's acoustics. Pure functions in :mod:`.pipeline` and its
modules; :mod:`.deployment` is the Serve deployment around them."""
