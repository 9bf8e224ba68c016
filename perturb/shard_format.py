"""The pair-shard format, as a contract shared by its writer (perturb) and its readers (train, eval).

A shard is a plain tar of samples; a sample is the members `<key>.chosen.mp4`, `<key>.rejected.mp4`
and `<key>.json`. A key is a flat name of letters, digits, `_` and `-` (perturb.pipeline.safe_id
makes them): no `/`, no `..`, no dot, so a key never names a path outside the folder it is
written to, and WebDataset (which splits member names at the first dot) sees exactly one key.

Shards may come from anyone, so readers decode nothing outside this format: json is parsed with
json.loads, mp4s stay bytes for ffmpeg. A member with another extension (`.pyd`, `.pickle`, `.pth`,
which WebDataset's default decoders would unpickle) makes the whole shard invalid.

Shards live in a folder or behind an fsspec URL (s3://, gs://, file://; s3fs / gcsfs installed
as extras): `is_url`, `join`, `open_location` and `list_location` are the few calls readers need, and
check_shard reads a URL shard's member headers the same way (fsspec files seek, so only headers are
fetched).

Two kinds of error, two reactions:
  ShardFormatError  the shard breaks the format (a member outside it, a key that is a path, a link,
                    a huge declared size): hostile or not ours; readers stop, naming shard and member.
  BadSample         one sample inside the format is broken (a side missing, json that does not
                    parse, media ffmpeg cannot read): corrupt, not dangerous; readers skip and
                    report it, and stop only when too many are bad.
"""
from __future__ import annotations

import json
import re
import tarfile
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Any

MEMBERS = ("chosen.mp4", "rejected.mp4", "json")
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,200}")
# No real pair side comes close (a 5 s canonical window is ~0.3 MB); a larger declared size is a
# broken or hostile shard, refused before anything is read into memory.
MAX_MEMBER_BYTES = 256 << 20


class ShardFormatError(ValueError):
    """A shard that breaks the format; the message names the shard and the member."""


class BadSample(ValueError):
    """One broken sample of a well-formed shard (skipped and reported); the message is the reason."""


def split_member_name(name: str, shard: str | Path = "") -> tuple[str, str]:
    """`<key>.<ext>` -> (key, ext), or ShardFormatError when the name or the extension is not the format's."""
    key, dot, ext = name.partition(".")
    where = f"{shard}: " if shard else ""
    if not dot or not KEY_PATTERN.fullmatch(key):
        raise ShardFormatError(f"{where}member {name!r}: invalid sample key (letters, digits, _ and - only; "
                               f"no '/', '..' or absolute path)")
    if ext not in MEMBERS:
        raise ShardFormatError(f"{where}member {name!r}: '.{ext}' is not part of the pair format "
                               f"({', '.join(MEMBERS)}); refusing to decode it")
    return key, ext


def check_member(info: tarfile.TarInfo, shard: str | Path = "") -> tuple[str, str]:
    """A tar member header -> (key, ext), checked: format name, regular file, sane size."""
    key, ext = split_member_name(info.name, shard)
    where = f"{shard}: " if shard else ""
    if not info.isfile():
        raise ShardFormatError(f"{where}member {info.name!r}: not a regular file (links and folders are refused)")
    if info.size > MAX_MEMBER_BYTES:
        raise ShardFormatError(f"{where}member {info.name!r}: declares {info.size} bytes, over the "
                               f"{MAX_MEMBER_BYTES} byte limit of a pair side")
    return key, ext


def check_shard(path: str | Path, fileobj: IO[bytes] | None = None) -> int:
    """Check every member header of a shard; returns the number of samples.

    With `fileobj` the tar is read as a stream (every byte passes, e.g. through a hash); else only
    the headers are read, from the file or URL `path`.
    """
    keys: set[str] = set()
    name = location_name(path)
    try:
        with (nullcontext(fileobj) if fileobj is not None else open_location(path)) as fh:
            with tarfile.open(fileobj=fh, mode="r|" if fileobj is not None else "r:") as tar:
                for info in tar:
                    keys.add(check_member(info, name)[0])
    except tarfile.TarError as err:
        raise ShardFormatError(f"{name}: not a readable tar ({err})") from err
    return len(keys)


# ----------------------------------------------------------------------------- JSON
# json.loads recurses once per nesting level (RecursionError near 1000 levels) and reads a file of
# any size into memory. Real sample metas are a few kB and a handful of levels deep; the files
# readers parse (manifest.json, card.json, features.json, a feature shard's metas.json: up to 500
# samples' metas) stay far below the file limit.
MAX_SAMPLE_JSON_BYTES = 64 << 10
MAX_SAMPLE_JSON_DEPTH = 32
MAX_JSON_FILE_BYTES = 64 << 20
MAX_JSON_DEPTH = 64


