"""Reading inputs and writing outputs, on local disk or S3-compatible object storage.

Writes are whole or nothing: a local file appears by an atomic rename, and an S3 object by a
single PUT. Credentials come from the environment (boto3's chain), never from manifests.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from common.access import check_allowed, check_output
from common.errors import (
    ConfigError,
    InputError,
    StorageError,
    TransientStorageError,
    never_swallowed,
)
from common.imageio import IMAGE_SUFFIXES, embedded_metadata
from common.settings import Settings
from common.uris import Location, is_s3, join_key, parse_s3


class Storage(Protocol):
    location: Location

    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None: ...
    def metadata(self, key: str) -> dict[str, Any] | None: ...
    def put_output(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str], render_id: str
    ) -> dict[str, Any] | None: ...


def render_id_of(meta: dict[str, Any] | None) -> str | None:
    """The render id an output carries (embedded record, or S3 metadata)."""
    if not meta:
        return None
    return meta.get("render_id", meta.get("render-id"))


class LocalStorage:
    def __init__(self, location: Location, settings: Settings):
        self.location = location
        self.root = Path(location.root)
        self.settings = settings

    def get(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        check_output(str(self.root / key), self.settings)
        atomic_write(self.root / key, data)

    def metadata(self, key: str) -> dict[str, Any] | None:
        data = self.get(key)
        if data is None:
            return None
        return embedded_metadata(data) if key.endswith(IMAGE_SUFFIXES) else {}

    def put_output(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str], render_id: str
    ) -> dict[str, Any] | None:
        """Write a render's output unless it is there already: None once written, or the
        metadata of an output that carries ``render_id`` (another attempt wrote it; kept).
        A new file appears by a hard link, which fails if another attempt made it first; an
        output of an older render (another id) is replaced."""
        path = self.root / key
        check_output(str(path), self.settings)
        for _ in range(5):
            meta = self.metadata(key)
            if render_id_of(meta) == render_id:
                return meta
            if meta is not None:
                atomic_write(path, data)
                return None
            try:
                atomic_write(path, data, create_only=True)
                return None
            except FileExistsError:
                continue
        raise StorageError(f"{path}: written by others while this render wrote it")


class S3Storage:
    def __init__(self, location: Location, settings: Settings):
        self.location = location
        self.bucket = location.root
        self.client = s3_client(settings)
        self.settings = settings
        self._bucket_ok = False

    def _key(self, key: str) -> str:
        return join_key(self.location.prefix, key)

    def get(self, key: str) -> bytes | None:
        return s3_get(self.client, self.bucket, self._key(key), missing_ok=True)

    def _check_bucket(self) -> None:
        """Some S3 servers create a missing bucket on PUT; a typo must not make a new bucket."""
        if self._bucket_ok:
            return
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(
                    f"s3://{self.bucket}: bucket {self.bucket!r} does not exist"
                ) from None
            raise storage_error(exc, self.bucket, "") from None
        except Exception as exc:
            raise storage_error(exc, self.bucket, "") from None
        self._bucket_ok = True

    def put(self, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        check_output(f"s3://{self.bucket}/{self._key(key)}", self.settings)
        self._check_bucket()
        try:
            self._put(key, data, content_type, metadata)
        except Exception as exc:
            raise write_error(exc, self.bucket, self._key(key)) from None

    def _put(self, key: str, data: bytes, content_type: str, metadata: dict, **condition) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
            ContentType=content_type,
            Metadata=metadata,
            **condition,
        )

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise storage_error(exc, self.bucket, self._key(key)) from None
        except Exception as exc:
            raise storage_error(exc, self.bucket, self._key(key)) from None

    def metadata(self, key: str) -> dict[str, Any] | None:
        head = self._head(key)
        return None if head is None else dict(head.get("Metadata", {}))

    def put_output(
        self, key: str, data: bytes, content_type: str, metadata: dict[str, str], render_id: str
    ) -> dict[str, Any] | None:
        """Write a render's output unless it is there already: None once written, or the
        metadata of an object that carries ``render_id`` (another attempt wrote it; kept).
        Conditional PUTs: create-only (``If-None-Match: *``) where there is none, and where an
        older render's object is (another id), only over that very version (``If-Match``), so
        a superseded attempt never overwrites a newer one's output."""
        full = f"s3://{self.bucket}/{self._key(key)}"
        check_output(full, self.settings)
        self._check_bucket()
        for _ in range(5):
            head = self._head(key)
            meta = None if head is None else dict(head.get("Metadata", {}))
            if render_id_of(meta) == render_id:
                return meta
            condition = {"IfNoneMatch": "*"} if head is None else {"IfMatch": head["ETag"]}
            try:
                self._put(key, data, content_type, metadata, **condition)
                return None
            except Exception as exc:
                never_swallowed(exc)
                code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    continue  # another attempt wrote meanwhile: look again
                raise write_error(exc, self.bucket, self._key(key)) from None
        raise StorageError(f"{full}: written by others while this render wrote it")


