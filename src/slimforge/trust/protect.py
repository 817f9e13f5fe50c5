"""Protected artifacts: weights encrypted at rest (AES-256-GCM) and manifests signed
(Ed25519), through `cryptography`.

Owns: `new_keys`, `read_data_key`, `seal`, `unseal`, `protect_run`, `sign_run`,
`verify_signature`, `sealed_weights`. A protected run folder is a copy of a run folder in
which the weights (`model/model.safetensors` or `model/model.onnx`) are replaced by
`<name>.sealed`: a header, a fresh 96-bit nonce and the AES-256-GCM ciphertext, with the
file's name bound in as associated data (so sealed files cannot be swapped). The config,
tokenizer and metadata stay readable: they say what the artifact is, not what it learned.
The manifest is rewritten with the sealed files' sha256 and a `sealed` entry, so a flipped
byte is caught by the hash before decryption is even tried, and by GCM's tag if the
manifest was edited too. Signing writes `manifest.sig`, an Ed25519 signature of
`manifest.json`'s bytes; since the manifest holds every file's sha256, the signature
covers the whole folder. Loading decrypts in memory (`SLIMFORGE_KEY`, 64 hex digits, or
`SLIMFORGE_KEY_FILE`) and checks the signature when a public key is required
(`SLIMFORGE_VERIFY_KEY` or `verify_key=`).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

from slimforge.errors import CheckpointError
from slimforge.io.atomic import atomic_dir, atomic_write_bytes
from slimforge.io.checkpoint import MANIFEST, MODEL_DIR, ONNX, WEIGHTS, sha256_file, verify_manifest

KEY_ENV = "SLIMFORGE_KEY"
KEY_FILE_ENV = "SLIMFORGE_KEY_FILE"
VERIFY_KEY_ENV = "SLIMFORGE_VERIFY_KEY"
SIGNATURE = "manifest.sig"
SEALED_SUFFIX = ".sealed"
HEADER = b"slimforge-sealed/1 AES-256-GCM\n"
NONCE_BYTES = 12
WEIGHT_FILES = (f"{MODEL_DIR}/{WEIGHTS}", f"{MODEL_DIR}/{ONNX}")
KEY_FIX = (f"set {KEY_ENV} to the 64 hex digits of the data key, or {KEY_FILE_ENV} to the "
           "key file that `slimforge keys` wrote")


def new_keys(folder: str | Path) -> dict[str, Path]:
    """Write a fresh data key (`data.key`, 32 random bytes as hex) and an Ed25519 signing
    pair (`signing.key`, PEM, and `signing.pub`) into `folder`; secrets get mode 0600."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    files = {
        "data_key": (folder / "data.key", os.urandom(32).hex().encode() + b"\n", 0o600),
        "signing_key": (folder / "signing.key", private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), 0o600),
        "verify_key": (folder / "signing.pub", private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644),
    }
    for path, data, mode in files.values():
        if path.exists():
            raise CheckpointError(f"{path} exists; slimforge will not overwrite a key.",
                                  "choose an empty folder for the new keys.")
        atomic_write_bytes(path, data)
        path.chmod(mode)
    return {name: path for name, (path, _, _) in files.items()}


def _parse_key(text: str, where: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise CheckpointError(f"The data key from {where} is not 64 hex digits (32 bytes).",
                              KEY_FIX + ".")
    return key


def read_data_key(key_file: str | Path | None = None) -> bytes:
    """The AES-256 key: from `key_file`, else `SLIMFORGE_KEY`, else `SLIMFORGE_KEY_FILE`."""
    path = key_file or os.environ.get(KEY_FILE_ENV)
    if key_file is None and os.environ.get(KEY_ENV):
        return _parse_key(os.environ[KEY_ENV], KEY_ENV)
    if not path:
        raise CheckpointError("This artifact's weights are encrypted and no key was given.",
                              KEY_FIX + ".")
    try:
        return _parse_key(Path(path).read_text(), str(path))
    except OSError as exc:
        raise CheckpointError(f"Cannot read the key file {path} ({exc.strerror}).",
                              KEY_FIX + ".") from None


def seal(data: bytes, key: bytes, name: str) -> bytes:
    """`data` encrypted and authenticated with AES-256-GCM, `name` bound in."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(NONCE_BYTES)
    return HEADER + nonce + AESGCM(key).encrypt(nonce, data, name.encode())


def unseal(blob: bytes, key: bytes, name: str) -> bytes:
    """The plaintext of `seal`'s output.

    Raises:
        CheckpointError: not a sealed file, a wrong key, or altered bytes.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not blob.startswith(HEADER):
        raise CheckpointError(f"{name} is not a slimforge sealed file.",
                              "re-export the artifact with `slimforge export --encrypt`.")
    body = blob[len(HEADER):]
    try:
        return AESGCM(key).decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], name.encode())
    except InvalidTag:
        raise CheckpointError(
            f"Could not decrypt {name}: the key is wrong, or the file was altered.",
            "use the data key the artifact was encrypted with; if the key is right, the "
            "file is damaged or tampered with: export it again from the original run.") from None


