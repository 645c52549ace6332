"""The style engine at small sizes on the CPU: quality properties, not numbers copied from a run."""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from tests.support.paths import EXAMPLES  # noqa: E402
from workers.engine import EngineConfig, RenderItem, StyleEngine  # noqa: E402
from workers.engine.color import rgb_to_yiq  # noqa: E402
from workers.engine.measures import border_ratio, chroma_ratio, speckle_bound  # noqa: E402
from workers.images import to_tensor  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(weights_file):
    return StyleEngine(str(weights_file), "cpu")


def tensor(path, size=48):
    img = Image.open(path).convert("RGB")
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return to_tensor(img)


def item(images, style="starry_night", size=48, seed=0):
    return RenderItem(tensor(images["tubingen"], size), [(tensor(images[style], 64), 1.0)], seed)


def test_multi_scale_beats_single_scale_on_equal_budget(engine, images):
    it = RenderItem(
        tensor(EXAMPLES / "tubingen.jpg", 128), [(tensor(EXAMPLES / "starry_night.jpg", 128), 1.0)]
    )
    base = dict(init="noise", ema=0.0, lr=0.03, tv_weight=0.0)
    single = engine.render(it, EngineConfig(start=128, iterations=60, **base))
    multi = engine.render(it, EngineConfig(start=64, ratio=2, iterations=(30, 30), **base))
    assert [s for s, _ in multi.schedule] == [64, 128]
    assert sum(n for _, n in multi.schedule) == sum(n for _, n in single.schedule)
    cfg = EngineConfig(**base)
    scores = engine.evaluate(torch.stack([single.image, multi.image]), [it, it], cfg)
    assert scores[1]["total"] < scores[0]["total"]


def test_optimisation_lowers_the_loss(engine, images):
    it = item(images)
    start = engine.evaluate(it.content[None], [it], EngineConfig())[0]
    done = engine.render(it, EngineConfig(start=32, ratio=1.5, iterations=15))
    assert done.losses["style"] < 0.5 * start["style"]
    assert done.image.shape == it.content.shape


@pytest.mark.parametrize("loss", ["gram", "wasserstein"])
def test_both_style_losses_and_lbfgs(engine, images, loss):
    it = item(images, size=32)
    cfg = EngineConfig(start=32, iterations=10, style_loss=loss, optimizer="lbfgs", ema=0.0)
    start = engine.evaluate(it.content[None], [it], cfg)[0]["total"]
    assert engine.render(it, cfg).losses["total"] < start


def test_luminance_transfer_keeps_content_chroma(engine, images):
    it = item(images)
    cfg = EngineConfig(start=48, iterations=10, color="luminance")
    out = engine.render(it, cfg).image
    plain = engine.render(it, EngineConfig(start=48, iterations=10)).image
    chroma = lambda img: rgb_to_yiq(img)[1:]  # noqa: E731
    kept = (chroma(out) - chroma(it.content)).abs().mean()
    lost = (chroma(plain) - chroma(it.content)).abs().mean()
    assert kept < 0.01 < lost


def test_histogram_matching_moves_colours_to_content(engine, images):
    it = item(images, style="wave")
    cfg = dict(start=48, iterations=12, init="noise")
    matched = engine.render(it, EngineConfig(color="histogram", **cfg)).image
    plain = engine.render(it, EngineConfig(**cfg)).image
    target = it.content.mean((1, 2))
    assert (matched.mean((1, 2)) - target).abs().sum() < (plain.mean((1, 2)) - target).abs().sum()


def test_blend_weights_move_between_styles(engine, images):
    content = tensor(images["tubingen"])
    a, b = tensor(images["starry_night"], 64), tensor(images["wave"], 64)
    cfg = EngineConfig(start=48, iterations=12)

    def style_losses(weight_a):
        out = engine.render(RenderItem(content, [(a, weight_a), (b, 1 - weight_a + 1e-9)]), cfg)
        return [
            engine.evaluate(out.image[None], [RenderItem(content, [(s, 1.0)])], cfg)[0]["style"]
            for s in (a, b)
        ]

    near_a, mid, near_b = style_losses(0.95), style_losses(0.5), style_losses(0.05)
    assert near_a[0] < mid[0] < near_b[0]
    assert near_b[1] < mid[1] < near_a[1]


