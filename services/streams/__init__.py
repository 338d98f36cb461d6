"""Live audio streams: chunks in, sliding windows captioned as they close."""
