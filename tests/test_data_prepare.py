"""`python -m harness.data prepare` and the verification `check` learned with it, without a network: fabricated
archives of the real names and inner layouts, served by a local HTTP server (with Range requests), the
sources table pointed at it through $HARNESS_DATA_SOURCES (the documented mirror override)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from fake_data import make_layout, tiny_run

from benchmarks.readme import read_document_block
from harness.data import list_datasets
from harness.data.check import main as data_main
from harness.data.prepare import DOWNLOADS, STAGING, PrepareError, prepare_dataset
from harness.data.registry import get_info
from harness.data.sources import ENV_SOURCES, SOURCES, file_md5, markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "user-cache"))


# -- a local file server: Range requests, a request log, and a byte limit that cuts transfers ------------------


class Server:
    def __init__(self, folder):
        self.folder, self.requests, self.limit = folder, [], {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                path = os.path.join(server.folder, name)
                if not os.path.isfile(path):
                    self.send_error(404)
                    return
                with open(path, "rb") as f:
                    body = f.read()
                start, total = 0, len(body)
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(total - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                # an interrupted transfer: the connection closes at byte `limit` of the file
                end = min(total, server.limit.get(name, total))
                try:
                    self.wfile.write(body[start:end])
                except (BrokenPipeError, ConnectionResetError):  # the client hung up (to resume with a Range)
                    pass
                if end < total:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    s = Server(str(tmp_path / "served"))
    os.makedirs(s.folder)
    yield s
    s.close()


# -- fabricated archives of the real formats ---------------------------------------------------------------------


def _tar(path, folder, arcname, mode="w:gz"):
    with tarfile.open(path, mode) as t:
        t.add(folder, arcname=arcname)


def fabricate_dtd(out):
    """dtd-r1.0.1.tar.gz holding dtd/images/<class>/*.jpg, dtd/imdb/, dtd/labels/ (as published) and the split
    file over it."""
    ddir = make_layout(os.path.join(out, "src"), "dtd", images_per_class=5)
    split = os.path.join(out, "split_zhou_DescribableTextures.json")
    shutil.move(os.path.join(ddir, "split_zhou_DescribableTextures.json"), split)
    _tar(os.path.join(out, "dtd-r1.0.1.tar.gz"), ddir, "dtd")
    return [os.path.join(out, "dtd-r1.0.1.tar.gz"), split]


def fabricate_eurosat(out, noisy=False):
    """EuroSAT.zip holding 2750/<Class>/<Class>_<n>.jpg (as published) and the split file over it. ``noisy``:
    images of noise, which do not compress: an archive of a few 512 kB download chunks."""
    from PIL import Image

    ddir = make_layout(os.path.join(out, "src"), "eurosat", num_classes=4, images_per_class=5)
    rng = np.random.default_rng(0)
    for folder, _, files in os.walk(os.path.join(ddir, "2750")) if noisy else ():
        for f in files:
            noise = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
            Image.fromarray(noise).save(os.path.join(folder, f), "JPEG", quality=95)
    split = os.path.join(out, "split_zhou_EuroSAT.json")
    shutil.move(os.path.join(ddir, "split_zhou_EuroSAT.json"), split)
    with zipfile.ZipFile(os.path.join(out, "EuroSAT.zip"), "w") as z:
        for folder, _, files in os.walk(os.path.join(ddir, "2750")):
            for f in files:
                z.write(os.path.join(folder, f), os.path.relpath(os.path.join(folder, f), ddir))
    return [os.path.join(out, "EuroSAT.zip"), split]


def fabricate_imagenet(out):
    """ILSVRC2012's three archives (train: one tar per wnid; val: flat; devkit: meta.mat and the validation
    ground truth) and classnames.txt; returns (files, {validation image: its wnid})."""
    from scipy.io import savemat

    src = make_layout(os.path.join(out, "src"), "imagenet", num_classes=3, images_per_class=3)
    train, val = os.path.join(src, "images", "train"), os.path.join(src, "images", "val")
    wnids = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
    with tarfile.open(os.path.join(out, "ILSVRC2012_img_train.tar"), "w") as outer:
        for w in wnids:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for f in sorted(os.listdir(os.path.join(train, w))):
                    if not f.startswith("."):
                        inner.add(os.path.join(train, w, f), arcname=f)
            info = tarfile.TarInfo(f"{w}.tar")
            info.size = buf.tell()
            buf.seek(0)
            outer.addfile(info, buf)
    truth = {f: w for w in wnids for f in os.listdir(os.path.join(val, w))}
    with tarfile.open(os.path.join(out, "ILSVRC2012_img_val.tar"), "w") as t:
        for f in sorted(truth):
            t.add(os.path.join(val, truth[f], f), arcname=f)
    # devkit: synsets (ILSVRC2012_ID 1..n are the leaf classes, in an order other than the wnids'; one inner
    # node with children, which is not a class) and one label per validation image in file-name order
    order = list(reversed(wnids))
    rows = [(i + 1, w, f"words {w}", 0) for i, w in enumerate(order)] + [(len(order) + 1, "n00001740", "entity", 3)]
    synsets = np.array(rows, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")])
    kit = os.path.join(out, "devkit", "ILSVRC2012_devkit_t12", "data")
    os.makedirs(kit)
    savemat(os.path.join(kit, "meta.mat"), {"synsets": synsets.reshape(-1, 1)})
    with open(os.path.join(kit, "ILSVRC2012_validation_ground_truth.txt"), "w") as f:
        f.writelines(f"{order.index(truth[name]) + 1}\n" for name in sorted(truth))
    _tar(os.path.join(out, "ILSVRC2012_devkit_t12.tar.gz"), os.path.dirname(kit), "ILSVRC2012_devkit_t12")
    shutil.copy(os.path.join(src, "classnames.txt"), os.path.join(out, "classnames.txt"))
    names = ["ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz", "classnames.txt"]
    return [os.path.join(out, n) for n in names], truth


FABRICATE = {"dtd": fabricate_dtd, "eurosat": fabricate_eurosat}


def point_sources_at(monkeypatch, tmp_path, key, files, base_url):
    """$HARNESS_DATA_SOURCES: each fabricated file's URL on the local server and its MD5."""
    path = tmp_path / "sources.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    table[key] = {os.path.basename(f): {"url": f"{base_url}/{os.path.basename(f)}", "md5": file_md5(f)} for f in files}
    path.write_text(json.dumps(table))
    monkeypatch.setenv(ENV_SOURCES, str(path))


def serve(server, monkeypatch, tmp_path, key):
    files = FABRICATE[key](str(tmp_path / "made" / key))
    for f in files:
        shutil.copy(f, server.folder)
    point_sources_at(monkeypatch, tmp_path, key, files, server.url)
    return files


def leftovers(root):
    return [n for n in (DOWNLOADS, STAGING) if os.path.exists(os.path.join(root, n))]


# -- the source table --------------------------------------------------------------------------------------------


def test_every_registered_dataset_has_sources_or_is_generated():
    import torchvision.datasets as tvd
    from torchvision.datasets import imagenet

    for key in list_datasets():
        info = get_info(key)
        assert key in SOURCES or info.generate is not None or key == "synthetic", key
    for key, ds in SOURCES.items():
        names = [f.name for f in ds.files]
        assert len(set(names)) == len(names), key
        assert all(f.url or ds.manual for f in ds.files), f"{key}: a file without URL needs a manual instruction"
        assert all(f.md5 is None or len(f.md5) == 32 for f in ds.files), key
        info = get_info(key)
        if info.split_file:
            assert info.split_file in names, key
    # the checksums are torchvision's, read from its source
    md5 = {f.name: f.md5 for ds in SOURCES.values() for f in ds.files}
    published = {
        "dtd-r1.0.1.tar.gz": tvd.DTD._MD5,
        "food-101.tar.gz": tvd.Food101._MD5,
        "SUN397.tar.gz": tvd.SUN397._DATASET_MD5,
        **{os.path.basename(u): m for u, m in tvd.OxfordIIITPet._RESOURCES},
        **{name: m for name, m in tvd.Flowers102._file_dict.values() if name in md5},
        **{name: m for name, m in imagenet.ARCHIVE_META.values()},
    }
    assert {n: md5[n] for n in published} == published


def test_readme_data_table_is_the_sources_table(capsys):
    assert read_document_block("data:sources", ROOT) == markdown_table(), (
        "the data:sources block is stale: python -m benchmarks.readme data"
    )
    assert data_main(["sources"]) == 0 and capsys.readouterr().out == markdown_table()
    manual = {line.split("`")[1] for line in markdown_table().splitlines() if "**manual**" in line}
    assert (
        manual
        == {k for k, ds in SOURCES.items() if any(f.url is None for f in ds.files)}
        == {
            "imagenet",
            "stanford_cars",
        }
    )


# -- prepare -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_prepare_into_an_empty_root_then_check_and_a_tiny_run(tmp_path, server, monkeypatch, capsys):
    from harness.config import build_spec
    from harness.runner import run

    for key in ("dtd", "eurosat"):
        serve(server, monkeypatch, tmp_path, key)
    root = str(tmp_path / "data")
    assert data_main(["prepare", "--root", root, "--dataset", "dtd,eurosat"]) == 0, capsys.readouterr().out
    assert "dtd prepared, eurosat prepared" in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(root, "dtd"))) == [
        "images",
        "imdb",
        "labels",
        "split_zhou_DescribableTextures.json",
    ]
    assert leftovers(root) == []  # downloads and staging gone
    logs = os.listdir(os.path.join(root, ".prepare-logs"))
    assert len(logs) == 1 and "MD5" in open(os.path.join(root, ".prepare-logs", logs[0])).read()
    assert data_main(["check", "--root", root, "--dataset", "dtd", "--dataset", "eurosat"]) == 0
    assert "0 broken" in capsys.readouterr().out
    evaluate = [{"dataset": "dtd", "subsample": "all"}]
    spec = tiny_run(root, tmp_path / "out", dataset="dtd", subsample="all", evaluate=evaluate, epochs=1, shots=2)
    records = run(build_spec(spec))
    assert [(r["dataset"], r["epochs"]) for r in records] == [("dtd", 1)]
    assert 0 <= records[0]["metrics"]["accuracy"] <= 100

    # a second prepare does nothing: no request, the folders untouched
    before, stamp = len(server.requests), os.stat(os.path.join(root, "dtd", "images")).st_mtime_ns
    assert data_main(["prepare", "--root", root, "--dataset", "dtd", "--dataset", "eurosat"]) == 0
    assert "dtd skipped, eurosat skipped" in capsys.readouterr().out
    assert len(server.requests) == before and os.stat(os.path.join(root, "dtd", "images")).st_mtime_ns == stamp


def test_an_interrupted_download_resumes_with_a_range_request(tmp_path, server, monkeypatch):
    files = fabricate_eurosat(str(tmp_path / "made"), noisy=True)
    for f in files:
        shutil.copy(f, server.folder)
    point_sources_at(monkeypatch, tmp_path, "eurosat", files, server.url)
    size = os.path.getsize(files[0])
    assert size > 512 * 1024 + 1000  # more than one of gdown's 512 kB chunks arrives before the cut
    server.limit["EuroSAT.zip"] = size - 1000  # every transfer stops before the end
    root = str(tmp_path / "data")
    with pytest.raises(PrepareError, match="run prepare again to resume"):
        prepare_dataset("eurosat", root, retries=0)
    parts = [n for n in os.listdir(os.path.join(root, DOWNLOADS, "eurosat")) if n.endswith(".part")]
    assert len(parts) == 1
    kept = os.path.getsize(os.path.join(root, DOWNLOADS, "eurosat", parts[0]))
    assert 0 < kept < size
    assert not os.path.exists(os.path.join(root, "eurosat")) and not os.path.exists(os.path.join(root, STAGING))

    server.limit.clear()
    server.requests.clear()
    assert prepare_dataset("eurosat", root) == "prepared"
    assert ("EuroSAT.zip", f"bytes={kept}-") in server.requests  # only what was missing is fetched again
    assert data_main(["check", "--root", root, "--dataset", "eurosat"]) == 0


def test_a_corrupted_archive_is_refused_and_nothing_is_kept(tmp_path, server, monkeypatch):
    archive, _ = serve(server, monkeypatch, tmp_path, "dtd")
    good = file_md5(archive)
    with open(os.path.join(server.folder, "dtd-r1.0.1.tar.gz"), "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 16)
    root = str(tmp_path / "data")
    with pytest.raises(PrepareError) as e:
        prepare_dataset("dtd", root)
    found = file_md5(os.path.join(server.folder, "dtd-r1.0.1.tar.gz"))
    assert "dtd-r1.0.1.tar.gz" in str(e.value) and good in str(e.value) and found in str(e.value)
    assert not os.path.exists(os.path.join(root, "dtd"))
    assert os.listdir(os.path.join(root, DOWNLOADS, "dtd")) == []  # the bad download is gone, no .part left


def test_an_archive_of_another_shape_leaves_nothing_behind(tmp_path, monkeypatch):
    archive, split = fabricate_dtd(str(tmp_path / "made"))
    ddir = make_layout(str(tmp_path / "other"), "dtd")
    _tar(archive, ddir, "textures")  # the published name and checksum of the table, but no dtd/ inside
    point_sources_at(monkeypatch, tmp_path, "dtd", [archive, split], "http://127.0.0.1:9")
    root = str(tmp_path / "data")
    with pytest.raises(PrepareError, match="holds no dtd .found: textures."):
        prepare_dataset("dtd", root, from_dir=os.path.dirname(archive))
    assert os.listdir(root) == []  # no dataset folder, no staging folder


def test_from_a_folder_without_network(tmp_path, monkeypatch):
    archives = fabricate_dtd(str(tmp_path / "by-hand"))
    point_sources_at(monkeypatch, tmp_path, "dtd", archives, "http://127.0.0.1:9")  # nothing listens there
    root = str(tmp_path / "data")
    by_hand = os.path.dirname(archives[0])
    digests = [file_md5(f) for f in archives]
    assert prepare_dataset("dtd", root, from_dir=by_hand) == "prepared"
    assert data_main(["check", "--root", root, "--dataset", "dtd"]) == 0
    assert [file_md5(f) for f in archives] == digests  # the user's files stay as they were
    # a damaged file of the user's is refused, and not deleted
    with open(archives[0], "ab") as f:
        f.write(b"junk")
    with pytest.raises(PrepareError) as e:
        prepare_dataset("dtd", str(tmp_path / "other"), from_dir=by_hand)
    assert f"MD5 {file_md5(archives[0])}, expected {digests[0]}" in str(e.value)
    assert os.path.isfile(archives[0]) and not os.path.exists(tmp_path / "other" / "dtd")
    # what the folder lacks is listed, with where to get it
    os.remove(archives[1])
    with pytest.raises(PrepareError, match="missing split_zhou_DescribableTextures.json .*--from"):
        prepare_dataset("dtd", str(tmp_path / "other"), from_dir=by_hand)


def test_imagenet_from_its_archives(tmp_path, monkeypatch):
    files, truth = fabricate_imagenet(str(tmp_path / "by-hand"))
    root = str(tmp_path / "data")
    # without the files: what to fetch by hand and where to put it, before any download
    point_sources_at(monkeypatch, tmp_path, "imagenet", files[3:], "http://127.0.0.1:9")
    with pytest.raises(PrepareError) as e:
        prepare_dataset("imagenet", root)
    for needle in (
        "ILSVRC2012_img_train.tar",
        "ILSVRC2012_img_val.tar",
        "ILSVRC2012_devkit_t12.tar.gz",
        "image-net.org",
        "--from",
    ):
        assert needle in str(e.value)
    point_sources_at(monkeypatch, tmp_path, "imagenet", files, "http://127.0.0.1:9")
    assert prepare_dataset("imagenet", root, from_dir=os.path.dirname(files[0])) == "prepared"
    val = os.path.join(root, "imagenet", "images", "val")
    assert {f: w for w in os.listdir(val) for f in os.listdir(os.path.join(val, w))} == truth
    train = os.path.join(root, "imagenet", "images", "train")
    assert all(not n.endswith(".tar") for n in os.listdir(train)) and len(os.listdir(train)) == 3
    assert os.path.isfile(os.path.join(root, "imagenet", "classnames.txt"))
    assert data_main(["check", "--root", root, "--dataset", "imagenet"]) == 0


def test_check_decodes_every_image_unless_quick(tmp_path, capsys):
    ddir = make_layout(tmp_path, "dtd")
    from PIL import Image

    image = os.path.join(ddir, "images", "bumpy", "bumpy_0003.jpg")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(image, "JPEG")
    data = open(image, "rb").read()
    with open(image, "wb") as f:
        f.write(data[: len(data) * 3 // 4])
    Image.open(image).close()  # a truncated JPEG opens, and fails only when decoded
    assert data_main(["check", "--root", str(tmp_path), "--dataset", "dtd"]) == 1
    out = capsys.readouterr().out
    assert "1 of 60 do not decode" in out and image in out and "BROKEN" in out and "all 60 decode" not in out
    assert data_main(["check", "--root", str(tmp_path), "--dataset", "dtd", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "do not decode" not in out and "images: all 60 decode" not in out and "=> OK" in out


def test_check_compares_the_split_file_with_its_published_digest(tmp_path, monkeypatch, capsys):
    files = fabricate_dtd(str(tmp_path / "made"))
    point_sources_at(monkeypatch, tmp_path, "dtd", files, "http://127.0.0.1:9")
    root = str(tmp_path / "data")
    prepare_dataset("dtd", root, from_dir=os.path.dirname(files[0]))
    split = os.path.join(root, "dtd", "split_zhou_DescribableTextures.json")
    items = json.load(open(split))
    items["train"], items["test"] = items["train"][:-1], items["test"] + items["train"][-1:]
    json.dump(items, open(split, "w"))
    assert data_main(["check", "--root", root, "--dataset", "dtd", "--quick"]) == 1
    out = capsys.readouterr().out
    assert f"has MD5 {file_md5(split)}, expected {file_md5(files[1])}" in out


def test_check_says_how_a_generated_dataset_is_made(tmp_path, capsys):
    generated = [k for k in list_datasets() if get_info(k).generate is not None]
    if not generated:
        pytest.skip("no plugin registers a generated dataset")
    key = generated[0]
    assert data_main(["check", "--root", str(tmp_path), "--dataset", key]) == 1
    out = capsys.readouterr().out
    assert "generated, not downloaded" in out and "fetch" not in out
    data_main(["check", "--root", str(tmp_path)])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(f"== {key} "))
    assert "not generated yet" in line and "fetch" not in line


@pytest.mark.parametrize("outside", ["../../outside.jpg", "banded/../../../outside.jpg", "/abs/outside.jpg"])
def test_a_split_file_pointing_outside_the_dataset_folder_is_refused(tmp_path, capsys, outside):
    ddir = make_layout(tmp_path, "dtd")
    outside_file = tmp_path / "outside.jpg"  # exists: a check that only looks for the file would pass
    shutil.copy(os.path.join(ddir, "images", "banded", "banded_0001.jpg"), outside_file)
    split = os.path.join(ddir, "split_zhou_DescribableTextures.json")
    items = json.load(open(split))
    items["train"][0][0] = outside if not outside.startswith("/") else str(outside_file)
    json.dump(items, open(split, "w"))
    assert data_main(["check", "--root", str(tmp_path), "--dataset", "dtd", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out and "leads outside" in out and split in out and items["train"][0][0] in out


def test_a_checksum_override_is_a_digest_in_either_case_or_refused_before_any_download(tmp_path, server, monkeypatch):
    files = serve(server, monkeypatch, tmp_path, "dtd")
    table = json.loads((tmp_path / "sources.json").read_text())
    for entry in table["dtd"].values():
        entry["md5"] = entry["md5"].upper()  # as some sites publish them
    (tmp_path / "sources.json").write_text(json.dumps(table))
    assert prepare_dataset("dtd", str(tmp_path / "data")) == "prepared"
    table["dtd"][os.path.basename(files[0])]["md5"] = "sha256:" + "0" * 64
    (tmp_path / "sources.json").write_text(json.dumps(table))
    server.requests.clear()
    with pytest.raises(ValueError, match="'dtd-r1.0.1.tar.gz' has md5 'sha256:0+', expected 32 hexadecimal"):
        prepare_dataset("dtd", str(tmp_path / "other"))
    assert server.requests == [] and not os.path.exists(tmp_path / "other" / "dtd")


def test_a_download_without_a_checksum_that_is_no_archive_is_refused_deleted_and_fetched_again(
    tmp_path, server, monkeypatch
):
    archive, split = serve(server, monkeypatch, tmp_path, "dtd")
    table = json.loads((tmp_path / "sources.json").read_text())
    for entry in table["dtd"].values():
        entry["md5"] = None  # as for the archives and split files whose hosts publish no checksum
    (tmp_path / "sources.json").write_text(json.dumps(table))
    served = os.path.join(server.folder, os.path.basename(archive))
    with open(served, "w") as f:
        f.write("<html>Google Drive: download quota exceeded</html>")
    root = str(tmp_path / "data")
    with pytest.raises(PrepareError, match=r"(?s)dtd-r1.0.1.tar.gz is not a readable archive .*run prepare again"):
        prepare_dataset("dtd", root)
    assert leftovers(root) == [] and not os.path.exists(os.path.join(root, "dtd"))
    shutil.copy(archive, served)  # the host serves the archive again: the next run fetches it, not the page
    assert prepare_dataset("dtd", root) == "prepared"
    # a file of the user's (--from) is refused alike, and kept
    by_hand = tmp_path / "by-hand"
    by_hand.mkdir()
    (by_hand / "dtd-r1.0.1.tar.gz").write_text("not an archive")
    shutil.copy(split, by_hand)
    with pytest.raises(PrepareError, match="is not a readable archive"):
        prepare_dataset("dtd", str(tmp_path / "other"), from_dir=str(by_hand))
    assert (by_hand / "dtd-r1.0.1.tar.gz").read_text() == "not an archive"


def test_check_takes_dataset_keys_comma_separated_as_prepare_does(tmp_path, capsys):
    make_layout(tmp_path, "dtd")
    make_layout(tmp_path, "eurosat")
    assert data_main(["check", "--root", str(tmp_path), "--dataset", "dtd,eurosat", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "== dtd " in out and "== eurosat " in out and "summary: 2 dataset(s) found, 0 broken" in out


def test_a_prepare_interrupted_mid_extraction_leaves_only_what_resumes(tmp_path, server, monkeypatch, capsys):
    import harness.data.prepare as prepare_module

    serve(server, monkeypatch, tmp_path, "dtd")
    extract = prepare_module._extract

    def ctrl_c_halfway(path, dest, **kw):
        extract(path, dest, **kw)  # the files are on disk, in the staging folder: then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "_extract", ctrl_c_halfway)
    root = tmp_path / "data"
    assert data_main(["prepare", "--root", str(root), "--dataset", "dtd"]) == 130
    assert "Interrupted: nothing half-extracted is left" in capsys.readouterr().err
    assert not (root / "dtd").exists() and not (root / STAGING).exists()
    assert sorted(os.listdir(root / DOWNLOADS / "dtd")) == ["dtd-r1.0.1.tar.gz", "split_zhou_DescribableTextures.json"]
    monkeypatch.setattr(prepare_module, "_extract", extract)
    server.requests.clear()
    assert data_main(["prepare", "--root", str(root), "--dataset", "dtd"]) == 0
    assert server.requests == []  # the verified downloads were kept and used
