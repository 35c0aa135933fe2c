"""The progress bar of `generate`: one tick per network evaluation."""

import time

import keras

from keras_immiscible.utils.arguments import check_choice

VERBOSE = ("auto", 0, 1)


def check_verbose(verbose):
    """`verbose` of `generate`: "auto", 0 or 1."""
    return check_choice(verbose, "verbose", VERBOSE)


class GenerateProgress:
    """Counts network evaluations and shows them as a `keras.utils.Progbar`.

    With `verbose=1` the bar shows from the first evaluation; with `"auto"`
    only once the run has taken `delay` seconds (short calls, e.g. inside
    callbacks and tests, stay quiet); with 0 never.

    Args:
        total: the number of network evaluations of the whole call.
        verbose: "auto", 0 or 1.
        delay: seconds before an `"auto"` bar appears.
    """

    def __init__(self, total, verbose="auto", delay=2.0):
        self.total = int(total)
        self.verbose = check_verbose(verbose)
        self.delay = float(delay)
        self.count = 0
        self._start = time.monotonic()
        self._bar = None

    def advance(self):
        """Records one network evaluation."""
        self.count += 1
        if self.verbose == 0:
            return
        if self._bar is None and (
            self.verbose == 1 or time.monotonic() - self._start >= self.delay
        ):
            self._bar = keras.utils.Progbar(self.total, unit_name="network evaluation")
        if self._bar is not None:
            self._bar.update(min(self.count, self.total))

    def wrap(self, network):
        """`network` that advances the count at every call."""

        def counted(inputs):
            outputs = network(inputs)
            self.advance()
            return outputs

        return counted
