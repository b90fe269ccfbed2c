"""spade-tts: compress LLM-based TTS models by WER-based layer pruning and distillation."""
from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    """The installed distribution's version, so `spade --version` names what pip installed.

    A source tree used without installing has no metadata; its pyproject.toml is then the
    only record of the version.
    """
    try:
        return version("spade-tts")
    except PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
        return found.group(1) if found else "unknown"


__version__ = _version()
