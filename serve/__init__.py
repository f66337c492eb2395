"""Real-time speech recognition on Ray Serve."""
