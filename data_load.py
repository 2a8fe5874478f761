"""Reading, validating and preparing GCN-PHR data (SPEC §2).

Two on-disk layouts are understood:

* the **legacy** layout of the authors' 2019 release (SPEC §2.2): pickled object arrays
  (``train.npy``, ``val.npy``, ``test.npy``, ``video_hashtag.npy``), three ``*_list.txt`` files and
  three feature files. Reading the pickles runs code from the file, so it needs an explicit opt-in
  (``allow_pickle=True`` / ``--allow_pickle``);
* the project's own, pickle-free **project format** (``meta.json`` + plain ``.npy`` / ``.npz``), which
  ``prepare`` (bring your own data, SPEC §2.3 split) and ``convert`` (legacy → project) write;
  ``cluster`` writes a copy whose video features are soft cluster memberships (``features.py``).

Both are read into one in-memory form (:class:`_Arrays`, global ids), validated by one function
(:func:`_validate`), and exposed as a :class:`Dataset` whose tensors use *local* ids per type.

Shape legend: U users, H hashtags, V videos, R training rows, P user–hashtag pairs,
E pair–video edges (= R), L val/test lines, N negatives per line, F feature dim.

Run as a script: ``python data_load.py {convert,prepare,cluster,inspect} --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import features

FORMAT_VERSION = 1
KINDS = ("user", "hashtag", "video")
LEGACY_FEATURES = (
    ("visual", "FeatureVideo_normal.npy"),
    ("acoustic", "FeatureAudio_avg_normal.npy"),
    ("textual", "FeatureText_normal.npy"),
)
SPLITS = ("val", "test")
SPLIT_KEYS = ("users", "videos", "negatives", "pos_ptr", "pos")
_CHUNK = 8192  # rows per chunk when scanning or copying feature matrices


class DataError(ValueError):
    """A problem with input data; the message is one line naming the file, the row and what was expected."""


def _fail(path, row, expected, got=None) -> DataError:
    where = f"{path}: row {row}: " if row is not None else f"{path}: "
    tail = f", got {got}" if got is not None else ""
    return DataError(f"{where}expected {expected}{tail}")


# --------------------------------------------------------------------------------------------
# Global id space (SPEC §2.2): users [0, U), hashtags [U, U+H), videos [U+H, U+H+V).
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IdSpace:
    """The one place that knows the global id offsets of the released layout.

    Files store global ids; every tensor the rest of the code sees uses local ids per type.
    """

    num_user: int
    num_hashtag: int
    num_video: int

    def offset(self, kind: str) -> int:
        return {"user": 0, "hashtag": self.num_user, "video": self.num_user + self.num_hashtag}[kind]

    def count(self, kind: str) -> int:
        return {"user": self.num_user, "hashtag": self.num_hashtag, "video": self.num_video}[kind]

    def to_local(self, kind: str, ids):
        return ids - self.offset(kind)

    def to_global(self, kind: str, ids):
        return ids + self.offset(kind)

    def check_global(self, kind: str, ids: np.ndarray, path, what: str = "") -> None:
        """Raise :class:`DataError` naming the first row whose global id is not a ``kind`` id."""
        lo, hi = self.offset(kind), self.offset(kind) + self.count(kind)
        bad = np.flatnonzero((ids < lo) | (ids >= hi))
        if bad.size:
            row = int(bad[0]) if ids.ndim == 1 else int(np.unravel_index(bad[0], ids.shape)[0])
            value = ids.reshape(-1)[bad[0]]
            label = f"{what} " if what else ""
            raise _fail(path, row, f"a {label}{kind} id in [{lo}, {hi})", int(value))


# --------------------------------------------------------------------------------------------
# In-memory tensors handed to the model
# --------------------------------------------------------------------------------------------
def _tensor_to(obj, device):
    return replace(obj, **{f.name: getattr(obj, f.name).to(device) for f in fields(obj)
                           if isinstance(getattr(obj, f.name), Tensor)})


@dataclass
class Split:
    """A validation or test split (SPEC §5): one line per held-out video, local ids.

    Attributes:
        users: ``[L]`` user of each line.
        videos: ``[L]`` video of each line (never in the training graph).
        negatives: ``[L, N]`` sampled negative hashtags, fixed in the file.
        pos_ptr: ``[L + 1]`` CSR offsets; the positives of line ``i`` are ``pos[pos_ptr[i]:pos_ptr[i+1]]``.
        pos: ``[sum k]`` positive hashtags.
    """

    users: Tensor
    videos: Tensor
    negatives: Tensor
    pos_ptr: Tensor
    pos: Tensor

    def __len__(self) -> int:
        return int(self.users.numel())

    def to(self, device) -> Split:
        return _tensor_to(self, device)


@dataclass
class PairGraph:
    """The user–hashtag pair graph of SPEC §3, built from training rows only (local ids).

    A pair ``p = (u, h)`` exists when user ``u`` gave hashtag ``h`` to some training video;
    ``V(p)`` are those videos. Every index is sorted so the layers can use CSR segment reductions.

    Attributes:
        pair_user, pair_hashtag: ``[P]`` pairs sorted by ``(user, hashtag)``.
        user_ptr: ``[U + 1]`` CSR: the pairs of user ``u`` are ``user_ptr[u]:user_ptr[u+1]``.
        tag_perm: ``[P]`` pair ids sorted by ``(hashtag, user)``.
        tag_ptr: ``[H + 1]`` CSR over ``tag_perm``.
        pv_ptr: ``[P + 1]`` CSR: the videos of pair ``p`` are ``pv_video[pv_ptr[p]:pv_ptr[p+1]]``.
        pv_video: ``[E]`` video of each pair–video edge, sorted by video within a pair.
        pv_row: ``[E]`` training row behind each edge.
        row_pair: ``[R]`` pair of each training row.
    """

    num_user: int
    num_hashtag: int
    num_video: int
    pair_user: Tensor
    pair_hashtag: Tensor
    user_ptr: Tensor
    tag_perm: Tensor
    tag_ptr: Tensor
    pv_ptr: Tensor
    pv_video: Tensor
    pv_row: Tensor
    row_pair: Tensor

    @property
    def num_pairs(self) -> int:
        return int(self.pair_user.numel())

    def to(self, device) -> PairGraph:
        return _tensor_to(self, device)


def _ptr(counts: np.ndarray) -> np.ndarray:
    ptr = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    return ptr


def build_pair_graph(train: Tensor, num_user: int, num_hashtag: int, num_video: int) -> PairGraph:
    """Group training rows ``[R, 3]`` (local user, video, hashtag) into the pair graph."""
    rows = train.cpu().numpy()
    user, video, tag = rows[:, 0], rows[:, 1], rows[:, 2]
    key = user * num_hashtag + tag                      # [R] pair key
    order = np.lexsort((video, key))                    # [R] rows sorted by pair, then video
    pair_key, counts = np.unique(key[order], return_counts=True)  # [P], [P]
    pair_user, pair_tag = pair_key // num_hashtag, pair_key % num_hashtag
    row_pair = np.empty(rows.shape[0], dtype=np.int64)
    row_pair[order] = np.repeat(np.arange(pair_key.size), counts)
    tag_perm = np.lexsort((pair_user, pair_tag))        # [P]
    as_t = torch.from_numpy
    return PairGraph(
        num_user=num_user, num_hashtag=num_hashtag, num_video=num_video,
        pair_user=as_t(pair_user), pair_hashtag=as_t(pair_tag),
        user_ptr=as_t(_ptr(np.bincount(pair_user, minlength=num_user))),
        tag_perm=as_t(tag_perm),
        tag_ptr=as_t(_ptr(np.bincount(pair_tag, minlength=num_hashtag))),
        pv_ptr=as_t(_ptr(counts)), pv_video=as_t(video[order].copy()), pv_row=as_t(order),
        row_pair=as_t(row_pair),
    )


# --------------------------------------------------------------------------------------------
# The one in-memory form both readers produce (global ids, numpy)
# --------------------------------------------------------------------------------------------
@dataclass
class _Arrays:
    ids: IdSpace
    train: np.ndarray                      # [R, 3] global (user, video, hashtag)
    splits: dict                           # name -> {users, videos, negatives, pos_ptr, pos}, global ids
    vt_ptr: np.ndarray                     # [V + 1]
    vt_idx: np.ndarray                     # [*] global hashtag ids
    blocks: list                           # [(name, array [V, d])]
    names: dict                            # kind -> list[str]
    sources: dict = field(default_factory=dict)  # what -> file it came from (for messages)
    meta: dict = field(default_factory=dict)


def _validate(a: _Arrays, num_neg: int | None) -> None:
    """Every load-time rule of the data contract; raises :class:`DataError` at the first problem."""
    ids, src = a.ids, a.sources
    if a.train.ndim != 2 or a.train.shape[1] != 3 or a.train.shape[0] == 0:
        raise _fail(src["train"], None, "a non-empty [R, 3] array of (user, video, hashtag) rows",
                    f"shape {a.train.shape}")
    for col, kind in enumerate(("user", "video", "hashtag")):
        ids.check_global(kind, a.train[:, col], src["train"])
    key = (a.train[:, 0] * ids.num_video + (a.train[:, 1] - ids.offset("video"))) * ids.num_hashtag \
        + (a.train[:, 2] - ids.offset("hashtag"))
    uniq, first = np.unique(key, return_index=True)
    if uniq.size != key.size:
        dup = np.setdiff1d(np.arange(key.size), first)[0]
        raise _fail(src["train"], int(dup), "unique (user, video, hashtag) training rows",
                    f"a repeat of row {int(np.flatnonzero(key == key[dup])[0])}")
    train_videos = np.zeros(ids.num_video, dtype=bool)
    train_videos[a.train[:, 1] - ids.offset("video")] = True
    train_users = np.zeros(ids.num_user, dtype=bool)
    train_users[a.train[:, 0]] = True
    by_video = np.argsort(a.train[:, 1], kind="stable")                    # [R] rows grouped by video
    other = np.flatnonzero((np.diff(a.train[by_video, 1]) == 0) & (np.diff(a.train[by_video, 0]) != 0))
    if other.size:
        r0, r1 = int(by_video[other[0]]), int(by_video[other[0] + 1])
        raise _fail(src["train"], r1, "one user per video", f"video {int(a.train[r1, 1])} with user "
                    f"{int(a.train[r1, 0])} here and user {int(a.train[r0, 0])} on row {r0}")

    vt = src["video_hashtag"]
    if a.vt_ptr.ndim != 1 or a.vt_idx.ndim != 1:
        raise _fail(vt, None, "a 1-D ptr and a 1-D idx (CSR)", f"ptr {a.vt_ptr.shape}, idx {a.vt_idx.shape}")
    if a.vt_ptr.shape != (ids.num_video + 1,) or a.vt_ptr[0] != 0 or a.vt_ptr[-1] != a.vt_idx.shape[0]:
        raise _fail(vt, None, f"one hashtag list per video ({ids.num_video})", f"{a.vt_ptr.shape[0] - 1}")
    shrink = np.flatnonzero(np.diff(a.vt_ptr) < 0)
    if shrink.size:
        raise _fail(vt, int(shrink[0]), "a non-decreasing ptr (CSR)", "a negative count")
    vt_sorted, vt_line = _sorted_segments(a.vt_ptr, a.vt_idx)          # [sum k] each video's tags, sorted
    bad = np.flatnonzero((a.vt_idx < ids.offset("hashtag")) | (a.vt_idx >= ids.offset("video")))
    if bad.size:
        raise _fail(vt, int(vt_line[bad[0]]), "hashtag ids", int(a.vt_idx[bad[0]]))
    rep = np.flatnonzero((np.diff(vt_sorted) == 0) & (np.diff(vt_line) == 0))
    if rep.size:
        raise _fail(vt, int(vt_line[rep[0]]), "distinct hashtags per video", f"hashtag {int(vt_sorted[rep[0]])} twice")
    vt_key = vt_line * ids.num_hashtag + (vt_sorted - ids.offset("hashtag"))            # sorted (video, tag)
    train_key = (a.train[:, 1] - ids.offset("video")) * ids.num_hashtag + (a.train[:, 2] - ids.offset("hashtag"))
    found = vt_key[np.minimum(np.searchsorted(vt_key, train_key), vt_key.shape[0] - 1)] == train_key \
        if vt_key.size else np.zeros(train_key.shape, dtype=bool)
    stray = np.flatnonzero(~found)
    if stray.size:
        r = int(stray[0])
        raise _fail(src["train"], r, f"a hashtag of the row's video (as listed in {Path(vt).name})",
                    f"hashtag {int(a.train[r, 2])} on video {int(a.train[r, 1])}")

    seen_video = {}
    for name in SPLITS:
        s, path = a.splits[name], src[name]
        users, videos, neg, ptr, pos = (s[k] for k in SPLIT_KEYS)
        if users.ndim != 1 or videos.shape != users.shape or neg.ndim != 2 \
                or neg.shape[0] != users.shape[0] or pos.ndim != 1:
            raise _fail(path, None, "users [L], videos [L], negatives [L, N] and pos [sum k]",
                        f"users {users.shape}, videos {videos.shape}, negatives {neg.shape}, pos {pos.shape}")
        lines = users.shape[0]
        if lines == 0:
            raise _fail(path, None, "at least one line", "an empty split")
        if num_neg is not None and neg.shape[1] != num_neg:
            raise _fail(path, 0, f"exactly {num_neg} negatives per line", neg.shape[1])
        if ptr.ndim != 1:
            raise _fail(path, None, f"pos_ptr of length {lines + 1} from 0 to {pos.shape[0]}", f"shape {ptr.shape}")
        if ptr.shape != (lines + 1,) or ptr[0] != 0 or ptr[-1] != pos.shape[0]:
            raise _fail(path, None, f"pos_ptr of length {lines + 1} from 0 to {pos.shape[0]}",
                        f"length {ptr.shape[0]} from {ptr[:1].tolist()} to {ptr[-1:].tolist()}")
        k = np.diff(ptr)
        if (k < 1).any():
            raise _fail(path, int(np.flatnonzero(k < 1)[0]), "at least one positive hashtag", "none")
        ids.check_global("user", users, path)
        ids.check_global("video", videos, path)
        ids.check_global("hashtag", neg, path, "negative")
        pos_line = np.repeat(np.arange(lines), k)                          # [sum k] line of each positive
        bad = np.flatnonzero((pos < ids.offset("hashtag")) | (pos >= ids.offset("video")))
        if bad.size:
            raise _fail(path, int(pos_line[bad[0]]), "positive hashtag ids in "
                        f"[{ids.offset('hashtag')}, {ids.offset('video')})", int(pos[bad[0]]))
        pos_sorted, _ = _sorted_segments(ptr, pos)                         # [sum k] each line's, sorted
        rep = np.flatnonzero((np.diff(pos_sorted) == 0) & (np.diff(pos_line) == 0))
        if rep.size:
            raise _fail(path, int(pos_line[rep[0]]), "distinct positive hashtags on a line",
                        f"hashtag {int(pos_sorted[rep[0]])} twice")
        local_v = videos - ids.offset("video")
        unseen = np.flatnonzero(~train_users[users])
        if unseen.size:
            raise _fail(path, int(unseen[0]), "a user with training videos (test users are seen in "
                        "training)", f"user {int(users[unseen[0]])}")
        leak = np.flatnonzero(train_videos[local_v])
        if leak.size:
            raise _fail(path, int(leak[0]), "a video that is not in the training split",
                        f"video {int(videos[leak[0]])}")
        order = np.argsort(local_v, kind="stable")
        dup = np.flatnonzero(np.diff(local_v[order]) == 0)
        if dup.size:
            raise _fail(path, int(order[dup[0] + 1]), "one line per video (duplicated line)",
                        f"video {int(videos[order[dup[0] + 1]])} again")
        for other, other_v in seen_video.items():
            clash = np.flatnonzero(np.isin(local_v, other_v))
            if clash.size:
                raise _fail(path, int(clash[0]), f"a video not also in the {other} split",
                            f"video {int(videos[clash[0]])}")
        seen_video[name] = local_v
        count_v = np.diff(a.vt_ptr)[local_v]                               # [L] hashtags of each line's video
        wrong = np.flatnonzero(k != count_v)
        if not wrong.size:                                                 # compare the sorted lists
            at = np.repeat(a.vt_ptr[local_v] - ptr[:-1], k) + np.arange(pos.shape[0])   # [sum k] into vt_sorted
            wrong = np.unique(pos_line[pos_sorted != vt_sorted[at]])
        if wrong.size:
            line = int(wrong[0])
            raise _fail(path, line, f"the hashtags of video {int(videos[line])} in {Path(vt).name} as positives",
                        pos[ptr[line]:ptr[line + 1]].tolist())
        for start in range(0, pos.shape[0], _CHUNK):     # each positive against its line's negatives
            clash = np.flatnonzero((neg[pos_line[start:start + _CHUNK]] == pos[start:start + _CHUNK, None])
                                   .any(axis=1))
            if clash.size:
                line = int(pos_line[start + clash[0]])
                col = np.flatnonzero(np.isin(neg[line], pos[ptr[line]:ptr[line + 1]]))[0]
                raise _fail(path, line, "negatives that are not positives of the same line",
                            f"hashtag {int(neg[line, col])} in both")
        neg_sorted = np.sort(neg, axis=1)
        rep = np.flatnonzero((np.diff(neg_sorted, axis=1) == 0).any(axis=1))
        if rep.size:
            raise _fail(path, int(rep[0]), "distinct negatives on a line", "a repeated negative")

    if not a.blocks:
        raise _fail(src.get("features", "features"), None, "at least one feature block", "none")
    for name, block in a.blocks:
        path = src.get(f"feature:{name}", name)
        if block.ndim != 2 or block.dtype.kind != "f":
            raise _fail(path, None, "a 2-D float matrix", f"{block.ndim}-D {block.dtype}")
        if block.shape[0] != ids.num_video:
            raise _fail(path, None, f"{ids.num_video} rows (one per video, in video order)",
                        f"{block.shape[0]} rows")
        for start, rows in row_chunks(block):
            with np.errstate(over="ignore"):                # stored and used as float32: check that
                chunk = rows.astype(np.float32, copy=False)
            finite = np.isfinite(chunk).all(axis=1)
            if not finite.all():
                raise _fail(path, start + int(np.flatnonzero(~finite)[0]), "finite feature values",
                            "NaN or inf")
    for kind in KINDS:
        if len(a.names[kind]) != ids.count(kind):
            raise _fail(src.get(f"names:{kind}", kind), None, f"{ids.count(kind)} {kind} names",
                        len(a.names[kind]))
        if len(set(a.names[kind])) != len(a.names[kind]):
            first: dict[str, int] = {}
            for row, name in enumerate(a.names[kind]):
                if first.setdefault(name, row) != row:
                    raise _fail(src.get(f"names:{kind}", kind), row, f"distinct {kind} names",
                                f"{name!r} again (row {first[name]})")


def _sorted_segments(ptr: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` sorted within each CSR segment of ``ptr`` (segments stay in order), and each one's segment."""
    seg = np.repeat(np.arange(ptr.shape[0] - 1), np.diff(ptr))               # [sum k], non-decreasing
    return values[np.lexsort((values, seg))], seg


