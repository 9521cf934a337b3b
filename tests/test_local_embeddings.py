"""The embedded WordLlama vectors load from the installed wheel with the network cut off, and mean what
they should (paraphrases closer than unrelated texts)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from backend.llm.local_embeddings import LocalEmbedder

NO_NETWORK = textwrap.dedent("""
    import socket
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
    from backend.llm.local_embeddings import LocalEmbedder
    vectors = LocalEmbedder().embed(["card arrived", "where is my card"])
    print(vectors.shape)
""")


def test_loads_and_embeds_with_no_network_at_all() -> None:
    done = subprocess.run([sys.executable, "-c", NO_NETWORK], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "HF_HUB_OFFLINE": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(2, 256)"


def test_vectors_are_unit_rows_and_paraphrases_are_closest() -> None:
    texts = ["I lost my credit card", "my card has gone missing", "what is the exchange rate for euros", ""]
    vectors = LocalEmbedder().embed(texts)
    assert vectors.shape == (4, 256) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    assert LocalEmbedder().embed([]).shape == (0, 256)
