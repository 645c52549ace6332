"""Content credentials (C2PA) on outputs, signed offline with the deployment's certificate.

Each credential says the image was made by an algorithm (IPTC digital source type
``trainedAlgorithmicMedia``, or ``algorithmicMedia`` with untrained weights), lists the
content and style images as ingredients (their URIs and content identities: a SHA-256, or an
S3 ETag), and records the render id, job, engine version and weights id in an
``org.stylebatch.render`` assertion. No network is needed; a time-stamp authority is used
only if STYLEBATCH_C2PA_TSA_URL is set. See docs/campaigns.md for certificates.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from common.errors import StylebatchError
from common.settings import Settings

SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/"
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
ASSERTION = "org.stylebatch.render"


class CredentialsError(StylebatchError):
    """Content credentials were asked for and cannot be made (certificate, key, signing)."""


def manifest_for(meta: dict[str, Any], key: str) -> dict[str, Any]:
    """The C2PA manifest definition of one output, from its embedded metadata."""
    identities = meta.get("inputs") or {}
    trained = not str(meta.get("weights_id", "")).startswith("random")

    def ingredient(uri: str, relationship: str) -> dict[str, Any]:
        identity = identities.get(uri, "")
        return {
            "title": uri,
            "format": "image/*",
            "relationship": relationship,
            "instance_id": identity or uri,
            "metadata": {"stylebatch:uri": uri, "stylebatch:identity": identity},
        }

    return {
        "claim_generator_info": [{"name": "stylebatch", "version": meta["engine"]}],
        "title": key,
        "ingredients": [
            ingredient(meta["content"], "parentOf"),
            *(ingredient(uri, "inputTo") for uri, _ in meta["style_images"]),
        ],
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": SOURCE_TYPE
                            + ("trainedAlgorithmicMedia" if trained else "algorithmicMedia"),
                            "softwareAgent": {"name": "stylebatch", "version": meta["engine"]},
                        }
                    ]
                },
            },
            {
                "label": ASSERTION,
                "data": {
                    "render_id": meta["render_id"],
                    "job": meta["job"],
                    "engine": meta["engine"],
                    "weights": meta["weights"],
                    "weights_id": meta["weights_id"],
                    "style": meta["style"],
                    "size": meta["size"],
                    "inputs": identities,
                },
            },
        ],
    }


class Signer:
    """Signs encoded outputs; built once per worker process from the settings' files."""

    def __init__(self, settings: Settings):
        import c2pa

        if not settings.c2pa_cert or not settings.c2pa_key:
            raise CredentialsError(
                "content credentials asked for, but STYLEBATCH_C2PA_CERT and STYLEBATCH_C2PA_KEY "
                "are not both set"
            )
        try:
            chain = Path(settings.c2pa_cert).read_bytes()
            key = Path(settings.c2pa_key).read_bytes()
            alg = getattr(c2pa.C2paSigningAlg, settings.c2pa_alg.upper())
            info = c2pa.C2paSignerInfo(alg, chain, key, settings.c2pa_tsa_url or None)
            self.signer = c2pa.Signer.from_info(info)
        except (OSError, AttributeError, c2pa.C2paError) as exc:
            raise CredentialsError(f"content credentials: cannot load the signer: {exc}") from None
        # no thumbnail of the output inside the credential: it would cost a decode and an
        # encode per output, and the output itself is what it would show
        self.context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})

    def sign(self, data: bytes, fmt: str, meta: dict[str, Any], key: str) -> bytes:
        import c2pa

        definition = json.dumps(manifest_for(meta, key))
        out = io.BytesIO()
        try:
            with c2pa.Builder(definition, self.context) as builder:
                builder.sign(self.signer, MIME[fmt], io.BytesIO(data), out)
        except c2pa.C2paError as exc:
            raise CredentialsError(f"content credentials: signing failed: {exc}") from None
        return out.getvalue()


def read(data: bytes, fmt: str) -> dict[str, Any]:
    """The active C2PA manifest of an output and its validation state (for tests, audits)."""
    import c2pa

    store = json.loads(c2pa.Reader(MIME[fmt], io.BytesIO(data)).json())
    active = store["manifests"][store["active_manifest"]]
    return {**active, "validation_state": store.get("validation_state")}
