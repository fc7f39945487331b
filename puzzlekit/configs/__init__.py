"""Model configs shipped with puzzlekit (Apache-2.0 Nemotron-NAS configs of Llama-Nemotron Super-49B and Ultra-253B)."""