# --------------------------------------------------------------------------------------------
# File helpers
# --------------------------------------------------------------------------------------------
def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        raise _fail(path, None, "an existing file", "it is missing")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise _fail(path, None, "a plain numeric array", "a pickled object array") from None
        raise _fail(path, None, "a readable .npy file", f"{err}".splitlines()[0]) from None
    except (OSError, EOFError) as err:
        raise _fail(path, None, "a readable .npy file", f"{type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else 'truncated'}") from None


def row_chunks(block: np.ndarray):
    """``(start, rows)``: the block ``_CHUNK`` rows at a time (``rows`` is reused: consume it at once).

    A memory-mapped block is read from its file instead: going through the mapping would leave every
    page of it resident in this process (and counted in its memory) next to the copy the caller makes.
    """
    filename, offset = getattr(block, "filename", None), getattr(block, "offset", None)
    if filename is None or offset is None or not block.flags.c_contiguous:
        for start in range(0, block.shape[0], _CHUNK):
            yield start, block[start:start + _CHUNK]
        return
    row_bytes = block.shape[1] * block.dtype.itemsize
    buffer = np.empty((min(_CHUNK, block.shape[0]), block.shape[1]), dtype=block.dtype)
    with open(filename, "rb") as fh:
        for start in range(0, block.shape[0], _CHUNK):
            rows = buffer[: min(_CHUNK, block.shape[0] - start)]
            fh.seek(offset + start * row_bytes)
            if fh.readinto(memoryview(rows).cast("B")) != rows.nbytes:
                raise _fail(Path(filename), start, f"{block.shape[0]} rows of {block.shape[1]} values",
                            "a truncated file")
            yield start, rows


