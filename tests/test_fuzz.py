"""The media fuzzer, bounded for the suite: 300 mutated images and 300 mutated audio files
(~3 s) in a child process under a 2 GiB address-space cap. `python tests/fuzz_media.py --count
3000` is the long run."""

import json
import subprocess
import sys
from pathlib import Path

FUZZER = Path(__file__).with_name("fuzz_media.py")


def test_mutated_media_are_answered_or_refused_never_crash():
    result = subprocess.run([sys.executable, str(FUZZER), "--count", "300", "--memory-gb", "2"],
                            capture_output=True, text=True, timeout=600)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["failures"], report["failures"][:5]
    assert result.returncode == 0
    assert report["answered"] + report["refused"] == report["count"] == 600
    assert report["answered"] > 50 and report["refused"] > 50  # the mutations reach both outcomes
