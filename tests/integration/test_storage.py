"""Storage against a real S3 server (SeaweedFS on loopback): whole objects, metadata, and
errors that name what is wrong."""

from __future__ import annotations

import pytest

from common.errors import InputError, StorageError
from common.listing import Budget, find_inputs
from common.settings import Settings
from common.storage import S3Storage, read_input, s3_client
from common.uris import Location
from tests.support.services import ACCESS_KEY, SECRET_KEY


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    s3_client.cache_clear()
    yield Settings(s3_endpoint=s3_server.endpoint)
    s3_client.cache_clear()


def test_put_get_metadata_and_listing(s3_server, s3_env):
    s3_server.client().create_bucket(Bucket="store-a")
    storage = S3Storage(Location("s3", "store-a", "jobs/one"), s3_env)
    assert storage.get("x/y.png") is None and storage.metadata("x/y.png") is None
    storage.put("x/y.png", b"\x89PNG data", "image/png", {"render-id": "abc", "job": "j"})
    assert storage.get("x/y.png") == b"\x89PNG data"
    assert storage.metadata("x/y.png") == {"render-id": "abc", "job": "j"}
    assert read_input("s3://store-a/jobs/one/x/y.png", s3_env) == b"\x89PNG data"
    budget = Budget.of(s3_env)
    assert find_inputs("s3://store-a/jobs/*/x/*.png", False, s3_env, budget) == [
        "s3://store-a/jobs/one/x/y.png"
    ]
    found = find_inputs("s3://store-a/jobs/", True, s3_env, budget)
    assert found == ["s3://store-a/jobs/one/x/y.png"]


def test_missing_bucket_and_object_are_named(s3_env):
    storage = S3Storage(Location("s3", "no-such-bucket", ""), s3_env)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        storage.put("a.png", b"x", "image/png", {})
    with pytest.raises(InputError, match=r"s3://no-such-bucket/a\.png"):
        read_input("s3://no-such-bucket/a.png", s3_env)


def test_input_size_limit_checked_before_download(s3_server, s3_env):
    s3_server.client().create_bucket(Bucket="store-b")
    s3_server.client().put_object(Bucket="store-b", Key="big.png", Body=b"0" * 5000)
    small = Settings(s3_endpoint=s3_env.s3_endpoint, max_input_bytes=1000)
    with pytest.raises(InputError, match="5000 bytes exceeds the input limit of 1000"):
        read_input("s3://store-b/big.png", small)


def test_wrong_credentials(s3_server, s3_env, monkeypatch):
    s3_server.client().create_bucket(Bucket="store-c")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    s3_client.cache_clear()
    storage = S3Storage(Location("s3", "store-c", ""), Settings(s3_endpoint=s3_env.s3_endpoint))
    with pytest.raises(StorageError, match=r"rejected the secret key|access denied"):
        storage.put("a.png", b"x", "image/png", {})
    assert "wrong-secret" not in str(storage.client.meta.config)


def test_input_cache_fetches_once_refetches_changes_and_stays_bounded(s3_server, s3_env, tmp_path):
    from workers.cache import InputCache

    s3 = s3_server.client()
    s3.create_bucket(Bucket="store-d")
    for i in range(3):
        s3.put_object(Bucket="store-d", Key=f"in/{i}.png", Body=bytes([i]) * 400)
    settings = Settings(s3_endpoint=s3_env.s3_endpoint, cache_dir=tmp_path, input_cache_bytes=900)
    cache = InputCache(settings)
    assert cache.read("s3://store-d/in/0.png") == b"\x00" * 400
    entry = next((tmp_path / "inputs").iterdir())
    before = entry.stat().st_mtime_ns
    assert cache.read("s3://store-d/in/0.png") == b"\x00" * 400  # served from disk
    assert entry.stat().st_mtime_ns >= before and len(list(entry.parent.iterdir())) == 1
    s3.put_object(Bucket="store-d", Key="in/0.png", Body=b"\x09" * 400)  # new ETag
    assert cache.read("s3://store-d/in/0.png") == b"\x09" * 400
    cache.read("s3://store-d/in/1.png")
    cache.read("s3://store-d/in/2.png")
    sizes = [p.stat().st_size for p in (tmp_path / "inputs").iterdir()]
    assert sum(sizes) <= 900 and len(sizes) == 2
    for entry in (tmp_path / "inputs").iterdir():
        entry.write_bytes(b"\xff" * 400)  # same length, wrong bytes: the ETag (MD5) catches it
    assert {cache.read(f"s3://store-d/in/{i}.png") for i in (1, 2)} == {
        b"\x01" * 400,
        b"\x02" * 400,
    }


def test_input_cache_on_a_broken_disk_still_serves(s3_server, s3_env, tmp_path):
    from workers.cache import InputCache

    s3_server.client().create_bucket(Bucket="store-e")
    s3_server.client().put_object(Bucket="store-e", Key="a.png", Body=b"abc")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")  # like a full or broken disk
    settings = Settings(s3_endpoint=s3_env.s3_endpoint, cache_dir=blocker)
    assert InputCache(settings).read("s3://store-e/a.png") == b"abc"


def test_inputs_outside_the_allowed_prefixes_are_refused(s3_env, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    link = tmp_path / "allowed" / "link.png"
    link.parent.mkdir()
    link.symlink_to(secret)
    only_s3 = Settings(s3_endpoint=s3_env.s3_endpoint, allowed_inputs=("s3://store-a/",))
    for uri in ("/etc/passwd", str(secret), "s3://other-bucket/x.png"):
        with pytest.raises(InputError, match="not among the inputs this worker may read"):
            read_input(uri, only_s3)
    folder_only = Settings(allowed_inputs=(str(tmp_path / "allowed"),))
    with pytest.raises(InputError, match="not among the inputs"):
        read_input(str(link), folder_only)  # a symlink out of the allowed folder
    with pytest.raises(InputError, match="not among the inputs"):
        read_input(str(tmp_path / "allowed" / ".." / "secret.txt"), folder_only)
