"""``python -m harness.data prepare``: fetch each dataset's files (harness.data.sources), verify their MD5s,
extract them into the layout the readers expect (PROTOCOL.md 3.2), and end with ``check`` passing.

Nothing is left half done:

* a download goes to a ``.part`` file beside its target (gdown's, which resumes it with an HTTP Range
  request on the next run) and gets its final name only once complete; a file whose MD5 differs from the
  table's is an error naming the file and both digests, and is deleted (a file of the user's, from
  ``--from``, is never deleted); a download without a published checksum is deleted when its dataset
  fails to extract or to pass ``check``, since nothing else tells a good copy from a host's error page;
* a dataset is extracted into ``<root>/.preparing/<key>/`` and renamed into place only when ``check``
  passes there; a failure removes the staging folder and leaves the data root as it was;
* a dataset already in place that ``check`` passes (without decoding) is skipped; ``--force`` prepares it
  again and replaces it only once the new copy is complete.

``--from DIR``: the files are taken from DIR (copied there by hand: a cluster without internet, a dataset
behind a login) and no network is used; what DIR lacks is listed with where to fetch it. Downloads are
kept under ``<root>/.downloads/<key>/`` until their dataset is in place. Each run logs to
``<root>/.prepare-logs/``.
"""

from __future__ import annotations

import hashlib
import logging
import lzma
import os
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib

from .errors import DatasetError
from .progress import Progress
from .registry import get_info
from .sources import ARCHIVE_SUFFIXES, SOURCES, DatasetSources, Source, file_md5, human_size, sources_for
from .verify import check_dataset

logger = logging.getLogger("harness.data.prepare")

DOWNLOADS = ".downloads"
STAGING = ".preparing"
LOGS = ".prepare-logs"
TIMEOUT_S = 60  # between two bytes from a server: a stalled transfer fails (and resumes next run)
RETRIES = 3


class PrepareError(DatasetError):
    """A dataset could not be prepared (a file missing, a checksum mismatch, an archive of the wrong shape)."""


def _fetch(src: Source, path: str, retries: int = RETRIES) -> str:
    """Download ``src`` to ``path`` (resuming a ``.part`` file); returns the MD5 of what arrived."""
    import gdown  # a maintained client: resumable HTTP(S) downloads, and Google Drive's confirmation pages

    os.makedirs(os.path.dirname(path), exist_ok=True)
    md5 = hashlib.md5(usedforsecurity=False)
    progress = Progress(src.size, f"downloading {src.name}", logger)
    logger.info("downloading %s (%s) from %s", src.name, human_size(src.size), src.url)
    try:
        gdown.download(
            src.url,
            output=path,
            quiet=True,
            resume=True,
            progress=progress.update_to,
            hasher=md5,
            timeout=TIMEOUT_S,
            retries=retries,
        )
    except Exception as e:  # gdown's and requests' errors: the partial file stays for the next run
        raise PrepareError(
            f"downloading {src.name} from {src.url} failed ({type(e).__name__}: {e}); run prepare again to resume, "
            f"or fetch the file by hand into a folder DIR and run prepare with --from DIR"
        ) from e
    finally:
        progress.close()
    return md5.hexdigest()


def _verify(src: Source, path: str, found: str | None = None, delete: bool = False) -> None:
    if not src.md5:
        after = "; its images are decoded after extraction" if src.is_archive else ""
        logger.info("%s: no published checksum%s", src.name, after)
        return
    found = found or file_md5(path)
    if found != src.md5:
        if delete:
            os.remove(path)
        fix = (
            "it was deleted: run prepare again to download it again"
            if delete
            else f"replace it with an intact copy ({src.url or 'the dataset site'})"
        )
        raise PrepareError(f"{path}: MD5 {found}, expected {src.md5} (the published {src.name}); {fix}")
    logger.info("%s: MD5 %s verified", src.name, found)


