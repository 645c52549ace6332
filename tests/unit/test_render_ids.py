"""The fast render ids (common/render_ids.py) are the defined ones (common/expand.py
``render_id``), byte for byte, on generated inputs: a changed id would render every
resubmitted job again."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from common.expand import ENGINE_GENERATION, render_id
from common.render_ids import RenderIds

uris = st.sampled_from(["s3://in/a.png", "/data/b é.png", "s3://in/c\u2028.png", "alpha"])
weights = st.floats(min_value=0.01, max_value=100, allow_nan=False)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    content=uris,
    images=st.lists(st.tuples(uris, weights), min_size=1, max_size=3).map(tuple),
    size=st.integers(16, 4096) | st.sampled_from(["1200x628", "meta-story", "512"]),
    params=st.dictionaries(st.text(max_size=6), values, max_size=4),
    weight_uri=st.sampled_from(["random:0", "s3://models/vgg.pth"]),
    identities=st.dictionaries(uris | st.just("s3://models/vgg.pth"), st.text(max_size=6)),
    focus=st.none() | st.tuples(st.floats(0, 1), st.floats(0, 1)),
    mask=st.none() | st.tuples(uris, st.floats(0, 1)),
    output=st.none() | st.dictionaries(st.text(max_size=5), values, max_size=3),
)
def test_the_fast_ids_are_the_defined_ones(
    content, images, size, params, weight_uri, identities, focus, mask, output
):
    made = RenderIds(ENGINE_GENERATION, weight_uri, identities, output)
    fast = made.of(
        made.content_part(content, focus, mask), made.style_part(0, images, size, params)
    )
    assert fast == render_id(
        content, images, size, params, weight_uri, identities, focus, mask, output
    )
    # cached parts give the same id again
    again = made.of(
        made.content_part(content, focus, mask), made.style_part(0, images, size, params)
    )
    assert again == fast


texts = st.text(max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    rid=texts, content=uris, name=texts, style=texts,
    images=st.lists(st.tuples(uris, weights), min_size=1, max_size=3).map(tuple),
    size=st.integers(16, 4096) | st.sampled_from(["1200x628", "meta-story"]),
    params=st.dictionaries(texts, values, max_size=4), key=texts,
    identities=st.dictionaries(uris, texts, max_size=3),
    focus=st.none() | st.tuples(st.floats(0, 1), st.floats(0, 1)),
    mask=st.sampled_from(["", "alpha", "s3://in/m.png"]), strength=st.floats(0, 1),
    copies=st.lists(st.tuples(texts, texts), max_size=2).map(tuple),
)  # fmt: skip
def test_a_spec_is_stored_as_its_render_and_read_back_whole(
    rid, content, name, style, images, size, params, key, identities, focus, mask, strength, copies
):
    import json

    from common.expand import Render
    from common.state.model import Specs

    render = Render(rid, content, name, style, images, size, params, key, "random:0",
                    identities, focus, mask, strength, copies)  # fmt: skip
    specs = Specs()
    stored = json.loads(specs.json(render))
    assert stored == json.loads(json.dumps(render.to_dict()))
    assert Render.from_dict(stored) == render
    assert json.loads(specs.json(render)) == stored  # its shared parts, cached


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from(["a", "/", ".", "\\", "\x00", ":", "C", "é"]), max_size=8))
def test_the_fast_key_check_refuses_what_the_full_one_does(key):
    """check_relative_key's one-search path passes only keys its full checks pass."""
    import re

    from common import uris

    full_refuses = False
    saved = uris._REFUSED
    try:
        uris._REFUSED = re.compile("")  # matches every key: each goes through the full checks
        try:
            uris.check_relative_key(key)
        except ValueError:
            full_refuses = True
    finally:
        uris._REFUSED = saved
    fast_passes = saved.search(key) is None
    assert not (fast_passes and full_refuses), key
    try:
        uris.check_relative_key(key)
        refused = False
    except ValueError:
        refused = True
    assert refused == full_refuses, key