def atomic_write(path: Path, data: bytes, create_only: bool = False) -> None:
    """Write via a temporary file in the same folder and rename: never a half-written file.
    ``create_only``: link it into place instead, FileExistsError if the path exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the usual mode
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if create_only:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it (os.umask sets it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def open_storage(location: Location, settings: Settings) -> Storage:
    if location.scheme == "s3":
        return S3Storage(location, settings)
    return LocalStorage(location, settings)


@lru_cache(maxsize=8)
def s3_client(settings: Settings, attempts: int = 5, timeout: float = 60) -> Any:
    """The S3 client of a settings. A server answering people (scheduler/web) asks for fewer
    ``attempts`` and a shorter read ``timeout``, to say at once that S3 is away."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=settings.s3_region,
        s3={"addressing_style": settings.s3_addressing},
        retries={"max_attempts": attempts, "mode": "standard"},
        connect_timeout=min(5, timeout),
        read_timeout=timeout,
    )
    # A session of its own: boto3's default session would keep the first credentials it saw.
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=settings.s3_endpoint or None, config=config)


def storage_error(exc: Exception, bucket: str, key: str) -> StorageError:
    """The error of a failed storage call, by whether trying again can help: S3 away, timing
    out, answering 5xx or a connection-level OSError is transient; anything else permanent.
    A task's time limit is never an error of the call: it is raised again (never_swallowed)."""
    never_swallowed(exc)
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    transient = (
        EndpointConnectionError,
        ConnectTimeoutError,
        ReadTimeoutError,
        ConnectionClosedError,
    )
    if isinstance(exc, transient):
        return TransientStorageError(f"s3://{bucket}/{key}: S3 unreachable ({exc})")
    if isinstance(exc, OSError):  # a connection reset, refused or timed out under botocore
        return TransientStorageError(f"s3://{bucket}/{key}: S3 connection failed ({exc})")
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
            return TransientStorageError(f"s3://{bucket}/{key}: S3 answered {status} {code}")
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"s3://{bucket}/{key}: no S3 credentials in the environment")
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        reasons = {
            "NoSuchBucket": f"bucket {bucket!r} does not exist",
            "NoSuchKey": "no such object",
            "404": "no such object",
            "InvalidAccessKeyId": "S3 rejected the access key (check AWS_ACCESS_KEY_ID)",
            "SignatureDoesNotMatch": "S3 rejected the secret key (check AWS_SECRET_ACCESS_KEY)",
            "AccessDenied": "access denied",
            "403": "access denied (check the S3 credentials)",
        }
        return StorageError(f"s3://{bucket}/{key}: {reasons.get(code, code or str(exc))}")
    return StorageError(f"s3://{bucket}/{key}: {exc}")


# S3 refusing this process's own credentials where it must write: its configuration is broken
_CREDENTIALS_REFUSED = ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch")


def write_error(exc: Exception, bucket: str, key: str) -> StorageError | ConfigError:
    """As ``storage_error``, but a write refused for this process's credentials (or with none)
    is a ConfigError: no render can be written here until the deployment is fixed."""
    from botocore.exceptions import NoCredentialsError

    never_swallowed(exc)
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    if isinstance(exc, NoCredentialsError) or code in _CREDENTIALS_REFUSED:
        return ConfigError(f"{storage_error(exc, bucket, key)}: this worker cannot write outputs")
    return storage_error(exc, bucket, key)


def s3_get(client: Any, bucket: str, key: str, missing_ok: bool = False) -> bytes | None:
    from botocore.exceptions import ClientError

    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if missing_ok and code in ("NoSuchKey", "404"):
            return None
        raise storage_error(exc, bucket, key) from None
    except Exception as exc:
        raise storage_error(exc, bucket, key) from None


def read_input(uri: str, settings: Settings, etag: str = "") -> bytes:
    """The bytes of an allowed input named by a canonical URI, within the size limit. With
    ``etag``, only that content: an S3 object replaced since then is an InputError."""
    check_allowed(uri, settings)
    limit = settings.max_input_bytes
    if is_s3(uri):
        bucket, key = parse_s3(uri)
        client = s3_client(settings)
        try:
            if etag:
                got = client.get_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')
                found = got.get("ETag", "").strip('"')
                if found != etag:  # a server that ignores If-Match
                    got["Body"].close()
                    raise InputError(changed(uri, etag, found))
            else:
                got = client.get_object(Bucket=bucket, Key=key)
        except InputError:
            raise
        except Exception as exc:
            never_swallowed(exc)
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412"):
                raise InputError(changed(uri, etag, "another")) from None
            error = storage_error(exc, bucket, key)
            if isinstance(error, TransientStorageError):
                raise error from None
            raise InputError(str(error)) from None
        size = int(got.get("ContentLength", 0))
        if size > limit:
            got["Body"].close()
            raise InputError(f"{uri}: {size} bytes exceeds the input limit of {limit}")
        try:
            return got["Body"].read()
        except Exception as exc:
            raise storage_error(exc, bucket, key) from None
    path = Path(uri)
    try:
        size = path.stat().st_size
        if size > limit:
            raise InputError(f"{uri}: {size} bytes exceeds the input limit of {limit}")
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{uri}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{uri}: is a directory, not an image") from None
    except PermissionError:
        raise InputError(f"{uri}: permission denied") from None


def changed(uri: str, expected: str, found: str) -> str:
    return (
        f"{uri} changed after the job was planned (expected {expected}, found {found}); "
        "submit again to render the new version"
    )