def _load_npz(path: Path, keys) -> dict:
    if not path.is_file():
        raise _fail(path, None, "an existing file", "it is missing")
    if not zipfile.is_zipfile(path):
        raise _fail(path, None, "a .npz (zip) archive", "another kind of file, or a truncated one")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise _fail(path, None, f"arrays {list(keys)}", f"{missing} missing")
            out = {k: npz[k] for k in keys}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        if isinstance(err, DataError):
            raise
        raise _fail(path, None, "a readable .npz file", str(err).splitlines()[0] if str(err) else
                    type(err).__name__) from None
    for k, v in out.items():
        if v.dtype.kind not in "iu":
            raise _fail(path, None, f"integer array '{k}'", str(v.dtype))
        out[k] = v.astype(np.int64, copy=False)
    return out


def _read_names(path: Path) -> list[str]:
    if not path.is_file():
        raise _fail(path, None, "an existing file", "it is missing")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n")
        raise _fail(path, line, "UTF-8 text", "undecodable bytes") from None
    return text.splitlines()


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as JSON so that ``path`` is either the old file or the complete new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _AtomicDir:
    """Build a directory under a temporary name beside ``out`` and rename it into place on success."""

    def __init__(self, out: Path, overwrite: bool):
        self.out, self.overwrite = Path(out), overwrite
        if self.out.exists() and not overwrite:
            raise DataError(f"{self.out}: expected a new output directory, got an existing one "
                            "(pass --overwrite to replace it)")

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.tmp-"))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return False


