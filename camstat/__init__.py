"""camstat: statistics of class-activation-map consistency."""

__version__ = "0.1.0"

from camstat.errors import CamstatError  # noqa: E402

__all__ = ["CamstatError", "__version__", "open_store"]


def open_store(path):  # re-exported lazily so `import camstat` stays light
    from camstat import store

    return store.open_store(path)
