"""Listing and describing images: ``docker images`` rows and filters, ``inspect``, ``history``.

Pure functions over image records and ``ImageView``s (no RPC, no events): the service
hands them what it read and returns what they build (``common.api.image`` models).

Sizes are Docker's: an image's size is the sum of its layers' diff sizes, the bytes of the
files each layer unpacked to (moby: ``layer.Size()`` of the image's top layer, the DiffSize
of every layer of its chain), which the service gets from the snapshot service by chain ID
(``DiffSizes``). An image with a layer not unpacked (yet), or whose diff sizes could not be
had (the snapshot service down), gets the sum of its layer blob sizes instead: the
compressed size, what ``ctr images ls`` shows (containerd adds the manifest's and config's
bytes too).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
import time
from collections.abc import Callable, Mapping

from common import errors
from common.api import image as api
from services.image import reference as refs
from services.image.content import ContentStore
from services.image.images import ImageView, record_names, view_of
from services.image.metadata import ImageRecord, MetadataStore
from services.image.oci import Descriptor

CreatedOf = Callable[[str], float]
DiffSizes = Mapping[str, int]
"""``{chain ID: diff size}`` of the unpacked layers (``snapshot.diff_sizes``)."""


def layer_diff_sizes(view: ImageView, diff_sizes: DiffSizes | None) -> list[int] | None:
    """The diff size of each layer of ``view`` (lowest first), or None unless every one of
    them is known (the whole image unpacked)."""
    if diff_sizes is None or any(c not in diff_sizes for c in view.chain_ids):
        return None
    return [diff_sizes[c] for c in view.chain_ids]


def image_size(view: ImageView, diff_sizes: DiffSizes | None) -> int:
    """Docker's image Size: the sum of the layers' diff sizes once all are unpacked, else the
    sum of the layer blob sizes (compressed; see the module docstring)."""
    sizes = layer_diff_sizes(view, diff_sizes)
    return sum(sizes) if sizes is not None else view.size


def desc_api(desc: Descriptor) -> api.Descriptor:
    """Our descriptor as the API model."""
    return api.Descriptor.model_validate(desc.to_json())


def ts(value: float) -> dt.datetime:
    """Unix seconds -> aware UTC datetime."""
    return dt.datetime.fromtimestamp(value, dt.UTC)


def parse_created(text: str) -> dt.datetime | None:
    """An image config's RFC 3339 ``created`` (nanoseconds allowed) as aware UTC; None if unparsable."""
    if not text:
        return None
    t = text.strip().replace("Z", "+00:00")
    m = re.match(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(.*)$", t)
    if not m:
        return None
    frac = (m.group(2) or "")[:7]
    try:
        value = dt.datetime.fromisoformat(m.group(1) + frac + (m.group(3) or "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def label_matches(labels: dict[str, str], condition: str) -> bool:
    """``key`` or ``key=value`` against ``labels``."""
    key, sep, value = condition.partition("=")
    return key in labels and (not sep or labels[key] == value)


def ref_match(pattern: str, name: str) -> bool:
    """Docker's reference filter: a glob whose ``*`` does not cross ``/``."""
    regex = fnmatch.translate(pattern).replace(".*", "[^/]*")
    return re.match(regex, name) is not None


def parse_until(value: str) -> float:
    """``until=``: unix seconds, a duration ago (``10m``) or RFC 3339 -> unix seconds."""
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    m = re.match(r"^(\d+)(s|m|h)$", text)
    if m:
        mult = {"s": 1, "m": 60, "h": 3600}[m.group(2)]
        return time.time() - int(m.group(1)) * mult
    parsed = parse_created(text)
    if parsed is None:
        raise errors.InvalidArgument(f"invalid 'until' value {value!r}: use a unix time, a duration (10m) or RFC 3339")
    return parsed.timestamp()


def summary(
    rec: ImageRecord, view: ImageView | None, all_records: list[ImageRecord], diff_sizes: DiffSizes | None = None
) -> api.ImageSummary:
    """One ``docker images`` row: the record, its image's id, tags, digests, labels and size
    (``image_size``)."""
    same = [
        r for r in all_records if (r.image_id and r.image_id == rec.image_id) or r.target.digest == rec.target.digest
    ]
    _tags, digests = record_names(same)
    ref = refs.try_parse(rec.name) if not rec.dangling else None
    repo_tags = [ref.familiar_name() + ":" + ref.tag] if ref is not None and ref.tag else []
    repo_digests = [d for d in digests if ref is None or d.startswith(ref.familiar_name() + "@")] or digests
    cfg_labels = {}
    created = None
    if view is not None:
        cfg_labels = {str(k): str(v) for k, v in (view.config.config.get("Labels") or {}).items()}
        created = parse_created(view.config.created)
    return api.ImageSummary(
        name=rec.name,
        id=view.id if view is not None else (rec.image_id or rec.target.digest),
        target=desc_api(rec.target),
        repo_tags=repo_tags,
        repo_digests=repo_digests if ref is not None else digests,
        labels=rec.labels,
        config_labels=cfg_labels,
        created=created,
        created_at=ts(rec.created_at),
        updated_at=ts(rec.updated_at),
        size=image_size(view, diff_sizes) if view is not None else 0,
        dangling=rec.dangling,
    )


Views = dict[str, ImageView | None]
"""``{target digest: its view}`` (None: its content cannot be read)."""


def read_images(meta: MetadataStore, store: ContentStore, namespace: str) -> tuple[list[ImageRecord], Views]:
    """The records of ``namespace`` and the view of each target (blocking: reads the store)."""
    records = meta.records(namespace)
    views: Views = {}
    for rec in records:
        if rec.target.digest not in views:
            try:
                views[rec.target.digest] = view_of(store, rec.target, None, strict=False)
            except errors.DockyardError:
                views[rec.target.digest] = None
    return records, views


def chain_ids_of(views: Views) -> list[str]:
    """Every chain ID of the readable ``views`` (what to ask the snapshot service about)."""
    return sorted({c for v in views.values() if v is not None for c in v.chain_ids})


def list_images(
    records: list[ImageRecord],
    views: Views,
    diff_sizes: DiffSizes | None,
    filters: dict[str, list[str]],
    created_of: CreatedOf,
) -> list[api.ImageSummary]:
    """``docker images`` of ``read_images``' records and views. ``created_of(ref)`` gives
    another image's record creation time for ``before``/``since``."""
    summaries = [summary(r, views[r.target.digest], records, diff_sizes) for r in records]
    return [s for s in summaries if matches(s, filters, created_of)]


def matches(s: api.ImageSummary, filters: dict[str, list[str]], created_of: CreatedOf) -> bool:
    """Docker's image filters: AND between keys, OR within one (InvalidArgument for unknown keys)."""
    for key, values in filters.items():
        if not values:
            continue
        if key == "dangling":
            want = values[-1].lower() in ("true", "1")
            if values[-1].lower() not in ("true", "false", "1", "0"):
                raise errors.InvalidArgument(f"invalid filter 'dangling={values[-1]}': use true or false")
            if s.dangling != want:
                return False
        elif key == "reference":
            names = []
            for tag in s.repo_tags:
                names += [tag, tag.rsplit(":", 1)[0]]
            names += s.repo_digests
            if not any(ref_match(pattern, n) for pattern in values for n in names):
                return False
        elif key == "label":
            labels = s.config_labels | s.labels
            for cond in values:
                k, sep, v = cond.partition("=")
                if k not in labels or (sep and labels[k] != v):
                    return False
        elif key in ("before", "since"):
            created = created_of(values[-1])
            if key == "before" and not s.created_at.timestamp() < created:
                return False
            if key == "since" and not s.created_at.timestamp() > created:
                return False
        elif key == "until":
            limit = parse_until(values[-1])
            if not s.created_at.timestamp() < limit:
                return False
        else:
            raise errors.InvalidArgument(f"invalid filter {key!r}: use reference, dangling, label, before, since")
    return True


def inspect(
    rec: ImageRecord, view: ImageView, records: list[ImageRecord], diff_sizes: DiffSizes | None
) -> api.ImageInspect:
    """``docker image inspect`` of ``view`` (``records``: every record of the same image;
    ``diff_sizes``: None when the snapshot service could not say which layers are unpacked)."""
    tags, digests = record_names(records)
    raw = view.config.raw
    unpacked = None if diff_sizes is None else (not view.chain_id or view.chain_id in diff_sizes)
    sizes = diff_sizes or {}
    return api.ImageInspect(
        id=view.id,
        repo_tags=tags,
        repo_digests=digests,
        parent=str(raw.get("parent") or ""),
        comment=str(raw.get("comment") or ""),
        created=str(raw.get("created") or ""),
        author=str(raw.get("author") or ""),
        architecture=str(raw.get("architecture") or ""),
        variant=str(raw.get("variant") or ""),
        os=str(raw.get("os") or ""),
        size=image_size(view, diff_sizes),
        config=view.config.config,
        rootfs={"type": "layers", "layers": list(view.config.diff_ids)},
        layers=[
            api.LayerRef(
                digest=d.digest, media_type=d.media_type, size=d.size, diff_id=i, chain_id=c, diff_size=sizes.get(c)
            )
            for (d, i), c in zip(view.layers(), view.chain_ids, strict=True)
        ],
        chain_id=view.chain_id,
        manifest_digest=view.manifest_desc.digest,
        target=desc_api(rec.target),
        name="" if rec.dangling else rec.name,
        names=sorted(r.name for r in records if not r.dangling),
        labels=rec.labels,
        image_config=raw,
        unpacked=unpacked,
        metadata={"last_tag_time": ts(max(r.updated_at for r in records)).isoformat() if records else ""},
    )


def history(view: ImageView, tags: list[str], diff_sizes: DiffSizes | None = None) -> list[api.HistoryEntry]:
    """``docker history``: the config's history, newest first; non-empty steps get their layer's
    diff size (moby: the layer's DiffSize), or its blob size for an image not wholly unpacked
    (as ``image_size``, so that the steps add up to the image's size); the top entry carries
    the image id and tags, the others ``<missing>``."""
    entries = view.config.raw.get("history") or []
    layers = list(view.manifest.layers)
    unpacked = layer_diff_sizes(view, diff_sizes)
    layer_sizes = unpacked if unpacked is not None else [layer.size for layer in layers]
    out: list[api.HistoryEntry] = []
    layer_index = 0
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        empty = bool(entry.get("empty_layer"))
        size = 0
        if not empty and layer_index < len(layer_sizes):
            size = layer_sizes[layer_index]
            layer_index += 1
        out.append(
            api.HistoryEntry(
                id="<missing>",
                created=parse_created(str(entry.get("created") or "")),
                created_by=str(entry.get("created_by") or ""),
                size=size,
                comment=str(entry.get("comment") or ""),
                empty_layer=empty,
            )
        )
    if not out:
        out = [api.HistoryEntry(id="<missing>", size=size) for size in layer_sizes]
    out.reverse()
    out[0].id = view.id
    out[0].tags = tags
    return out