def _deeper_than(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_json(data: bytes | str, max_bytes: int = MAX_JSON_FILE_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads with bounds: ValueError in one line (no location: the caller names the file or
    sample) for JSON that does not parse, is over max_bytes, or nests deeper than max_depth."""
    if len(data) > max_bytes:
        raise ValueError(f"{len(data)} bytes, over the {max_bytes} byte limit")
    try:
        obj = json.loads(data)
    except RecursionError:
        raise ValueError(f"invalid json (nested deeper than {max_depth} levels)") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"invalid json ({err})") from None
    if isinstance(obj, (dict, list)) and _deeper_than(obj, max_depth):
        raise ValueError(f"invalid json (nested deeper than {max_depth} levels)")
    return obj


# ----------------------------------------------------------------------------- locations

def is_url(location: str | Path) -> bool:
    """An fsspec URL (s3://bucket/x, file:///x, ...), as opposed to a local path."""
    return isinstance(location, str) and "://" in location


def join(location: str | Path, *names: str) -> str | Path:
    """`location/name/...`: a Path for a local folder, a URL string for a URL."""
    if is_url(location):
        return "/".join([str(location).rstrip("/"), *names])
    return Path(location).joinpath(*names)


def location_name(location: str | Path) -> str:
    """The last component of a path or URL (a shard's file name)."""
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def open_location(location: str | Path, mode: str = "rb") -> IO:
    """open() for a local path, fsspec.open() for a URL."""
    if is_url(location):
        import fsspec

        return fsspec.open(str(location), mode).open()
    return open(location, mode)


def list_location(location: str | Path, pattern: str) -> list[str | Path]:
    """Entries of a folder or URL matching a glob pattern, sorted (URLs keep their scheme)."""
    if is_url(location):
        import fsspec

        fs, root = fsspec.core.url_to_fs(str(location))
        found = fs.glob(f"{root.rstrip('/')}/{pattern}")
        return sorted(join(location, location_name(f)) for f in found)
    return sorted(Path(location).glob(pattern))


def location_exists(location: str | Path) -> bool:
    if is_url(location):
        import fsspec

        fs, path = fsspec.core.url_to_fs(str(location))
        return fs.exists(path)
    return Path(location).exists()


def check_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A raw WebDataset sample (bytes per extension) -> the same sample, ShardFormatError for a
    member outside the format, or BadSample when a member of the pair is missing.

    The streaming twin of check_shard, for readers that never saw the tar's headers.
    """
    shard = location_name(str(sample.get("__url__", "")))
    key = str(sample.get("__key__", ""))
    for ext in sample:
        if not ext.startswith("__"):
            split_member_name(f"{key}.{ext}", shard)
    missing = [m for m in MEMBERS if m not in sample]
    if missing:
        raise BadSample(f"lacks {', '.join(missing)}")
    return sample


# ----------------------------------------------------------------------------- configs
# Recipes and training YAMLs come from users too (perturb build --recipe, python -m train --config),
# and perturb and train both read them, so their one YAML reader lives beside the shard contract.
# The real ones are a few kB, a handful of levels deep, and use no anchors.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 50


def read_config_text(path: str | Path) -> str:
    """The text of a recipe / config file, or ValueError in one line naming it (over MAX_CONFIG_BYTES,
    not UTF-8)."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: over {MAX_CONFIG_BYTES} bytes; recipes and configs are a few kB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def parse_config_yaml(text: str, where: str | Path) -> Any:
    """The data of a recipe / config YAML text (what yaml.safe_load gives), or ValueError in one line
    naming `where` (the file): a syntax error, nesting deeper than MAX_CONFIG_DEPTH, or an alias
    (`*name`). An alias repeats its anchor's whole subtree, so a kB of nested aliases expands to
    billions of nodes (the "billion laughs"); no recipe or config needs one.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                alias = self.peek_event()
                raise ValueError(f"{where}: YAML aliases (*{alias.anchor}) are not allowed in recipes/configs "
                                 f"(line {alias.start_mark.line + 1}); write the value out")
            self.depth += 1
            if self.depth > MAX_CONFIG_DEPTH:
                raise ValueError(f"{where}: nested deeper than {MAX_CONFIG_DEPTH} levels "
                                 f"(line {self.peek_event().start_mark.line + 1})")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    loader = Loader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{where}: not valid YAML{at}: {getattr(err, 'problem', None) or err}") from None
    finally:
        loader.dispose()