def _obtain(key: str, ds: DatasetSources, root: str, from_dir: str | None, retries: int) -> dict[str, str]:
    """Path of each file of ``ds``, verified (downloaded where needed). What cannot be had (not in
    ``from_dir``; no URL and not fetched by hand) is listed in one PrepareError before any download."""

    def local(src: Source) -> str:
        return (
            os.path.join(from_dir, src.name) if from_dir is not None else os.path.join(root, DOWNLOADS, key, src.name)
        )

    missing = [s for s in ds.files if not os.path.isfile(local(s)) and (from_dir is not None or s.url is None)]
    if missing:
        # with --from no network is used, so the folder must hold the downloadable files too
        also = [s for s in ds.files if s not in missing and not (from_dir and os.path.isfile(local(s)))]

        def listed(files):
            return "; ".join(
                f"{s.name} ({human_size(s.size)}{', MD5 ' + s.md5 if s.md5 else ''}) from {s.url or ds.page}"
                for s in files
            )

        how = f" ({ds.manual})" if any(s.url is None for s in missing) and ds.manual else ""
        raise PrepareError(
            f"missing {listed(missing)}. Fetch them{how} into {from_dir or 'a folder DIR'}"
            + (f", with {listed(also)}" if also else "")
            + f", then run: python -m harness.data prepare --root {root} --dataset {key} --from {from_dir or 'DIR'}"
        )
    paths = {}
    for src in ds.files:
        path = local(src)
        if from_dir is not None:
            _verify(src, path)  # the user's copy: refused if damaged, never deleted
        elif os.path.isfile(path):  # an earlier run's complete download (a .part file until complete)
            _verify(src, path, delete=True)
        else:
            _verify(src, path, found=_fetch(src, path, retries), delete=True)
        paths[src.name] = path
    return paths


