"""Reading image archives into the content store: ``docker load`` and ``docker import``.

``load_archive`` reads a tar stream in one pass (it may come straight from the client) and
accepts both formats ``docker save`` has written over the years:

- an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``), also the
  layout Docker 25+ puts in the same tar as its ``manifest.json``; every blob is verified
  against its file name; names come from ``io.containerd.image.name`` or, failing that,
  ``org.opencontainers.image.ref.name`` when it is a full reference;
- a docker-archive (``manifest.json`` ``[{Config, RepoTags, Layers}]``, ``<id>/layer.tar``,
  ``<hex>.json``), for which a Docker schema 2 manifest is written as containerd's
  importer does; the config bytes are kept exactly, so the image id equals Docker's, and
  each uncompressed layer must hash to its diff ID.

``import_rootfs`` turns a rootfs tar (plain, gzip or zstd) into a one-layer image (gzip
layer, OCI config and manifest), like ``docker import``.

Blocking code: run it in a worker thread. Blobs are committed through the content
store's ingests (never partial) and handed to ``protect`` under ``store.commit_lock``,
so a concurrent garbage collection cannot remove them before the image record exists.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import logging
import os
import posixpath
import tarfile
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import zstandard

from common.errors import FailedPrecondition, InvalidArgument
from services.image import oci, platforms
from services.image import reference as refs
from services.image.changes import apply_changes
from services.image.content import BlobInfo, ContentStore, Ingest

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
Protect = Callable[[str], None]

_IN_MEMORY_MAX = 1024 * 1024
_CHUNK = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_commit_lock = threading.Lock()


def commit_lock() -> threading.Lock:
    """The lock held while a blob is committed and protected, and while GC marks and sweeps."""
    return _commit_lock


@dataclass
class ArchivedImage:
    """One image found in an archive: its names (normalised references) and target."""

    names: list[str]
    target: oci.Descriptor


@dataclass
class _Member:
    """A regular file of the archive: kept in memory (small) or committed as a blob."""

    data: bytes | None = None
    blob: BlobInfo | None = None


@dataclass
class _Archive:
    members: dict[str, _Member] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)


def _clean(name: str) -> str:
    name = posixpath.normpath(name.lstrip("/"))
    return "" if name in (".", "..") or name.startswith("../") else name


def _commit(store: ContentStore, ingest: Ingest, protect: Protect) -> BlobInfo:
    with _commit_lock:
        info = ingest.commit()
        protect(info.digest)
    return info


def _commit_bytes(store: ContentStore, data: bytes, protect: Protect, expected: str = "") -> BlobInfo:
    with _commit_lock:
        info = store.write_blob(data, expected)
        protect(info.digest)
    return info


def _read_tar(stream: IO[bytes], store: ContentStore, protect: Protect, progress: Progress) -> _Archive:
    archive = _Archive()
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115 - closed below
    except tarfile.TarError as exc:
        raise InvalidArgument(f"not a tar archive: {exc}") from None
    try:
        for member in tar:
            name = _clean(member.name)
            if not name:
                continue
            if member.issym() or member.islnk():
                target = member.linkname
                if member.issym():
                    target = posixpath.join(posixpath.dirname(name), target)
                archive.links[name] = _clean(target)
                continue
            if not member.isfile():
                continue
            f = tar.extractfile(member)
            if f is None:
                continue
            under_blobs = name.startswith("blobs/")
            if member.size <= _IN_MEMORY_MAX and not under_blobs:
                archive.members[name] = _Member(data=f.read())
                continue
            expected = ""
            if under_blobs:
                parts = name.split("/")
                if len(parts) != 3 or parts[1] != "sha256":
                    log.warning("load: skipping unsupported blob path %s", name)
                    continue
                expected = oci.check_digest("sha256:" + parts[2], f"archive member {name}")
                if store.exists(expected):
                    with _commit_lock:
                        if store.exists(expected):
                            protect(expected)
                            archive.members[name] = _Member(blob=BlobInfo(expected, member.size, 0.0))
                            continue
            ref = f"load-{os.getpid()}-{threading.get_ident()}-{name}"
            ingest = store.open_ingest(ref, expected=expected, total=member.size, resume=False)
            try:
                done = 0
                while True:
                    chunk = f.read(_CHUNK)
                    if not chunk:
                        break
                    ingest.write(chunk)
                    done += len(chunk)
                    progress(
                        {
                            "status": "Loading layer",
                            "id": name[-12:] if under_blobs else name.split("/")[0][:12],
                            "current": done,
                            "total": member.size,
                        }
                    )
                try:
                    info = _commit(store, ingest, protect)
                except FailedPrecondition as exc:
                    detail = exc.message.split(": ", 1)[-1]
                    raise InvalidArgument(f"archive member {name} does not match its digest ({detail})") from None
            except BaseException:
                ingest.abort()
                raise
            archive.members[name] = _Member(blob=info)
    except tarfile.TarError as exc:
        raise InvalidArgument(f"malformed tar archive: {exc}") from None
    finally:
        tar.close()
    return archive


def _resolve(archive: _Archive, name: str) -> _Member | None:
    seen = 0
    name = _clean(name)
    while name in archive.links and seen < 16:
        name = archive.links[name]
        seen += 1
    return archive.members.get(name)


def _member_bytes(store: ContentStore, member: _Member) -> bytes:
    if member.data is not None:
        return member.data
    assert member.blob is not None
    return store.read(member.blob.digest, max_size=2 * oci.MAX_MANIFEST_SIZE)


def _member_blob(store: ContentStore, member: _Member, protect: Protect, expected: str = "") -> BlobInfo:
    if member.blob is not None:
        if expected and member.blob.digest != expected:
            raise InvalidArgument(f"archive blob {member.blob.digest} does not match its digest {expected}")
        return member.blob
    assert member.data is not None
    try:
        member.blob = _commit_bytes(store, member.data, protect, expected)
    except FailedPrecondition as exc:
        raise InvalidArgument(f"archive blob: {exc}") from None
    return member.blob


def _layer_media_type(store: ContentStore, blob: BlobInfo) -> str:
    with open(store.path(blob.digest), "rb") as f:
        head = f.read(4)
    if head.startswith(_GZIP_MAGIC):
        return oci.DOCKER_LAYER_GZIP
    if head.startswith(_ZSTD_MAGIC):
        return oci.DOCKER_LAYER_ZSTD
    return oci.DOCKER_LAYER


def _names_from_annotations(annotations: dict[str, str]) -> list[str]:
    for key in (oci.ANNOTATION_CONTAINERD_NAME, oci.ANNOTATION_REF_NAME):
        value = annotations.get(key, "")
        if not value:
            continue
        if key == oci.ANNOTATION_REF_NAME and "/" not in value and ":" not in value and "@" not in value:
            continue  # a bare tag: no repository to put it under
        ref = refs.try_parse(value)
        if ref is not None:
            return [str(ref)]
    return []


def _load_oci(store: ContentStore, archive: _Archive, protect: Protect) -> list[ArchivedImage]:
    index_member = archive.members["index.json"]
    layout = archive.members.get("oci-layout")
    if layout is not None and layout.data is not None:
        try:
            version = json.loads(layout.data).get("imageLayoutVersion")
        except ValueError:
            version = None
        if version != "1.0.0":
            raise InvalidArgument(f"unsupported OCI layout version {version!r}")
    index = oci.parse_document(_member_bytes(store, index_member), oci.OCI_INDEX, where="index.json")
    if not isinstance(index, oci.Index):
        raise InvalidArgument("index.json is not an image index")

    def need(desc: oci.Descriptor) -> BlobInfo:
        member = archive.members.get(f"blobs/sha256/{desc.digest.split(':', 1)[1]}")
        if member is None:
            if store.exists(desc.digest):
                with _commit_lock:
                    protect(desc.digest)
                return store.info(desc.digest)
            raise InvalidArgument(f"archive is missing blob {desc.digest} ({desc.media_type})")
        blob = _member_blob(store, member, protect, desc.digest)
        if blob.size != desc.size:
            raise InvalidArgument(f"archive blob {desc.digest} is {blob.size} bytes, its descriptor says {desc.size}")
        return blob

    def walk(desc: oci.Descriptor, depth: int = 0) -> None:
        if depth > 4:
            raise InvalidArgument("index nesting too deep")
        need(desc)
        if desc.media_type not in oci.INDEX_TYPES + oci.MANIFEST_TYPES:
            return
        doc = oci.parse_document(
            store.read(desc.digest, max_size=oci.MAX_MANIFEST_SIZE), desc.media_type, where=f"manifest {desc.digest}"
        )
        if isinstance(doc, oci.Index):
            found = 0
            for child in doc.manifests:
                if f"blobs/sha256/{child.digest.split(':', 1)[1]}" in archive.members or store.exists(child.digest):
                    walk(child, depth + 1)
                    found += 1
            if not found:
                raise InvalidArgument(f"archive has none of the manifests of index {desc.digest}")
            return
        need(doc.config)
        for layer in doc.layers:
            need(layer)

    images = []
    for entry in index.manifests:
        walk(entry)
        images.append(ArchivedImage(_names_from_annotations(entry.annotations), entry))
    return images


def _load_docker(store: ContentStore, archive: _Archive, protect: Protect) -> list[ArchivedImage]:
    try:
        entries = json.loads(_member_bytes(store, archive.members["manifest.json"]))
    except ValueError as exc:
        raise InvalidArgument(f"manifest.json is not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise InvalidArgument("manifest.json is not a list")
    images = []
    for i, entry in enumerate(entries):
        where = f"manifest.json[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise InvalidArgument(f"{where}: no Config")
        cfg_member = _resolve(archive, entry["Config"])
        if cfg_member is None:
            raise InvalidArgument(f"{where}: archive has no {entry['Config']}")
        cfg_blob = _member_blob(store, cfg_member, protect)
        config = oci.parse_config(_member_bytes(store, cfg_member), where=f"{where} config")
        layer_paths = entry.get("Layers") or []
        if not isinstance(layer_paths, list) or len(layer_paths) != len(config.diff_ids):
            raise InvalidArgument(
                f"{where}: {len(layer_paths) if isinstance(layer_paths, list) else 0} layers but the config "
                f"lists {len(config.diff_ids)} diff IDs"
            )
        layers = []
        for path, diff_id in zip(layer_paths, config.diff_ids, strict=True):
            member = _resolve(archive, str(path))
            if member is None:
                raise InvalidArgument(f"{where}: archive has no layer {path}")
            blob = _member_blob(store, member, protect)
            media_type = _layer_media_type(store, blob)
            if media_type == oci.DOCKER_LAYER and blob.digest != diff_id:
                raise InvalidArgument(f"{where}: layer {path} hashes to {blob.digest}, the config says {diff_id}")
            layers.append(oci.Descriptor(media_type, blob.digest, blob.size))
        config_desc = oci.Descriptor(oci.DOCKER_CONFIG, cfg_blob.digest, cfg_blob.size)
        manifest = oci.manifest_json(config_desc, layers, oci.DOCKER_MANIFEST)
        man_blob = _commit_bytes(store, manifest, protect)
        names = []
        for tag in entry.get("RepoTags") or []:
            ref = refs.try_parse(str(tag))
            if ref is None:
                raise InvalidArgument(f"{where}: invalid RepoTag {tag!r}")
            names.append(str(ref))
        images.append(ArchivedImage(names, oci.Descriptor(oci.DOCKER_MANIFEST, man_blob.digest, man_blob.size)))
    return images


def load_archive(stream: IO[bytes], store: ContentStore, protect: Protect, progress: Progress) -> list[ArchivedImage]:
    """Read a docker-archive or OCI layout tar from ``stream`` into ``store``.

    Returns the images found (names may be empty: the image is then dangling). Raises
    InvalidArgument for anything malformed, naming the member at fault.
    """
    archive = _read_tar(stream, store, protect, progress)
    if "index.json" in archive.members:
        return _load_oci(store, archive, protect)
    if "manifest.json" in archive.members:
        return _load_docker(store, archive, protect)
    raise InvalidArgument(
        "not an image archive: found neither index.json (OCI layout) nor manifest.json (docker-archive)"
    )


# -- import ---------------------------------------------------------------------------------------
def _tar_header_ok(block: bytes) -> bool:
    if len(block) < 512:
        return False
    if block[:512] == b"\0" * 512:
        return True
    try:
        stored = int(block[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:512])
    return stored == computed


class _Peek(io.RawIOBase):
    """A stream with its first bytes already read (to sniff compression)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(b))
        n = len(data)
        b[:n] = data
        return n


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    """Read up to ``n`` bytes, fewer only at EOF."""
    out = bytearray()
    while len(out) < n:
        chunk = stream.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def import_rootfs(
    stream: IO[bytes],
    store: ContentStore,
    protect: Protect,
    progress: Progress,
    *,
    changes: list[str],
    message: str,
    platform: oci.Platform | None = None,
    created: dt.datetime | None = None,
) -> oci.Descriptor:
    """Turn a rootfs tar (plain, gzip or zstd) into a one-layer OCI image; return its manifest.

    The layer is stored gzip-compressed; its diff ID is the sha256 of the uncompressed tar.
    ``changes`` are Dockerfile instructions (see ``changes.apply_changes``). Raises
    InvalidArgument when the input is not a tar archive or a change is malformed.
    """
    section = apply_changes({}, changes)  # validate before reading any byte
    head = _read_exact(stream, 4)
    raw: IO[bytes] = _Peek(head, stream)  # type: ignore[assignment]
    if head.startswith(_GZIP_MAGIC):
        raw = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    elif head.startswith(_ZSTD_MAGIC):
        raw = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    diff = hashlib.sha256()
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    ingest = store.open_ingest(f"import-{os.getpid()}-{threading.get_ident()}-{id(stream)}", resume=False)
    uncompressed = 0
    try:
        first = True
        while True:
            try:
                chunk = _read_exact(raw, _CHUNK)
            except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
                raise InvalidArgument(f"import: cannot decompress the input: {exc}") from None
            if first:
                if not _tar_header_ok(chunk):
                    raise InvalidArgument("import: the input is not a tar archive (bad first header)")
                first = False
            if not chunk:
                break
            diff.update(chunk)
            uncompressed += len(chunk)
            ingest.write(compressor.compress(chunk))
            progress({"status": "Importing", "current": uncompressed})
        if first:
            raise InvalidArgument("import: the input is empty")
        ingest.write(compressor.flush())
        layer = _commit(store, ingest, protect)
    except BaseException:
        ingest.abort()
        raise
    diff_id = "sha256:" + diff.hexdigest()
    plat = platforms.normalize(platform or platforms.host())
    now = (created or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    comment = message or "Imported from -"
    cfg: dict[str, Any] = {
        "architecture": plat.architecture,
        "os": plat.os,
        "created": now,
        "comment": comment,
        "config": section,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": now, "created_by": "dockyard import", "comment": comment}],
    }
    if plat.variant and not (plat.architecture == "arm64" and plat.variant == "v8"):
        cfg["variant"] = plat.variant
    cfg_bytes = json.dumps(cfg, separators=(",", ":")).encode()
    cfg_blob = _commit_bytes(store, cfg_bytes, protect)
    manifest = oci.manifest_json(
        oci.Descriptor(oci.OCI_CONFIG, cfg_blob.digest, cfg_blob.size),
        [oci.Descriptor(oci.OCI_LAYER_GZIP, layer.digest, layer.size)],
    )
    man_blob = _commit_bytes(store, manifest, protect)
    return oci.Descriptor(oci.OCI_MANIFEST, man_blob.digest, man_blob.size)
