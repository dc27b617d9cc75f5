"""A session opened on first use. The vision and audio encoders are ~1 GB of RSS and ~2 s of load
at full size; a text-only user never pays for them, and an app that will need them calls
`open()` ahead, e.g. from a background thread while it waits for its first request."""

import threading

import onnxruntime as ort

from .providers import open_session
from .tensor_types import input_types, run_as_declared


class LazySession:
    def __init__(self, path, options: ort.SessionOptions, provider: str, reads: dict | None = None, check=None):
        """`reads`: the sha256 of the graph's data files (for a compiling provider); `check(session)`
        runs once on the new session (the manifest's sizes against the graph: graph_contract.py)."""
        self.path, self._options, self._provider, self._reads, self._check = path, options, provider, reads, check
        self._session = None
        self._opening = threading.Lock()
        self._declared = None

    def open(self) -> ort.InferenceSession:
        """The session, opened now if it was not yet (once, whichever thread asks first)."""
        with self._opening:
            if self._session is None:
                session = open_session(self.path, self._options, self._provider, self._reads)
                self._session = self._check(session) if self._check else session
        return self._session

    @property
    def is_open(self) -> bool:
        return self._session is not None

    def run(self, outputs, feeds):
        """Float feeds as the graph declares them (fp16 in a DirectML artifact), float outputs as fp32."""
        session = self.open()
        if self._declared is None:
            self._declared = input_types(session)
        return run_as_declared(session, outputs, feeds, self._declared)