def _move_contents(src_dir: str, dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    for name in sorted(os.listdir(src_dir)):
        target = os.path.join(dest, name)
        if os.path.exists(target):
            raise PrepareError(f"{target} would be written twice: two files of the source table put it there")
        shutil.move(os.path.join(src_dir, name), target)


def _extract(path: str, dest: str, remove_finished: bool = False) -> None:
    from torchvision.datasets.utils import extract_archive

    logger.info("extracting %s (%s) into %s", os.path.basename(path), human_size(os.path.getsize(path)), dest)
    try:
        extract_archive(path, dest, remove_finished=remove_finished)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as e:
        # a file without a published checksum can be anything: an HTML page of a host's quota, a cut transfer
        raise PrepareError(f"{path} is not a readable archive ({type(e).__name__}: {e})") from e


def _place(src: Source, path: str, ddir: str, scratch: str) -> None:
    """Put ``src`` (at ``path``) where the table says under the staging dataset folder ``ddir``."""
    if src.into is None:
        return
    dest = os.path.join(ddir, src.into)
    os.makedirs(dest, exist_ok=True)
    if not src.is_archive:
        shutil.copyfile(path, os.path.join(dest, src.name))
        return
    if not src.take:
        _extract(path, dest)
    else:
        tmp = tempfile.mkdtemp(dir=scratch)
        _extract(path, tmp)
        inner = os.path.join(tmp, src.take)
        if os.path.isdir(inner):
            _move_contents(inner, dest)
        elif os.path.isfile(inner):
            _extract(inner, dest)
        else:
            raise PrepareError(
                f"{path} holds no {src.take} (found: {', '.join(sorted(os.listdir(tmp)))}); "
                f"it is not the published {src.name}"
            )
        shutil.rmtree(tmp)
    if src.inner_archives:
        inner = [n for n in sorted(os.listdir(dest)) if n.endswith(ARCHIVE_SUFFIXES)]
        progress = Progress(len(inner), f"extracting the archives inside {src.name}", logger, unit="archives")
        for name in inner:
            _extract(os.path.join(dest, name), os.path.join(dest, name.split(".")[0]), remove_finished=True)
            progress.update()
        progress.close()


def _arrange_imagenet_val(ddir: str, paths: dict[str, str], scratch: str) -> None:
    """Sort the 50,000 validation images into their wnid folders, from the devkit's ground truth (the
    validation image with the n-th file name has the n-th label; labels are the devkit's ILSVRC2012_IDs)."""
    from scipy.io import loadmat

    tmp = tempfile.mkdtemp(dir=scratch)
    _extract(paths["ILSVRC2012_devkit_t12.tar.gz"], tmp)
    data = os.path.join(tmp, "ILSVRC2012_devkit_t12", "data")
    synsets = loadmat(os.path.join(data, "meta.mat"), squeeze_me=True)["synsets"]
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    with open(os.path.join(data, "ILSVRC2012_validation_ground_truth.txt")) as f:
        labels = [int(x) for x in f.read().split()]
    val = os.path.join(ddir, "images", "val")
    images = sorted(n for n in os.listdir(val) if os.path.isfile(os.path.join(val, n)))
    if len(images) != len(labels):
        raise PrepareError(
            f"ILSVRC2012_img_val.tar holds {len(images)} images but the devkit's ground truth lists {len(labels)}; "
            "the two files are not of the same release"
        )
    for name, label in zip(images, labels):
        wnid_dir = os.path.join(val, id_to_wnid[label])
        os.makedirs(wnid_dir, exist_ok=True)
        os.rename(os.path.join(val, name), os.path.join(wnid_dir, name))
    shutil.rmtree(tmp)
    logger.info("arranged %d validation images into %d wnid folders", len(images), len(set(labels)))


ARRANGERS = {"imagenet_val": _arrange_imagenet_val}


def prepare_dataset(
    key: str,
    root: str,
    from_dir: str | None = None,
    force: bool = False,
    sources: str | None = None,
    retries: int = RETRIES,
) -> str:
    """Prepare one dataset under ``root``; returns "prepared", "skipped" (already there) or "generated".
    ``sources``: a JSON file of URL/MD5 overrides (default ``$HARNESS_DATA_SOURCES``); ``retries``: further
    attempts of an interrupted download within this call (each resumes it)."""
    info = get_info(key)
    root = os.path.abspath(os.path.expanduser(root))
    final = os.path.join(root, info.folder)
    if info.generate is not None:
        if os.path.isdir(final) and not force:
            return "skipped"
        info.generate(root)
        return "generated"
    ds = sources_for(info.key, sources)
    if ds is None:
        raise PrepareError(f"{info.key} is not downloaded but put together by hand: {info.download}")
    if os.path.isdir(final) and not force:
        status, lines = check_dataset(info.key, root, decode=False)
        if status != "broken":
            logger.info("%s: already prepared in %s (check passes; --force prepares it again)", info.key, final)
            return "skipped"
        raise PrepareError(
            f"{final} exists but check fails:\n" + "\n".join(lines) + "\nmove it away, or run prepare with --force "
            "to replace it"
        )
    paths = _obtain(info.key, ds, root, from_dir, retries)
    staging = os.path.join(root, STAGING, info.key)
    shutil.rmtree(staging, ignore_errors=True)  # an interrupted earlier run's
    ddir, scratch = os.path.join(staging, info.folder), os.path.join(staging, "scratch")
    os.makedirs(ddir)
    os.makedirs(scratch)
    try:
        for src in ds.files:
            _place(src, paths[src.name], ddir, scratch)
        if ds.arrange:
            ARRANGERS[ds.arrange](ddir, paths, scratch)
        shutil.rmtree(scratch)
        # the MD5s vouch for the images; an archive without one is checked by decoding them
        decode = any(src.is_archive and not src.md5 for src in ds.files)
        status, lines = check_dataset(info.key, staging, decode=decode)
        if status == "broken":
            raise PrepareError(f"{info.key}: the extracted files do not pass check:\n" + "\n".join(lines))
        if os.path.isdir(final):  # --force: the old copy goes only once the new one is complete
            old = os.path.join(staging, "replaced")
            os.rename(final, old)
            os.rename(ddir, final)
        else:
            os.rename(ddir, final)
    except DatasetError as e:
        unverified = [s.name for s in ds.files if not s.md5] if from_dir is None else []
        if not unverified:
            raise
        # nothing vouches for these downloads, and a kept one would be reused by every later run
        for name in unverified:
            _remove_if_present(paths[name])
        _remove_if_empty(os.path.join(root, DOWNLOADS, info.key))
        _remove_if_empty(os.path.join(root, DOWNLOADS))
        raise PrepareError(
            f"{e}\nThe downloads without a published checksum ({', '.join(unverified)}) were deleted: run prepare "
            "again to fetch them anew"
        ) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(os.path.join(root, STAGING))
    if from_dir is None:
        shutil.rmtree(os.path.join(root, DOWNLOADS, info.key), ignore_errors=True)
        _remove_if_empty(os.path.join(root, DOWNLOADS))
    logger.info("%s: prepared in %s", info.key, final)
    return "prepared"


def _remove_if_present(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _remove_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def prepare(
    keys: list[str] | None, root: str, from_dir: str | None = None, force: bool = False, sources: str | None = None
) -> dict[str, str]:
    """Prepare each dataset (default: every dataset of the sources table); returns key -> "prepared",
    "skipped", "generated" or the error's message. One dataset's failure does not stop the others."""
    keys = [get_info(k).key for k in keys] if keys else list(SOURCES)
    results = {}
    for key in keys:
        try:
            results[key] = prepare_dataset(key, root, from_dir=from_dir, force=force, sources=sources)
        except (DatasetError, ValueError, OSError) as e:
            logger.error("%s: %s", key, e)
            results[key] = f"failed: {e}"
    return results


def _setup_logging(root: str) -> tuple[str, list[logging.Handler]]:
    os.makedirs(os.path.join(root, LOGS), exist_ok=True)
    path = os.path.join(root, LOGS, time.strftime("prepare-%Y%m%d-%H%M%S.log", time.gmtime()))
    console = logging.StreamHandler()
    console.setLevel(logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    file = logging.FileHandler(path, encoding="utf-8")
    file.setLevel(logging.DEBUG)
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    top = logging.getLogger("harness.data")
    top.setLevel(logging.DEBUG)
    for h in (console, file):
        top.addHandler(h)
    return path, [console, file]


def main(args) -> int:
    """The ``prepare`` sub-command (arguments parsed by ``harness.data.check.main``)."""
    try:
        keys = [get_info(k).key for k in args.dataset or []]
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.from_dir is not None and not os.path.isdir(args.from_dir):
        print(
            f"error: --from {args.from_dir} is not a folder; it should hold the files fetched by hand", file=sys.stderr
        )
        return 2
    root = os.path.abspath(os.path.expanduser(args.root))
    log_path, handlers = _setup_logging(root)
    try:
        results = prepare(keys or None, root, from_dir=args.from_dir, force=args.force, sources=args.sources)
    except KeyboardInterrupt:  # the dataset being extracted was removed on the way out (prepare_dataset)
        print(
            f"Interrupted: nothing half-extracted is left in {root}; a download stays as a .part file under "
            f"{os.path.join(root, DOWNLOADS)} and resumes when the same command runs again. Log: {log_path}",
            file=sys.stderr,
        )
        return 130  # 128 + SIGINT, as the shell reports a process Ctrl-C ended
    finally:
        top = logging.getLogger("harness.data")
        for h in handlers:
            top.removeHandler(h)
            h.close()
    failed = [k for k, r in results.items() if r.startswith("failed")]
    print(
        "summary: "
        + ", ".join(f"{k} {r if not r.startswith('failed') else 'FAILED'}" for k, r in results.items())
        + f"; log: {log_path}"
    )
    return 1 if failed else 0
