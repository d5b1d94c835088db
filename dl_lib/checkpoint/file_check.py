"""Say what is wrong with a weights file that ``torch.load`` cannot read.

``torch.load`` answers a text file with ``KeyError: 101``, a random file with advice to load it
with ``weights_only=False`` (arbitrary code execution, and it would not help), and a truncated
file with a zip error that names no file. ``check_torch_file`` looks at the first bytes before
``torch.load`` runs; ``unreadable_checkpoint_error`` turns the error of a torch file that fails
anyway (truncated, corrupted) into one message naming the path, its size and the fix.
"""
import os
import struct
import zipfile

__all__ = ["CheckpointReadError", "check_torch_file", "check_weights_file",
           "unreadable_checkpoint_error"]

# torch.save's formats: a zip archive (default since torch 1.6), or the legacy pickle stream that
# starts with the pickled magic number 0x1950a86a20f9469cfc6c (protocol 2, LONG1 of 10 bytes).
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"

def _fix(key: str) -> str:
    where = (f"Check {key} (or, for --resume, the file OUTPUT_DIR/last_checkpoint names)"
             if key == "MODEL.WEIGHTS" else f"Check {key}")
    return (f"{where}: it must be a file written by torch.save, i.e. a checkpoint of this "
            "library, a state dict or a released .pth.")


class CheckpointReadError(ValueError):
    """A weights file that is not a torch checkpoint, or one that is truncated or corrupted."""


def _is_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object.
    return len(head) > 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] < 1 << 30


def _text_excerpt(head: bytes):
    """The first line of ``head`` if it reads as text (UTF-8, printable), else None."""
    text = head.decode("utf-8", errors="replace")
    # A multi-byte character cut at the end of the 256 bytes read is not binary.
    printable = sum((c.isprintable() and c != "\ufffd") or c in "\n\r\t" for c in text[:-3])
    if len(text) <= 3 or printable < 0.95 * (len(text) - 3):
        return None
    return text.strip().splitlines()[0][:60] if text.strip() else ""


def check_torch_file(path: str, shown_as: str = "", key: str = "MODEL.WEIGHTS") -> None:
    """Raise ``CheckpointReadError`` unless ``path`` starts like a file of ``torch.save``.

    ``shown_as`` is the name to print (an URI the local ``path`` was fetched from); ``key`` the
    config key the message tells to check."""
    name = shown_as or path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(_ZIP_MAGIC):
        if zipfile.is_zipfile(path):  # reads the end of the file only
            return
        raise CheckpointReadError(
            f"{name} is a truncated or corrupted torch checkpoint ({size} bytes: a zip archive "
            "without its end record, e.g. an interrupted copy or a save killed midway). Copy or "
            f"download it again, or use an earlier checkpoint. {_fix(key)}")
    if head.startswith(_LEGACY_MAGIC):
        return
    if size == 0:
        what = "is empty (0 bytes; an interrupted copy or download?)"
    elif _is_safetensors(head):
        what = ("is a safetensors file, not a torch.save checkpoint: convert it with "
                "`torch.save(safetensors.torch.load_file(path), 'x.pth')`")
    else:
        text = _text_excerpt(head)
        if text is not None:
            what = (f"is a text file, not a torch checkpoint (it starts with {text!r}: a download "
                    "error page, a Git LFS pointer or a list of paths?)")
        else:
            what = (f"is not a torch checkpoint ({size} bytes, neither torch.save's zip format nor "
                    f"its legacy format; it starts with 0x{head[:8].hex()})")
    raise CheckpointReadError(f"{name} {what}. {_fix(key)}")


def unreadable_checkpoint_error(path: str, error: BaseException, shown_as: str = "",
                                key: str = "MODEL.WEIGHTS") -> CheckpointReadError:
    """The error for a torch file that ``torch.load`` failed on (truncated or corrupted)."""
    name = shown_as or path
    try:
        size = f"{os.path.getsize(path)} bytes"
    except OSError:
        size = "size unknown"
    # torch's first sentence only (miniz adds a paragraph of generic advice).
    detail = str(error).strip().splitlines()[0].split(". ")[0][:160] if str(error).strip() else ""
    reason = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    return CheckpointReadError(
        f"{name} is a truncated or corrupted torch checkpoint ({size}; torch.load raised "
        f"{reason}). Copy or download it again, or use an earlier "
        f"checkpoint. {_fix(key)}")


def check_weights_file(path: str) -> None:
    """:func:`check_torch_file` for ``MODEL.WEIGHTS`` when it is a local file (URIs, "none" and
    "" are left to the loader): what ``dl_train`` / ``dl_test`` check before they start."""
    if path and os.path.isfile(path):
        check_torch_file(path)
