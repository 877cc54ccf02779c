"""The export's manifest: which ONNX file serves each model, and the checksum it must have."""

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from serve.errors import StartupError

MANIFEST_NAME = "manifest.json"
# A model name becomes a URL path (/<name>), so it must be plain and not shadow another route.
MODEL_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
# Names that a route already takes where a model name would stand: /<name> and /v2/models/<name>.
RESERVED_NAMES = frozenset({"astromech", "config", "docs", "metrics", "stats", "v2", "versions"})
# A model's version: the first hex digits of its ONNX file's sha256.
VERSION_DIGITS = 12


@dataclass(frozen=True)
class ModelFile:
    name: str
    path: Path
    sha256: str
    source_sha256: str = ""
    # What the export recorded, for the start-up line: framework, family, opsets, parity.
    details: tuple[tuple[str, object], ...] = ()

    @property
    def version(self) -> str:
        return self.sha256[:VERSION_DIGITS]

    def read_verified(self) -> bytes:
        """The file's bytes, refused unless they hash to the manifest's checksum.

        The service loads the very bytes it checked, so nothing can change between check and load.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise StartupError(f"model {self.name}: file {self.path} not found") from None
        except OSError as exc:
            raise StartupError(f"model {self.name}: cannot read {self.path}: {exc}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.sha256:
            raise StartupError(
                f"model {self.name}: checksum mismatch for {self.path} "
                f"(manifest {self.sha256[:12]}..., file {actual[:12]}...)"
            )
        return data


def read_manifest(models_dir: Path) -> list[ModelFile]:
    path = models_dir / MANIFEST_NAME
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StartupError(f"manifest {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StartupError(f"manifest {path} cannot be read: {exc}") from None
    try:
        models = document["models"]
        files = [
            ModelFile(
                name=name,
                path=models_dir / entry["file"],
                sha256=entry["sha256"],
                source_sha256=str(entry.get("source_sha256", "")),
                details=tuple(
                    (key, entry[key])
                    for key in ("framework", "family", "opsets", "parity")
                    if key in entry
                ),
            )
            for name, entry in sorted(models.items())
        ]
    except (KeyError, TypeError, AttributeError):
        raise StartupError(
            f"manifest {path} must map models.<name> to an object with 'file' and 'sha256'"
        ) from None
    if not files:
        raise StartupError(f"manifest {path} lists no models")
    for model_file in files:
        if not MODEL_NAME.fullmatch(model_file.name) or model_file.name in RESERVED_NAMES:
            raise StartupError(f"manifest {path}: {model_file.name!r} cannot name a model")
    return files