# Equal up to float rounding, which Adam amplifies at a few flat pixels: on average within
# half of one 8-bit grey level for Gram. W2's gradient divides by the square roots of small
# eigenvalues, which turns the rounding of batched convolutions (1e-7) into up to 1e-2 of the
# gradient (measured; float64 products would not help on a GPU, whose bf16 features carry
# 1e-3): within three grey levels (measured 0.24 and 1.7).
@pytest.mark.parametrize(("loss", "grey_levels"), [("gram", 0.5), ("wasserstein", 3.0)])
def test_batched_equals_unbatched(engine, images, loss, grey_levels):
    items = [item(images, "starry_night", seed=1), item(images, "wave", seed=2)]
    cfg = EngineConfig(start=32, ratio=1.5, iterations=6, init="noise", ema=0.5, style_loss=loss)
    batched = engine.render_batch(items, cfg)
    for it, res in zip(items, batched, strict=True):
        alone = engine.render(it, cfg)
        assert (alone.image - res.image).abs().mean() < grey_levels / 255
        assert alone.losses["total"] == pytest.approx(res.losses["total"], rel=1e-2)


def test_same_seed_same_output(engine, images):
    cfg = EngineConfig(start=32, ratio=1.5, iterations=5, init="noise")
    a = engine.render(item(images, seed=3), cfg).image
    b = engine.render(item(images, seed=3), cfg).image
    c = engine.render(item(images, seed=4), cfg).image
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_style_statistics_init_and_style_scale(engine, images):
    it = item(images)
    out = engine.render(it, EngineConfig(start=48, iterations=3, init="style", style_scale=0.5))
    style_mean = it.styles[0][0].mean((1, 2))
    assert (out.image.mean((1, 2)) - style_mean).abs().max() < 0.15


@pytest.mark.parametrize(
    "bad",
    [
        {"color": "sepia"},
        {"init": "zeros"},
        {"style_loss": "l1"},
        {"optimizer": "sgd"},
        {"lr": 0},
        {"ema": 1.0},
        {"style_scale": 10},
        {"start": 4},
        {"ratio": 1.0},
        {"iterations": 0},
        {"iterations": ()},
        {"iterations": "many"},
        {"style_layers": (("relu9_1", 1.0),)},
        {"content_layer": "conv1_1"},
        {"optimizer": "lbfgs", "ema": 0.5},
        {"style_weight": -1},
    ],
)
def test_bad_parameters_rejected(bad):
    with pytest.raises(ValueError):
        EngineConfig(**bad)


def test_batch_of_mixed_shapes_rejected(engine, images):
    with pytest.raises(ValueError, match="one shape"):
        engine.render_batch([item(images, size=48), item(images, size=32)], EngineConfig())


def test_schedule():
    cfg = EngineConfig(start=128, ratio=2, iterations={"first": 100, "decay": 0.5, "minimum": 30})
    assert cfg.schedule(1024) == [(128, 100), (256, 50), (512, 30), (1024, 30)]
    assert EngineConfig(start=512, iterations=(5, 7)).schedule(300) == [(300, 5)]
    assert EngineConfig(start=16, ratio=2, iterations=(5, 7)).schedule(64) == [
        (16, 5),
        (32, 7),
        (64, 7),
    ]


def test_the_quality_bench_renders_the_presets_and_the_searched_settings_it_names():
    """bench/quality.py's methods: a preset as the manifests resolve it, ``NAME@ctvW`` and
    ``NAME@FIELD=V+FIELD=V`` (the parameter searches whose results docs/quality.md quotes)."""
    from bench.quality import preset_config
    from common.params import RenderParams

    for name in ("draft", "standard", "high"):
        want = EngineConfig.from_params(RenderParams(preset=name).resolved())
        assert preset_config(name) == want
    draft = preset_config("draft")
    assert preset_config("draft@ctv8") == replace(draft, chroma_tv_weight=8.0)
    tweaked = preset_config("draft@content_weight=2+tv_weight=0.2")
    assert tweaked == replace(draft, content_weight=2.0, tv_weight=0.2)
    assert preset_config("sliced").style_loss == "sliced"
    with pytest.raises(TypeError):
        preset_config("draft@no_such_field=1")


def test_engine_and_manifest_agree_on_layers_and_presets():
    """The engine keeps its own copy (it imports nothing but torch); the copies must agree."""
    from common.params import ALL_LAYERS, PRESETS, STYLE_LAYERS
    from workers.engine.config import DEFAULT_STYLE_LAYERS, LAYERS

    assert LAYERS == ALL_LAYERS
    assert tuple(name for name, _ in DEFAULT_STYLE_LAYERS) == STYLE_LAYERS
    from bench.engine_bench import PRESETS as BENCH_PRESETS
    from common.params import RenderParams, schedule

    for name, bench in BENCH_PRESETS.items():  # the bench times what the manifests ask for
        assert bench == EngineConfig.from_params(RenderParams(preset=name).resolved())

    custom = {"start": 40, "ratio": 1.7, "iterations": [9, 5, 3]}
    for pyramid in [p["pyramid"] for p in PRESETS.values()] + [custom]:
        params = {
            **PRESETS["standard"],
            "pyramid": pyramid,
            "style_scale": 1.0,
            "color": "none",
            "init": "content",
        }
        engine = EngineConfig.from_params(params)  # every preset is a valid engine configuration
        for size in (16, 100, 512, 1000, 6144):
            assert engine.schedule(size) == schedule(params, size)


