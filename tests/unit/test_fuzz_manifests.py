"""Property-based fuzzing of manifests: whatever the document, the result is a plan or a
ManifestError listing problems; never another exception, never anything written."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import ManifestError
from common.expand import plan_document
from common.inputs import CannotCheck
from common.settings import Settings

SETTINGS = Settings(max_renders=500)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def uris(folder: Path):
    return st.one_of(
        st.sampled_from(
            [
                str(folder / "a.png"),
                "s3://bucket/x.png",
                "s3://B/x",
                "../../etc/passwd",
                "file:///etc/shadow",
                "ftp://x/y",
                "",
                "s3://",
                "/",
                "a\x00b",
            ]
        ),
        st.text(max_size=40),
    )


def manifests(folder: Path):
    key = st.one_of(
        st.just("{content}/{style}-{size}.{ext}"),
        st.text(max_size=30),
        st.sampled_from(["../{id}.{ext}", "{nope}", "{", "/{id}", "{content}.{ext}"]),
    )
    params = st.fixed_dictionaries(
        {},
        optional={
            "preset": st.one_of(st.sampled_from(["draft", "standard", "high"]), anything),
            "sizes": st.one_of(st.lists(st.integers(-5, 10_000), max_size=4), anything),
            "style_weight": st.one_of(st.floats(), anything),
            "pyramid": st.one_of(
                st.fixed_dictionaries(
                    {
                        "start": st.integers(0, 9000),
                        "ratio": st.floats(0, 5),
                        "iterations": st.one_of(
                            st.integers(-1, 20000), st.lists(st.integers(-1, 99)), anything
                        ),
                    }
                ),
                anything,
            ),
            "style_layers": st.one_of(
                st.dictionaries(st.sampled_from(["relu1_1", "relu9_9", ""]), st.floats(-1, 2)),
                anything,
            ),
            "color": st.one_of(st.sampled_from(["none", "luminance", "histogram"]), anything),
            "optimizer": st.sampled_from(["adam", "lbfgs", "sgd"]),
            "ema": st.floats(-1, 2),
        },
    )
    style = st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["a", "b", "bad name"]), anything)},
        optional={
            "image": uris(folder),
            "params": params,
            "images": st.lists(
                st.fixed_dictionaries({"uri": uris(folder)}, optional={"weight": st.floats(-1, 5)}),
                max_size=3,
            ),
        },
    )
    return st.fixed_dictionaries(
        {
            "name": st.one_of(st.sampled_from(["job", "x y"]), anything),
            "output": st.one_of(
                st.fixed_dictionaries(
                    {"location": st.one_of(st.just(str(folder / "out")), uris(folder))},
                    optional={
                        "key": key,
                        "format": st.sampled_from(["png", "jpeg", "gif"]),
                        "quality": st.integers(-5, 200),
                    },
                ),
                anything,
            ),
            "content": st.one_of(
                st.lists(
                    st.one_of(
                        uris(folder),
                        st.fixed_dictionaries({"glob": uris(folder)}),
                        st.fixed_dictionaries({"prefix": uris(folder)}),
                    ),
                    max_size=4,
                ),
                anything,
            ),
            "styles": st.one_of(st.lists(style, max_size=3), anything),
        },
        optional={
            "params": params,
            "priority": st.integers(-3, 12),
            "weights": uris(folder),
            "schedule": st.one_of(
                st.fixed_dictionaries(
                    {"cron": st.sampled_from(["0 2 * * *", "61 * * * *", "bad"])},
                    optional={"timezone": st.sampled_from(["UTC", "Mars/Base", ""])},
                ),
                anything,
            ),
            "extra": anything,
        },
    )


def check(folder: Path, document: object) -> None:
    before = sorted(folder.rglob("*"))
    try:
        plan = plan_document(
            document if isinstance(document, dict) else {"doc": document},
            "fuzz.yaml",
            folder,
            SETTINGS,
            "random",
        )
    except ManifestError as exc:
        assert exc.problems and all(str(p) for p in exc.problems)
    except CannotCheck as exc:  # S3 inputs, and no credentials here: the environment's fault
        assert "no credentials" in str(exc)
    else:
        assert all(".." not in r.key.split("/") and not r.key.startswith("/") for r in plan.renders)
    assert sorted(folder.rglob("*")) == before  # validation writes nothing


def test_fuzzed_manifests(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(folder / "a.png")

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(manifests(folder))
    def structured(document):
        check(folder, document)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(anything)
    def arbitrary(document):
        check(folder, document)

    structured()
    arbitrary()
