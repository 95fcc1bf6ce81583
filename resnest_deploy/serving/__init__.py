"""Serving: Triton model repositories for any artifact, and a real Triton server that serves them."""
