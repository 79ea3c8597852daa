"""The suite's guard against a hang: a test that never returns fails after the configured time, naming itself and
showing where it waited, and the tests after it still run (CI would otherwise stop at its own limit, silent)."""

import subprocess
import sys


def test_a_hung_test_fails_with_its_stack_and_the_suite_goes_on(tmp_path, pytestconfig):
    assert 0 < float(pytestconfig.getini("timeout")) <= 1800
    (tmp_path / "test_hang.py").write_text(
        "import time\n\ndef test_hangs():\n    time.sleep(600)\n\ndef test_after():\n    pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=2", "test_hang.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Timeout" in done.stdout and "time.sleep(600)" in done.stdout
    assert "1 failed, 1 passed" in done.stdout
