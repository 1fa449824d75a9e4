"""Running one fixture generator on its own: `python fixtures_X.py [OUT]` writes its files into OUT
(default Tests/Fixtures) in make_fixtures.py's environment (offline hub, one thread, deterministic
algorithms), as make_fixtures.py would when it runs the generator last."""
import os
import sys


def run(write_all, script):
    here = os.path.dirname(os.path.abspath(script))
    sys.path.insert(0, here)
    import make_fixtures  # noqa: E402  (importing it sets up the environment)
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "Fixtures")
    write_all(os.path.abspath(target), make_fixtures)
