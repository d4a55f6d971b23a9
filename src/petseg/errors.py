"""The one exception type that the command line turns into a one-line message."""


class PetsegError(Exception):
    """A user error (bad input, missing data, unusable checkpoint): reported without a traceback.

    The message is a single line that names the file or value at fault and what to do about it.
    """


class Terminated(KeyboardInterrupt):
    """A stop asked for with SIGTERM (SLURM, docker stop, timeout, Kubernetes), handled like
    Ctrl-C: the command reports it in one line and exits with 128 + SIGTERM."""

    exit_code = 143
    label = "terminated (SIGTERM)"
