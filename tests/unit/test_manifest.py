"""Manifest validation: every class of error is reported with its path, all at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from common.errors import ManifestError
from common.expand import plan_job
from common.manifest import parse_manifest
from common.settings import Settings
from tests.support.manifests import local_settings, tiny_manifest, write_manifest
from tests.support.paths import ROOT

SETTINGS = local_settings()  # local files may be read, as `stylebatch run` plans


def problems(tmp_path: Path, data: dict, settings: Settings = SETTINGS) -> list[str]:
    path = write_manifest(tmp_path / "m", data)
    with pytest.raises(ManifestError) as info:
        plan_job(path, settings)
    return [str(p) for p in info.value.problems]


def test_demo_example_is_valid():
    plan = plan_job(ROOT / "examples" / "demo.yaml", SETTINGS)
    assert len(plan.renders) == 2
    assert {r.style for r in plan.renders} == {"starry-night", "great-wave"}
    assert plan.location.root == str(ROOT / "examples" / "out" / "demo")


def test_campaign_example_parses():
    import yaml

    data = yaml.safe_load((ROOT / "examples" / "campaign.yaml").read_text())
    manifest = parse_manifest(data, "campaign.yaml")
    assert manifest.styles[2].weighted() == [
        ("s3://campaign-assets/looks/shipwreck.jpg", 0.7),
        ("s3://campaign-assets/looks/composition_vii.jpg", 0.3),
    ]
    assert manifest.schedule is not None and manifest.schedule.timezone == "Europe/Berlin"


def test_json_manifest(tmp_path, images):
    path = write_manifest(tmp_path, tiny_manifest(images, tmp_path / "out"), ".json")
    assert len(plan_job(path, SETTINGS).renders) == 2


def test_unknown_fields_rejected_with_paths(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    data["colour"] = "red"
    data["params"]["iters"] = 3
    data["styles"][0]["opacity"] = 1
    found = problems(tmp_path, data)
    assert "colour: unknown field" in found
    assert "params.iters: unknown field" in found
    assert "styles[0].opacity: unknown field" in found


def test_every_error_reported_at_once(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    data["params"]["sizes"] = [9000, 8]
    data["priority"] = 12
    data["output"]["format"] = "gif"
    data["styles"][1]["name"] = "bad name!"
    found = "\n".join(problems(tmp_path, data))
    for where in (
        "params.sizes[0]",
        "params.sizes[1]",
        "priority",
        "output.format",
        "styles[1].name",
    ):
        assert where in found, found


@pytest.mark.parametrize(
    ("patch", "where", "fragment"),
    [
        ({"params": {"pyramid": {"iterations": 0}}}, "params.pyramid.iterations", "greater"),
        ({"params": {"pyramid": {"iterations": 20000}}}, "params.pyramid.iterations", "less"),
        ({"params": {"preset": "ultra"}}, "params.preset", "draft"),
        ({"params": {"style_layers": {"relu9_9": 1}}}, "params.style_layers", "unknown layer"),
        ({"params": {"optimizer": "lbfgs", "ema": 0.5}}, "params", "ema"),
        ({"params": {"color": "sepia"}}, "params.color", "luminance"),
        ({"params": {"sizes": [64, 64]}}, "params.sizes", "distinct"),
        ({"output": {"key": "{content}/{colour}.{ext}"}}, "output.key", "unknown key field"),
        ({"output": {"quality": 0}}, "output.quality", "greater"),
    ],
)
def test_bad_values(tmp_path, images, patch, where, fragment):
    data = tiny_manifest(images, tmp_path / "out")
    for section, values in patch.items():
        data[section] = {**data[section], **values} if isinstance(data[section], dict) else values
    found = problems(tmp_path, data)
    assert any(p.startswith(where) and fragment in p for p in found), found


def test_style_needs_exactly_one_source(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    data["styles"][0]["images"] = [{"uri": str(images["wave"]), "weight": 1}]
    assert any("exactly one of" in p for p in problems(tmp_path, data))


def test_duplicate_style_names(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    data["styles"][1]["name"] = "starry"
    assert any("unique" in p for p in problems(tmp_path, data))


def test_missing_files_named(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    data["content"].append("nowhere/photo.jpg")
    data["styles"][1]["image"] = "/no/such/style.png"
    found = problems(tmp_path, data)
    assert any(
        p.startswith("content[1]: file not found") and "nowhere/photo.jpg" in p for p in found
    )
    assert any(p.startswith("styles[1].image: file not found") for p in found)


def test_glob_that_matches_nothing(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    data["content"] = [{"glob": str(tmp_path / "*.jpg")}]
    assert any(p.startswith("content[0].glob: matches no image") for p in problems(tmp_path, data))


@pytest.mark.parametrize(
    "key",
    [
        "../{content}.{ext}",
        "/abs/{content}.{ext}",
        "a//{id}.{ext}",
        "{content}/../../x-{id}.{ext}",
        "summary.json",
    ],
)
def test_keys_that_escape_the_prefix(tmp_path, images, key):
    data = tiny_manifest(images, tmp_path / "out")
    data["output"]["key"] = key
    data["styles"] = data["styles"][:1]
    assert any(p.startswith("output.key") for p in problems(tmp_path, data))


def test_key_collisions(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    data["output"]["key"] = "{content}.{ext}"  # two styles, one key
    found = problems(tmp_path, data)
    assert any(
        p.startswith("output.key: two different renders map to 'tubingen.png'") for p in found
    )


def test_render_limit(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out", sizes=[48, 64, 96])
    found = problems(tmp_path, data, dataclasses.replace(SETTINGS, max_renders=5))
    assert any("expands to 6 renders; the limit is 5" in p for p in found)


def test_invalid_uris(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    data["content"] = ["ftp://host/a.jpg", "s3://Bad_Bucket/a.jpg"]
    data["output"]["location"] = "http://example.invalid/out"
    found = problems(tmp_path, data)
    assert any(p.startswith("content[0]: unsupported URI scheme") for p in found)
    assert any(p.startswith("content[1]: invalid S3 bucket") for p in found)
    assert any(p.startswith("output.location") for p in found)


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ncontent: [a, b\nstyles: {}\n")
    with pytest.raises(ManifestError) as info:
        plan_job(path, SETTINGS)
    assert info.value.problems[0].where.startswith("line ")


def test_not_a_mapping_and_missing_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ManifestError, match="mapping"):
        plan_job(path, SETTINGS)
    with pytest.raises(ManifestError, match="file not found"):
        plan_job(tmp_path / "absent.yaml", SETTINGS)


def test_required_fields(tmp_path):
    found = problems(tmp_path, {"name": "x"})
    assert {"output: Field required", "content: Field required", "styles: Field required"} <= set(
        found
    )


def problem_map(tmp_path, data) -> dict[str, str]:
    with pytest.raises(ManifestError) as info:
        plan_job(write_manifest(tmp_path, data), SETTINGS)
    return {p.where: p.message for p in info.value.problems}


@pytest.mark.parametrize(
    "key", ["{content}/{size:>20000000}.{ext}", "{content!r}.{ext}", "{style:.3}/{content}.{ext}"]
)
def test_key_fields_take_no_format_spec_or_conversion(tmp_path, images, key):
    data = tiny_manifest(images, tmp_path / "out")
    data["output"]["key"] = key
    found = problem_map(tmp_path, data)
    assert "key fields take no format spec or conversion" in found["output.key"]


def test_misspelt_fields_get_a_suggestion(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    data["params"]["size"] = data["params"].pop("sizes")
    data["output"]["formt"] = "png"
    data["styles"][0]["parms"] = {}
    data["content"].append({"globb": "*.png"})
    found = problem_map(tmp_path, data)
    assert found["params.size"] == "unknown field; did you mean 'sizes'?"
    assert found["output.formt"] == "unknown field; did you mean 'format'?"
    assert found["styles[0].parms"] == "unknown field; did you mean 'params'?"
    assert any("did you mean 'glob'?" in m for w, m in found.items() if w.startswith("content"))


def test_a_bad_cron_and_a_bad_time_zone_reported_together(tmp_path, images):
    data = tiny_manifest(images, tmp_path / "out")
    data["schedule"] = {"cron": "61 * * * *", "timezone": "Mars/Olympus"}
    message = problem_map(tmp_path, data)["schedule"]
    assert "invalid cron expression" in message and "unknown time zone" in message


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("ümlaut.JPG", "umlaut"),
        ("Crème brûlée.jpg", "Creme_brulee"),
        ("東京 タワー.png", "東京_タワー"),
        ("a+b (1).png", "a_b__1"),
        ("...png", "image"),
    ],
)
def test_names_keep_their_letters(name, slug):
    from common.expand import content_name

    assert content_name(f"s3://bucket/shots/{name}") == slug
