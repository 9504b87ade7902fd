from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

import tempfile

# Derived files (the harmony vocabulary, the demo model) go to a throwaway cache.
os.environ.setdefault("GPTOSS_NATIVE_CACHE", tempfile.mkdtemp(prefix="gptoss-native-test-cache-"))

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
TOKENIZER_DIR = SHARED / "tokenizer"

# The interpreter the CLI and server tests start. Under user-mode emulation (.ci/aarch64)
# a child process cannot start an arm64 binary by itself: the command names the emulator.
PYTHON = shlex.split(os.environ.get("GPTOSS_NATIVE_TEST_PYTHON", "")) or [sys.executable]


def kernel_paths() -> list[str]:
    import gptoss_native as gn

    return list(gn.cpu_features()["available"])


@pytest.fixture(params=kernel_paths())
def kernels(request, monkeypatch):
    """Run the test once per kernel path this CPU has, forced through the environment."""
    monkeypatch.setenv("GPTOSS_NATIVE_KERNELS", request.param)
    return request.param


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny synthetic checkpoint (real vocabulary and format) with the real tokenizer."""
    from gptoss_native.synth import synth

    out = tmp_path_factory.mktemp("tiny") / "model"
    return synth(out, "tiny", seed=1, tokenizer=TOKENIZER_DIR / "tokenizer.json", progress=False)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Nothing in the package may reach the network: make any attempt fail loudly."""
    import socket

    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")):
            return real_connect(self, address)
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address)
        raise AssertionError(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
