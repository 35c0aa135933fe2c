"""A `python -c` program that runs a script as `__main__` with no network.

Outgoing TCP/UDP connections raise `OSError`, so a guide or an example run
by a test cannot download weights or data. Usage:
`subprocess.run([sys.executable, "-c", OFFLINE_RUNNER, script, *flags])`;
`BLOCK_KERAS_CV + OFFLINE_RUNNER` also makes keras-cv unimportable.
"""

BLOCK_KERAS_CV = """
import importlib.abc, sys

class NoKerasCV(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "keras_cv":
            raise ImportError("keras_cv is blocked in this test")
        return None

sys.meta_path.insert(0, NoKerasCV())
"""

OFFLINE_RUNNER = """
import runpy, socket, sys

_ORIGINAL = {}


def _offline(name):
    _ORIGINAL[name] = getattr(socket.socket, name)

    def refuse_internet(self, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError("network access from a script run by a test")
        return _ORIGINAL[name](self, *args, **kwargs)

    setattr(socket.socket, name, refuse_internet)


for _name in ("connect", "connect_ex", "sendto"):
    _offline(_name)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