def test_borders_move_no_more_than_the_interior(weights_file):
    """Zero padding paints clipped colour into the outer pixels; replicate padding does not."""
    from workers.engine.vgg import load_vgg19

    content, style = (
        tensor(EXAMPLES / "tubingen.jpg", 96),
        tensor(EXAMPLES / "starry_night.jpg", 96),
    )
    it = RenderItem(content, [(style, 1.0)])
    config = EngineConfig(start=48, ratio=2, iterations=40)
    ratios = {}
    for padding in ("replicate", "zeros"):
        net, weights_id = load_vgg19(str(weights_file))
        for conv in net.convs:
            conv.padding_mode = padding
        out = StyleEngine(device="cpu", net=net, weights_id=weights_id).render(it, config).image
        ratios[padding] = [border_ratio(out, it.content, band) for band in (1, 3)]
    # measured: replicate 1.11-1.17, zeros 1.41 (the strongest open peer: 0.95-1.30)
    assert max(ratios["replicate"]) <= 1.25, ratios
    assert all(z > r + 0.15 for z, r in zip(ratios["zeros"], ratios["replicate"], strict=True))


def test_lbfgs_on_a_bf16_engine_runs_in_fp32(weights_file, images):
    """bf16 noise in the objective stopped L-BFGS's line search early (94 of 154 evaluations)."""
    it = item(images, size=32)
    config = EngineConfig(start=32, iterations=30, optimizer="lbfgs")
    results, calls = {}, {}
    for precision in ("fp32", "bf16"):
        engine = StyleEngine(str(weights_file), "cpu", precision=precision)
        objective, count = engine._objective, [0]

        def counted(*args, objective=objective, count=count):
            count[0] += 1
            return objective(*args)

        engine._objective = counted
        results[precision], calls[precision] = engine.render(it, config), count[0]
        assert engine.net.convs[0].weight.dtype == (
            torch.bfloat16 if precision == "bf16" else torch.float32
        )  # the engine's own network is left as it was
    assert calls["bf16"] == calls["fp32"] > 20
    assert torch.equal(results["bf16"].image, results["fp32"].image)


def test_a_time_limit_while_writing_an_output_reaches_the_task(weights_file, tmp_path):
    """A soft time limit raised anywhere in a render is the task's to report, not a failed
    render: the worker records a clean 'soft time limit exceeded' and nothing half written."""
    from billiard.exceptions import SoftTimeLimitExceeded

    from tests.support.manifests import local_settings, tiny_manifest, write_manifest
    from workers.render import Renderer

    class SlowStorage:  # the time limit fires while the output is being written
        def put_output(self, *args):
            raise SoftTimeLimitExceeded()

    images = {n: EXAMPLES / f"{n}.jpg" for n in ("tubingen", "starry_night", "wave")}
    from common.expand import plan_job

    plan = plan_job(
        write_manifest(tmp_path, tiny_manifest(images, tmp_path / "out")), local_settings()
    )
    renderer = Renderer(local_settings(), str(weights_file), "cpu")
    with pytest.raises(SoftTimeLimitExceeded):
        renderer.render_batch(plan.renders[:1], SlowStorage(), "job", "png", 90)


def preset(name: str, **changes) -> EngineConfig:
    from dataclasses import replace

    from common.params import RenderParams

    return replace(EngineConfig.from_params(RenderParams(preset=name).resolved()), **changes)


@pytest.mark.parametrize("name", ["draft", "standard", "high"])
def test_presets_leave_no_colour_speckle(engine, name):
    """Chroma high-frequency energy over luma's stays within 1.3x the larger of the inputs' own
    (workers/engine/measures.py), at a preset's settings over a short pyramid. Without the
    chroma smoothness term the same render is speckled past the bound: the measure sees it."""
    content = tensor(EXAMPLES / "tubingen.jpg", 96)
    style = tensor(EXAMPLES / "starry_night.jpg", 96)
    it = RenderItem(content, [(style, 1.0)])
    short = dict(start=48, ratio=2.0, iterations=(40, 30))
    bound = speckle_bound(content, style, tuple(content.shape[-2:]))
    out = engine.render(it, preset(name, **short)).image
    speckled = engine.render(it, preset(name, chroma_tv_weight=0.0, **short)).image
    assert chroma_ratio(out) <= bound < chroma_ratio(speckled), (
        chroma_ratio(out),
        bound,
        chroma_ratio(speckled),
    )
    assert border_ratio(out, content, 2) <= 1.25