# --------------------------------------------------------------------------------------------
# Project format
# --------------------------------------------------------------------------------------------
def _read_project(path: Path) -> _Arrays:
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise _fail(meta_path, None, "an existing file (a project-format dataset)", "it is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _fail(meta_path, None, "valid JSON", str(err).splitlines()[0]) from None
    if not isinstance(meta, dict):
        raise _fail(meta_path, None, "a JSON object", type(meta).__name__)
    need = ("format_version", "num_user", "num_hashtag", "num_video", "num_neg", "features")
    missing = [k for k in need if k not in meta]
    if missing:
        raise _fail(meta_path, None, f"keys {list(need)}", f"{missing} missing")
    if meta["format_version"] != FORMAT_VERSION:
        raise _fail(meta_path, None, f"format_version {FORMAT_VERSION}", meta["format_version"])
    counts = [meta[k] for k in need[1:5]]
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise _fail(meta_path, None, f"non-negative integers {list(need[1:5])}", counts)
    if not isinstance(meta["features"], list) or not all(
            isinstance(f, dict) and {"name", "file", "dim"} <= f.keys() for f in meta["features"]):
        raise _fail(meta_path, None, 'features: a list of {"name", "file", "dim"}',
                    json.dumps(meta["features"])[:60])
    for i, spec in enumerate(meta["features"]):
        name, file, dim = spec["name"], spec["file"], spec["dim"]
        if not (isinstance(name, str) and name and isinstance(file, str) and file == Path(file).name
                and file not in ("", ".", "..") and isinstance(dim, int) and not isinstance(dim, bool) and dim > 0):
            raise _fail(meta_path, None, f"features[{i}]: a name, a file name inside the dataset directory "
                        "and a positive integer dim", json.dumps(spec)[:80])
    ids = IdSpace(*counts[:3])
    src = {"train": path / "train.npy", "video_hashtag": path / "video_hashtag.npz", "features": meta_path}
    train = _load_npy(src["train"])
    if train.dtype.kind not in "iu":
        raise _fail(src["train"], None, "an integer array", str(train.dtype))
    splits = {}
    for name in SPLITS:
        src[name] = path / f"{name}.npz"
        splits[name] = _load_npz(src[name], SPLIT_KEYS)
    vt = _load_npz(src["video_hashtag"], ("ptr", "idx"))
    blocks = []
    for spec in meta["features"]:
        fpath = path / spec["file"]
        block = _load_npy(fpath, mmap=True)
        src[f"feature:{spec['name']}"] = fpath
        if block.ndim == 2 and block.shape[1] != spec["dim"]:
            raise _fail(fpath, None, f"{spec['dim']} columns (meta.json)", block.shape[1])
        blocks.append((spec["name"], block))
    names = {}
    for kind in KINDS:
        src[f"names:{kind}"] = path / f"{kind}_list.txt"
        names[kind] = _read_names(src[f"names:{kind}"])
    return _Arrays(ids=ids, train=train.astype(np.int64, copy=False), splits=splits,
                   vt_ptr=vt["ptr"], vt_idx=vt["idx"], blocks=blocks, names=names, sources=src,
                   meta=meta)


def _write_project(a: _Arrays, out: Path, meta: dict, overwrite: bool = False) -> Path:
    with _AtomicDir(out, overwrite) as tmp:
        np.save(tmp / "train.npy", a.train.astype(np.int64))
        for name in SPLITS:
            np.savez(tmp / f"{name}.npz", **{k: np.asarray(v, dtype=np.int64)
                                             for k, v in a.splits[name].items()})
        np.savez(tmp / "video_hashtag.npz", ptr=a.vt_ptr, idx=a.vt_idx)
        specs = []
        for name, block in a.blocks:
            fname = f"features_{name}.npy"
            dst = np.lib.format.open_memmap(tmp / fname, mode="w+", dtype=np.float32,
                                            shape=block.shape)
            for start in range(0, block.shape[0], _CHUNK):
                dst[start:start + _CHUNK] = block[start:start + _CHUNK]
            dst.flush()
            del dst
            specs.append({"name": name, "file": fname, "dim": int(block.shape[1])})
        for kind in KINDS:
            (tmp / f"{kind}_list.txt").write_text("".join(f"{n}\n" for n in a.names[kind]),
                                                   encoding="utf-8")
        full = {"format_version": FORMAT_VERSION, "num_user": a.ids.num_user,
                "num_hashtag": a.ids.num_hashtag, "num_video": a.ids.num_video,
                "num_neg": int(a.splits["test"]["negatives"].shape[1]), "features": specs, **meta}
        write_json_atomic(tmp / "meta.json", full)
    return out


# --------------------------------------------------------------------------------------------
# Legacy layout (SPEC §2.2) — pickles, only with the opt-in
# --------------------------------------------------------------------------------------------
def _pickle_refusal(path: Path) -> DataError:
    return DataError(
        f"{path}: expected permission to unpickle (it is a pickled object array, and unpickling runs "
        "code from the file): pass --allow_pickle (allow_pickle=True) only if you trust it, or convert "
        "it once with `python data_load.py convert LEGACY_DIR OUT_DIR --allow_pickle`")


def _load_pickled(path: Path) -> np.ndarray:
    if not path.is_file():
        raise _fail(path, None, "an existing file", "it is missing")
    try:
        return np.load(path, allow_pickle=True)
    except Exception as err:  # noqa: BLE001 — any unpickling failure is bad input here
        raise _fail(path, None, "a readable pickled .npy file",
                    f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None


def _int_row(path, row, value, length=None) -> list[int]:
    try:
        out = [int(x) for x in np.asarray(value, dtype=object).ravel()]
    except (TypeError, ValueError):
        raise _fail(path, row, "integer ids", repr(value)[:60]) from None
    if length is not None and len(out) != length:
        raise _fail(path, row, f"{length} ids", len(out))
    return out


def _read_legacy(path: Path, allow_pickle: bool) -> _Arrays:
    names = {kind: _read_names(path / f"{kind}_list.txt") for kind in KINDS}
    ids = IdSpace(*(len(names[k]) for k in KINDS))
    src = {"train": path / "train.npy", "video_hashtag": path / "video_hashtag.npy",
           **{f"names:{k}": path / f"{k}_list.txt" for k in KINDS}}
    if not allow_pickle:
        raise _pickle_refusal(src["train"])
    raw = _load_pickled(src["train"])
    train = np.empty((len(raw), 3), dtype=np.int64)
    for i, row in enumerate(raw):
        try:
            (user, video), tag = row
        except (TypeError, ValueError):
            raise _fail(src["train"], i, "((user, video), hashtag)", repr(row)[:60]) from None
        train[i] = _int_row(src["train"], i, (user, video, tag), 3)
    vt_raw = _load_pickled(src["video_hashtag"])
    vt_lists = [_int_row(src["video_hashtag"], i, r) for i, r in enumerate(vt_raw)]
    vt_ptr = _ptr(np.array([len(r) for r in vt_lists], dtype=np.int64))
    vt_idx = np.array([h for r in vt_lists for h in r], dtype=np.int64)
    splits = {}
    for name in SPLITS:
        src[name] = path / f"{name}.npy"
        rows = _load_pickled(src[name])
        users, videos, negs, pos_lists = [], [], [], []
        for i, row in enumerate(rows):
            vals = _int_row(src[name], i, row)
            if len(vals) < 4:
                raise _fail(src[name], i, "[user, video, negatives…, positives…]", f"{len(vals)} ids")
            v = vals[1] - ids.offset("video")
            if not 0 <= v < ids.num_video:
                raise _fail(src[name], i, f"a video id in [{ids.offset('video')}, "
                            f"{ids.offset('video') + ids.num_video})", vals[1])
            k = int(vt_ptr[v + 1] - vt_ptr[v])      # positives = that video's hashtags
            if k < 1:
                raise _fail(src[name], i, "a video with at least one hashtag in video_hashtag.npy",
                            f"video {vals[1]} with none")
            if sorted(vals[-k:]) != sorted(vt_lists[v]):
                raise _fail(src[name], i, f"the video's {k} hashtags from video_hashtag.npy last",
                            vals[-k:])
            users.append(vals[0])
            videos.append(vals[1])
            negs.append(vals[2:-k])
            pos_lists.append(vals[-k:])
        if not users:
            raise _fail(src[name], None, "at least one line", "an empty split")
        n = len(negs[0])
        ragged = [i for i, r in enumerate(negs) if len(r) != n]
        if ragged:
            raise _fail(src[name], ragged[0], f"{n} negatives (as on line 0)", len(negs[ragged[0]]))
        splits[name] = {"users": np.array(users, dtype=np.int64),
                        "videos": np.array(videos, dtype=np.int64),
                        "negatives": np.array(negs, dtype=np.int64).reshape(len(users), n),
                        "pos_ptr": _ptr(np.array([len(p) for p in pos_lists], dtype=np.int64)),
                        "pos": np.array([h for p in pos_lists for h in p], dtype=np.int64)}
    blocks = []
    for name, fname in LEGACY_FEATURES:
        src[f"feature:{name}"] = path / fname
        blocks.append((name, _load_npy(path / fname, mmap=True)))
    return _Arrays(ids=ids, train=train, splits=splits, vt_ptr=vt_ptr, vt_idx=vt_idx, blocks=blocks,
                   names=names, sources=src, meta={"source": f"legacy:{path}"})


def _is_legacy(path: Path) -> bool:
    return not (path / "meta.json").exists() and not (path / "val.npz").exists() \
        and (path / "user_list.txt").exists()


def _read_any(path, allow_pickle: bool) -> _Arrays:
    path = Path(path)
    if not path.is_dir():
        raise _fail(path, None, "a dataset directory", "no such directory")
    a = _read_legacy(path, allow_pickle) if _is_legacy(path) else _read_project(path)
    _validate(a, a.meta.get("num_neg"))
    return a


def write_legacy(dataset_dir, out_dir, overwrite: bool = False) -> Path:
    """Write a project-format dataset in the released, pickled layout (for testing the legacy reader)."""
    a = _read_any(dataset_dir, allow_pickle=False)
    if len(a.blocks) != len(LEGACY_FEATURES):
        raise DataError(f"{dataset_dir}: expected three feature blocks (visual, acoustic, textual, "
                        f"in that order) for the legacy layout, got {[n for n, _ in a.blocks]}")
    with _AtomicDir(Path(out_dir), overwrite) as tmp:
        for kind in KINDS:
            (tmp / f"{kind}_list.txt").write_text("".join(f"{n}\n" for n in a.names[kind]),
                                                   encoding="utf-8")
        train = np.empty(a.train.shape[0], dtype=object)
        train[:] = [((int(u), int(v)), int(h)) for u, v, h in a.train]
        np.save(tmp / "train.npy", train, allow_pickle=True)
        vt = np.empty(a.ids.num_video, dtype=object)
        vt[:] = [a.vt_idx[a.vt_ptr[i]:a.vt_ptr[i + 1]].tolist() for i in range(a.ids.num_video)]
        np.save(tmp / "video_hashtag.npy", vt, allow_pickle=True)
        for name in SPLITS:
            s = a.splits[name]
            rows = np.empty(s["users"].shape[0], dtype=object)
            rows[:] = [[int(s["users"][i]), int(s["videos"][i]), *s["negatives"][i].tolist(),
                        *s["pos"][s["pos_ptr"][i]:s["pos_ptr"][i + 1]].tolist()]
                       for i in range(rows.shape[0])]
            np.save(tmp / f"{name}.npy", rows, allow_pickle=True)
        for (_, block), (_, fname) in zip(a.blocks, LEGACY_FEATURES):
            np.save(tmp / fname, np.asarray(block, dtype=np.float32))
    return Path(out_dir)


def convert(legacy_dir, out_dir, allow_pickle: bool = False, overwrite: bool = False) -> Path:
    """Legacy layout → project format, same content (global ids, names and features unchanged)."""
    if not _is_legacy(Path(legacy_dir)):
        raise _fail(Path(legacy_dir) / "user_list.txt", None, "a legacy dataset directory",
                    "no user_list.txt (or a meta.json: already project format)")
    a = _read_any(legacy_dir, allow_pickle)
    return _write_project(a, Path(out_dir), {"source": f"convert:{Path(legacy_dir).resolve()}",
                                             "seed": None}, overwrite)


def cluster(dataset_dir, out_dir, k: int = 30, temperature: float = 0.1, seed: int = 0, restarts: int = 3,
            allow_pickle: bool = False, overwrite: bool = False) -> Path:
    """A copy of a dataset whose video features are soft memberships of ``k`` clusters (``features.py``):
    spherical k-means fitted on the training videos' features, ``softmax(cosine / temperature)`` for every
    video. Ids, split, negatives and names are unchanged; ``meta.json`` records how the features were made
    (``features_from``) and keeps the source's other records (such as the generator's)."""
    if k < 1 or temperature <= 0 or restarts < 1:
        raise DataError(f"cluster: expected k >= 1, temperature > 0 and restarts >= 1, got k {k}, "
                        f"temperature {temperature}, restarts {restarts}")
    a = _read_any(dataset_dir, allow_pickle)
    fit = np.unique(a.ids.to_local("video", a.train[:, 1]))                       # [n] the training videos
    if k > fit.size:
        raise DataError(f"{dataset_dir}: cluster: expected k at most the {fit.size} training videos, got {k}")
    source = [name for name, _ in a.blocks]
    a.blocks = [("clusters", features.cluster_blocks([b for _, b in a.blocks], fit, k, temperature, seed,
                                                     restarts=restarts))]
    kept = {key: v for key, v in a.meta.items()
            if key not in ("format_version", "num_user", "num_hashtag", "num_video", "num_neg", "features")}
    record = {"method": "spherical k-means on the training videos, softmax(cosine / temperature)", "k": k,
              "temperature": temperature, "seed": seed, "restarts": restarts, "blocks": source,
              "from": str(Path(dataset_dir).resolve())}
    return _write_project(a, Path(out_dir), {"seed": None, **kept, "features_from": record}, overwrite)


# --------------------------------------------------------------------------------------------
# prepare: bring your own data (SPEC §2.3)
# --------------------------------------------------------------------------------------------
def _read_posts(path: Path):
    """Read ``posts.tsv``: header ``video user hashtags``; one line per micro-video."""
    if not path.is_file():
        raise _fail(path, None, "an existing file", "it is missing")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise _fail(path, line, "UTF-8 text", "undecodable bytes") from None
    if not lines or lines[0].split("\t") != ["video", "user", "hashtags"]:
        raise _fail(path, 1, "the header 'video<TAB>user<TAB>hashtags'",
                    repr(lines[0][:60]) if lines else "an empty file")
    videos, users, tags = [], [], []
    seen = {}
    for lineno, line in enumerate((text.split("\t") for text in lines[1:]), start=2):
        if len(line) != 3:
            raise _fail(path, lineno, "3 tab-separated fields (video, user, hashtags)", len(line))
        video, user, tag_field = (x.strip() for x in line)
        tag_list = tag_field.split()
        if not video or not user:
            raise _fail(path, lineno, "non-empty video and user ids", repr(line)[:60])
        if not tag_list:
            raise _fail(path, lineno, "at least one hashtag", "none")
        if len(set(tag_list)) != len(tag_list):
            raise _fail(path, lineno, "distinct hashtags on a line", tag_field[:60])
        if video in seen:
            raise _fail(path, lineno, "one line per video", f"video {video!r} again (line {seen[video]})")
        seen[video] = lineno
        videos.append(video)
        users.append(user)
        tags.append(tag_list)
    if not videos:
        raise _fail(path, None, "at least one micro-video line", "only the header")
    return videos, users, tags


def _index(values) -> tuple[np.ndarray, list[str]]:
    """Ids in order of first appearance."""
    table: dict[str, int] = {}
    idx = np.array([table.setdefault(v, len(table)) for v in values], dtype=np.int64)
    return idx, list(table)


def _sample_negatives(rng: np.random.Generator, pos_ptr, pos, num_hashtag, num_neg) -> np.ndarray:
    """``[L, N]`` negatives per line, uniform without replacement over hashtags not on the line."""
    lines = pos_ptr.size - 1
    out = np.empty((lines, num_neg), dtype=np.int64)
    step = max(1, 2 ** 24 // max(num_hashtag, 1))
    for start in range(0, lines, step):
        stop = min(lines, start + step)
        keys = rng.random((stop - start, num_hashtag))               # [b, H] random keys
        lo, hi = pos_ptr[start], pos_ptr[stop]
        line = np.repeat(np.arange(stop - start), np.diff(pos_ptr[start:stop + 1]))
        keys[line, pos[lo:hi]] = 2.0                                   # positives sort last
        out[start:stop] = np.sort(np.argpartition(keys, num_neg - 1, axis=1)[:, :num_neg], axis=1)
    return out


def prepare(posts, features, out, seed: int, num_neg: int = 1000, source: str = "prepare",
            extra_meta: dict | None = None, overwrite: bool = False) -> Path:
    """Build a project-format dataset from ``posts.tsv`` and feature files (SPEC §2.3 split).

    Per user: shuffle her videos, ``int(0.8 n)`` to train, ``int(0.5 rest)`` of the rest to
    validation, the remainder to test; every held-out video gets ``num_neg`` negatives drawn
    uniformly without replacement from all hashtags not on it. Seeded: same inputs, same files.
    """
    if num_neg < 1 or seed < 0:
        raise DataError(f"prepare: expected num_neg >= 1 and seed >= 0, got num_neg {num_neg}, seed {seed}")
    posts = Path(posts)
    video_names, user_names_raw, tag_lists = _read_posts(posts)
    user, user_names = _index(user_names_raw)                          # [V]
    tag_flat, tag_names = _index([t for ts in tag_lists for t in ts])
    num_v, num_u, num_h = len(video_names), len(user_names), len(tag_names)
    ids = IdSpace(num_u, num_h, num_v)
    vt_ptr = _ptr(np.array([len(ts) for ts in tag_lists], dtype=np.int64))   # [V + 1]

    counts = np.bincount(user, minlength=num_u)
    if (counts < 2).any():
        u = int(np.flatnonzero(counts < 2)[0])
        raise _fail(posts, user_names_raw.index(user_names[u]) + 2,
                    f"at least 2 videos per user (user {user_names[u]!r} has 1: with no training "
                    "video it could not be a test user)")
    max_k = int(np.diff(vt_ptr).max())
    if num_h - max_k < num_neg:
        raise _fail(posts, None, f"at least {num_neg} + {max_k} hashtags to draw {num_neg} negatives "
                    "per line from (lower --num_neg)", f"{num_h} hashtags")

    blocks, src = [], {}
    for fpath in map(Path, features):
        block = _load_npy(fpath, mmap=True)
        if block.ndim != 2 or block.dtype.kind != "f":
            raise _fail(fpath, None, "a 2-D float matrix", f"{block.ndim}-D {block.dtype}")
        if block.shape[0] != num_v:
            raise _fail(fpath, None, f"{num_v} rows, one per line of {posts.name} in the same order",
                        f"{block.shape[0]} rows")
        name = fpath.stem
        if name in dict(blocks):
            raise _fail(fpath, None, "distinct feature file names", f"{name!r} twice")
        blocks.append((name, block))
        src[f"feature:{name}"] = fpath
    if not blocks:
        raise DataError(f"{posts}: expected at least one features file, got none")

    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(num_v), user))                      # [V] by user, shuffled within
    first = _ptr(counts)[user[order]]                                  # [V] start of each user's run
    rank = np.arange(num_v) - first                                    # [V] position within the user
    n = counts[user[order]]
    n_train = (0.8 * n).astype(np.int64)
    n_val = ((n - n_train) * 0.5).astype(np.int64)
    part = np.where(rank < n_train, 0, np.where(rank < n_train + n_val, 1, 2))
    split_of = np.empty(num_v, dtype=np.int64)
    split_of[order] = part                                             # 0 train, 1 val, 2 test

    g_user, g_tag = ids.to_global("user", user), ids.to_global("hashtag", tag_flat)
    vt_video = np.repeat(np.arange(num_v), np.diff(vt_ptr))            # [sum k] video of each tag
    in_train = split_of[vt_video] == 0
    train = np.stack([g_user[vt_video[in_train]], ids.to_global("video", vt_video[in_train]),
                      g_tag[in_train]], axis=1)
    splits = {}
    for code, name in ((1, "val"), (2, "test")):
        vids = np.flatnonzero(split_of == code)                        # [L] in posts order
        k = np.diff(vt_ptr)[vids]
        pos_ptr = _ptr(k)
        pos_local = np.concatenate([tag_flat[vt_ptr[v]:vt_ptr[v + 1]] for v in vids]) \
            if vids.size else np.zeros(0, np.int64)
        neg = _sample_negatives(rng, pos_ptr, pos_local, num_h, num_neg)
        splits[name] = {"users": g_user[vids], "videos": ids.to_global("video", vids),
                        "negatives": ids.to_global("hashtag", neg), "pos_ptr": pos_ptr,
                        "pos": ids.to_global("hashtag", pos_local)}
    a = _Arrays(ids=ids, train=train, splits=splits, vt_ptr=vt_ptr, vt_idx=g_tag, blocks=blocks,
                names={"user": user_names, "hashtag": tag_names, "video": video_names},
                sources={"train": posts, "val": posts, "test": posts, "video_hashtag": posts, **src})
    _validate(a, num_neg)
    meta = {"seed": seed, "source": source, **(extra_meta or {})}
    return _write_project(a, Path(out), meta, overwrite)


# --------------------------------------------------------------------------------------------
# The loaded dataset
# --------------------------------------------------------------------------------------------
class Dataset:
    """A validated dataset with local-id CPU tensors, ready for ``.to(device)``.

    Attributes:
        train: ``[R, 3]`` local ``(user, video, hashtag)`` training rows.
        val, test: :class:`Split`.
        video_tags_ptr, video_tags: ``[V + 1]``, ``[*]`` CSR of every video's hashtags (local).
        graph: :class:`PairGraph` built from the training rows.
        feature_blocks: memory-mapped float ``[V, d_i]`` blocks.
    """

    def __init__(self, path: Path, a: _Arrays):
        self.path, self.meta, self.ids = path, a.meta, a.ids
        self.num_user, self.num_hashtag, self.num_video = a.ids.num_user, a.ids.num_hashtag, a.ids.num_video
        self.num_neg = int(a.splits["test"]["negatives"].shape[1])
        local = np.stack([a.ids.to_local(k, a.train[:, i])
                          for i, k in enumerate(("user", "video", "hashtag"))], axis=1)
        self.train = torch.from_numpy(np.ascontiguousarray(local))
        self.val, self.test = (self._split(a.splits[n]) for n in SPLITS)
        self.video_tags_ptr = torch.from_numpy(a.vt_ptr)
        self.video_tags = torch.from_numpy(a.ids.to_local("hashtag", a.vt_idx))
        self.graph = build_pair_graph(self.train, self.num_user, self.num_hashtag, self.num_video)
        self.feature_blocks = [b for _, b in a.blocks]
        self.feature_names = [n for n, _ in a.blocks]
        self.user_names, self.hashtag_names, self.video_names = (a.names[k] for k in KINDS)

    def _split(self, s: dict) -> Split:
        ids = self.ids
        return Split(users=torch.from_numpy(s["users"]),
                     videos=torch.from_numpy(ids.to_local("video", s["videos"])),
                     negatives=torch.from_numpy(ids.to_local("hashtag", s["negatives"])),
                     pos_ptr=torch.from_numpy(s["pos_ptr"]),
                     pos=torch.from_numpy(ids.to_local("hashtag", s["pos"])))

    @property
    def feature_dim(self) -> int:
        return sum(b.shape[1] for b in self.feature_blocks)

    def features(self, order: Tensor | None = None) -> Tensor:
        """``[V, F]`` contiguous float32 concatenation of the feature blocks; with ``order`` [V] (a
        permutation of the local video ids) row ``i`` holds video ``order[i]`` instead of video ``i``."""
        position = None  # [V] row of each video
        if order is not None:
            order = np.asarray(order.cpu() if isinstance(order, Tensor) else order, dtype=np.int64)
            if order.shape != (self.num_video,) or not np.array_equal(np.sort(order), np.arange(self.num_video)):
                raise ValueError(f"features: expected order to be a permutation of the {self.num_video} videos")
            position = np.empty_like(order)
            position[order] = np.arange(self.num_video)
        out = torch.empty(self.num_video, self.feature_dim)  # not np.empty: numpy asks for huge pages, and
        dst = out.numpy()                                    # first writes of strided copies into those are slow
        col = 0
        for block in self.feature_blocks:
            for start, rows in row_chunks(block):
                where = slice(start, start + rows.shape[0]) if position is None \
                    else position[start:start + rows.shape[0]]
                dst[where, col:col + block.shape[1]] = rows
            col += block.shape[1]
        return out

    def __repr__(self) -> str:
        return (f"Dataset({self.path}, users={self.num_user}, hashtags={self.num_hashtag}, "
                f"videos={self.num_video}, train_rows={len(self.train)}, val={len(self.val)}, "
                f"test={len(self.test)}, features={self.feature_dim})")


def load_dataset(path, allow_pickle: bool = False) -> Dataset:
    """Load and validate a dataset directory (project format, or legacy with ``allow_pickle``)."""
    return Dataset(Path(path), _read_any(path, allow_pickle))


# --------------------------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------------------------
def describe(ds: Dataset) -> str:
    """A human-readable summary of a dataset (counts, distributions, splits, generator record)."""
    def stats(x: np.ndarray) -> str:
        return (f"mean {x.mean():.2f}  median {np.median(x):.0f}  min {x.min()}  max {x.max()}"
                if x.size else "none")

    per_video = np.diff(ds.video_tags_ptr.numpy())
    users_all = np.concatenate([ds.train[:, 0].numpy(), ds.val.users.numpy(), ds.test.users.numpy()])
    videos_all = np.concatenate([ds.train[:, 1].numpy(), ds.val.videos.numpy(), ds.test.videos.numpy()])
    _, first = np.unique(videos_all, return_index=True)
    per_user = np.bincount(users_all[first], minlength=ds.num_user)
    tag_freq = np.sort(np.bincount(ds.train[:, 2].numpy(), minlength=ds.num_hashtag))[::-1]
    head = max(1, ds.num_hashtag // 100)
    lines = [
        f"dataset      {ds.path}  ({ds.meta.get('source', '?')}, seed {ds.meta.get('seed')})",
        f"counts       users {ds.num_user}  hashtags {ds.num_hashtag}  videos {ds.num_video}",
        f"splits       train videos {len(np.unique(ds.train[:, 1].numpy()))} "
        f"({len(ds.train)} rows)  val {len(ds.val)}  test {len(ds.test)}  negatives/line {ds.num_neg}",
        f"tags/video   {stats(per_video)}",
        f"videos/user  {stats(per_user)}",
        f"pairs        {ds.graph.num_pairs} user-hashtag pairs in the training graph",
        f"popularity   top 1% of hashtags hold {tag_freq[:head].sum() / max(tag_freq.sum(), 1):.1%} "
        f"of training uses; {(tag_freq == 1).sum()} used once, {(tag_freq == 0).sum()} never in training",
        "features     " + "  ".join(f"{n} {b.shape[1]}" for n, b in zip(ds.feature_names,
                                                                         ds.feature_blocks)),
    ]
    if "generator" in ds.meta:
        lines.append(f"generator    {json.dumps(ds.meta['generator'], sort_keys=True)}")
    return "\n".join(lines)


def exit_status(command) -> int:
    """Run a command line's ``command()``: 0, or 2 with its :class:`DataError` as one line on stderr."""
    try:
        command()
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="GCN-PHR data tools (SPEC §2).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="legacy (released, pickled) layout -> project format")
    p.add_argument("legacy_dir")
    p.add_argument("out_dir")
    p.add_argument("--allow_pickle", action="store_true",
                   help="allow unpickling the legacy .npy files (runs code from them: trusted files only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    p = sub.add_parser("prepare", help="posts.tsv + feature files -> seeded split in project format")
    p.add_argument("--posts", required=True, help="TSV with header 'video user hashtags'")
    p.add_argument("--features", required=True, nargs="+", help="one .npy per feature block, "
                   "one row per posts.tsv line, same order")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--num_neg", type=int, default=1000, help="negatives per val/test line")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p = sub.add_parser("cluster", help="a copy of a dataset whose video features are soft cluster memberships "
                       "(spherical k-means on the training videos; features.py)")
    p.add_argument("dir")
    p.add_argument("out_dir")
    p.add_argument("--k", type=int, default=30, help="number of clusters")
    p.add_argument("--temperature", type=float, default=0.1, help="softmax temperature over the cosines")
    p.add_argument("--seed", type=int, default=0, help="seed of the k-means++ draws")
    p.add_argument("--restarts", type=int, default=3, help="k-means restarts (the best fit is kept)")
    p.add_argument("--allow_pickle", action="store_true", help="allow reading a legacy dataset")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    p = sub.add_parser("inspect", help="print counts and distributions of a dataset")
    p.add_argument("dir")
    p.add_argument("--allow_pickle", action="store_true", help="allow reading a legacy dataset")
    args = parser.parse_args(argv)

    def command() -> None:
        if args.command == "convert":
            out = convert(args.legacy_dir, args.out_dir, args.allow_pickle, args.overwrite)
            print(describe(load_dataset(out)))
        elif args.command == "prepare":
            out = prepare(args.posts, args.features, args.out, args.seed, args.num_neg,
                          overwrite=args.overwrite)
            print(describe(load_dataset(out)))
        elif args.command == "cluster":
            out = cluster(args.dir, args.out_dir, args.k, args.temperature, args.seed, args.restarts,
                          args.allow_pickle, args.overwrite)
            print(describe(load_dataset(out)))
        else:
            print(describe(load_dataset(args.dir, args.allow_pickle)))

    return exit_status(command)


if __name__ == "__main__":
    sys.exit(main())