def _manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / MANIFEST).read_text())


def protect_run(run_dir: str | Path, out: str | Path, key: bytes | None = None,
                signing_key: str | Path | None = None) -> Path:
    """Copy a run folder to `out` (written atomically), its weights sealed with `key` and
    its manifest signed with the Ed25519 PEM `signing_key`, each when given. The source's
    hashes are verified first."""
    source, target = Path(run_dir), Path(out)
    manifest = verify_manifest(source)
    if manifest.get("sealed"):
        raise CheckpointError(f"{source} is already encrypted.", "export from the original run.")
    with atomic_dir(target) as tmp:
        sealed = []
        for name in manifest["files"]:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            if key is not None and name in WEIGHT_FILES:
                (tmp / (name + SEALED_SUFFIX)).write_bytes(
                    seal((source / name).read_bytes(), key, name))
                sealed.append(name)
            else:
                shutil.copy2(source / name, tmp / name)
        files = {name: digest for name, digest in manifest["files"].items()
                 if name not in sealed}  # copies of files whose hashes were just verified
        files.update({name + SEALED_SUFFIX: sha256_file(tmp / (name + SEALED_SUFFIX))
                      for name in sealed})
        manifest = {**manifest, "files": dict(sorted(files.items()))}
        if sealed:
            manifest["sealed"] = {"cipher": "AES-256-GCM", "files": sealed}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if signing_key is not None:
            sign_run(tmp, signing_key)
    return target


def _load_pem(path: str | Path, private: bool) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(path).read_bytes()
        if private:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as exc:
        kind = "private signing key" if private else "public verify key"
        raise CheckpointError(f"{path} is not a readable {kind} ({exc}).",
                              "use the signing.key / signing.pub that `slimforge keys` wrote."
                              ) from None


def sign_run(run_dir: str | Path, signing_key: str | Path) -> Path:
    """Sign `run_dir/manifest.json` with an Ed25519 PEM private key into `manifest.sig`."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = _load_pem(signing_key, private=True)
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"{signing_key} is not an Ed25519 key.",
                              "create one with `slimforge keys DIR`.")
    signature = key.sign((Path(run_dir) / MANIFEST).read_bytes())
    return atomic_write_bytes(Path(run_dir) / SIGNATURE, base64.b64encode(signature) + b"\n")


def verify_signature(run_dir: str | Path, verify_key: str | Path) -> None:
    """Check `manifest.sig` against `manifest.json` with an Ed25519 PEM public key.

    Raises:
        CheckpointError: no signature, a malformed one, or one that does not verify.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    folder = Path(run_dir)
    key = _load_pem(verify_key, private=False)
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(f"{verify_key} is not an Ed25519 public key.",
                              "use the signing.pub that `slimforge keys` wrote.")
    if not (folder / SIGNATURE).is_file():
        raise CheckpointError(f"{folder} is not signed, and a signature is required.",
                              "sign it with `slimforge export RUN -o OUT --sign KEY`, or load "
                              f"it without a verify key ({VERIFY_KEY_ENV}).")
    try:
        key.verify(base64.b64decode((folder / SIGNATURE).read_bytes(), validate=False),
                   (folder / MANIFEST).read_bytes())
    except (InvalidSignature, ValueError):
        raise CheckpointError(
            f"The signature of {folder / MANIFEST} does not verify with {verify_key}: the "
            "artifact was changed after signing, or signed with another key.",
            "use the artifact as its publisher signed it, or the matching public key."
        ) from None


def sealed_weights(run_dir: Path, manifest: dict[str, Any]) -> bytes | None:
    """The decrypted weights of a protected run (in memory), or None if none are sealed."""
    names = (manifest.get("sealed") or {}).get("files") or []
    if not names:
        return None
    key = read_data_key()
    name = names[0]
    return unseal((run_dir / (name + SEALED_SUFFIX)).read_bytes(), key, name)
