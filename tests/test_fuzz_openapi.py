"""Fuzz every operation of /openapi.json with schemathesis against the real app.

The app is the suite's aiohttp TestServer on loopback (the `client` fixture), with a real
worker behind it. Schemathesis is synchronous (requests), so it runs in a thread while
the event loop serves. Each operation gets a bounded number of generated requests, the
same ones every run (derandomized hypothesis, no example database), authenticated with a
key holding every scope, in three plans:

- valid requests with random ids (mostly 404s: the not-found paths),
- valid requests naming real objects of the org (broadcast, template, contact, message),
- invalid requests (negative mode) naming the same objects.

Every response must be below 500 and as documented: its status listed for the operation,
its Content-Type and headers those documented for that status, its body matching the schema.
TIDINGS_FUZZ_SCALE=10 multiplies the examples for a deeper run by hand.

The bugs it found (a NUL character, an integer outside 64 bits, JSON nested past orjson's
limit: each answered 500) are fixed in `api/jsonio.decode`; the tests at the end keep them so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any

import pytest
import requests
import schemathesis
import structlog
import structlog.testing
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import make_broadcast, unique_email

# Per operation: (mode, use real ids, examples). 20 requests per operation in all.
PLANS = [
    (GenerationMode.POSITIVE, False, 6),
    (GenerationMode.POSITIVE, True, 8),
    (GenerationMode.NEGATIVE, True, 6),
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SCALE = int(os.environ.get("TIDINGS_FUZZ_SCALE", "1"))


@dataclasses.dataclass
class Finding:
    operation: str
    mode: str
    detail: str


def fuzz(
    doc: dict[str, Any], base_url: str, headers: dict[str, str], ids: dict[str, str], only: str | None = None
) -> list[Finding]:
    schema = schemathesis.openapi.from_dict(doc)
    session = requests.Session()
    findings: list[Finding] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if only is not None and operation.label != only:
            continue
        names = {p.name for p in operation.path_parameters}
        for mode, real_ids, examples in PLANS:
            fixed = {k: v for k, v in ids.items() if k in names and (real_ids or k == "org_id")}

            @hsettings(
                max_examples=examples * SCALE,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                # Shrinking would replay many requests per finding; the failing input is
                # reported as generated.
                phases=[Phase.explicit, Phase.generate],
            )
            @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed or None))
            def run(case: Any) -> None:
                response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
                case.validate_response(response, checks=CHECKS, headers=headers)

            try:
                run()
            except Unsatisfiable:
                # Negative mode on an operation with nothing to make invalid (/healthz, or a
                # path whose only parameter is any string): nothing to test.
                continue
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # schemathesis' FailureGroup: keep going, report all at the end
                findings.append(Finding(operation.label, mode.value, str(exc)))
    session.close()
    return findings


@pytest.fixture
async def org_objects(client: Any, org: Any, worker: Any) -> dict[str, str]:
    """Real objects of the org, so that fuzzed requests get past the 404s."""
    b = await make_broadcast(client, org)
    template_id = b["templates"][0]["id"]
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"email": unique_email("fuzz"), "variables": {"otp": "1"}},
    )
    assert r.status == 200, await r.text()
    record = (await r.json())["recipients"][0]
    return {
        "org_id": str(org.id),
        "broadcast_id": b["id"],
        "template_id": template_id,
        "contact_id": record["contact_id"],
        "message_id": record["id"],
    }


async def test_openapi_operations_never_fail_and_match_their_schemas(
    client: Any, org: Any, org_objects: dict[str, str]
) -> None:
    r = await client.get("/openapi.json")
    assert r.status == 200
    doc = await r.json()
    base_url = str(client.make_url("/")).rstrip("/")
    findings = await asyncio.to_thread(fuzz, doc, base_url, org.auth(), org_objects)
    report = "\n\n".join(f"{f.operation} ({f.mode}):\n{f.detail}" for f in findings)
    assert not findings, f"{len(findings)} finding(s):\n\n{report}"


async def test_the_fuzzer_reports_schema_mismatches(client: Any, org: Any) -> None:
    """The harness itself: a response that contradicts its documented schema is reported."""
    r = await client.get("/openapi.json")
    doc = await r.json()
    ok = doc["paths"]["/healthz"]["get"]["responses"]["200"]
    ok["content"] = {
        "application/json": {
            "schema": {"type": "object", "required": ["status", "uptime_s"], "properties": {"status": {"const": "up"}}}
        }
    }
    base_url = str(client.make_url("/")).rstrip("/")
    findings = await asyncio.to_thread(fuzz, doc, base_url, org.auth(), {}, "GET /healthz")
    assert findings and all(f.operation == "GET /healthz" for f in findings)
    assert "Response violates schema" in findings[0].detail


async def test_nul_characters_are_refused_with_422(client: Any, org: Any) -> None:
    r = await client.post(org.path("/contacts"), headers=org.auth(), json={"name": "a\u0000b"})
    assert r.status == 422, await r.text()


async def test_integers_beyond_64_bits_are_refused_with_422(client: Any, org: Any) -> None:
    r = await client.post(org.path("/contacts"), headers=org.auth(), json={"properties": {"n": 2**70}})
    assert r.status == 422, await r.text()


# Past orjson's limit (the jsonb codec), and past the interpreter's recursion limit
# (msgspec's decoder raises RecursionError, which the API does not catch).
@pytest.mark.parametrize("depth", [300, 5_000])
async def test_deeply_nested_json_is_refused_with_4xx(client: Any, org: Any, depth: int) -> None:
    body = '{"properties": {"a": ' + "[" * depth + "]" * depth + "}}"
    # The logs are captured, not rendered: the dev console renderer takes seconds to print
    # the locals of a 300-deep list.
    with structlog.testing.capture_logs():
        r = await client.post(
            org.path("/contacts"), headers={**org.auth(), "Content-Type": "application/json"}, data=body
        )
    assert 400 <= r.status < 500, r.status


async def test_the_document_lists_the_statuses_the_api_answers(client: Any) -> None:
    doc = await (await client.get("/openapi.json")).json()
    operations = {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}
    for (method, path), op in operations.items():
        if "requestBody" in op:
            assert {"400", "408", "413", "422"} <= set(op["responses"]), (method, path)
    send = operations[("POST", "/orgs/{org_id}/broadcasts/{broadcast_id}/send")]["responses"]
    assert {"200", "202", "409", "422", "429", "503"} <= set(send)
    assert "Retry-After" in send["429"]["headers"]
    for method, path in [
        ("GET", "/confirm/{token}"),
        ("GET", "/unsubscribe/{token}"),
        ("POST", "/unsubscribe/{token}"),
    ]:
        assert list(operations[(method, path)]["responses"]["404"]["content"]) == ["text/html"]
    # Parameters admit only what validation takes.
    recipients = operations[("GET", "/orgs/{org_id}/broadcasts/{broadcast_id}/recipients")]["parameters"]
    by_name = {p["name"]: p["schema"] for p in recipients}
    assert by_name["limit"] == {"type": "integer", "minimum": 1, "maximum": 200}
    assert "enum" in by_name["status"] and by_name["broadcast_id"]["format"] == "uuid"


async def test_a_405_names_the_allowed_methods(client: Any, org: Any) -> None:
    doc = await (await client.get("/openapi.json")).json()
    for path, item in doc["paths"].items():
        documented = {m.upper() for m in item}
        unsupported = next(m for m in ("PUT", "PATCH", "DELETE", "POST") if m not in documented)
        concrete = path.replace("{org_id}", str(org.id))
        while "{" in concrete:
            start = concrete.index("{")
            concrete = concrete[:start] + "00000000-0000-0000-0000-000000000000" + concrete[concrete.index("}") + 1 :]
        r = await client.request(unsupported, concrete, headers=org.auth())
        assert r.status == 405, (path, r.status)
        assert documented <= set(r.headers["Allow"].split(",")), (path, r.headers.get("Allow"))
        body = await r.json()
        if path.startswith("/api/v1/"):
            assert body == {"errors": {"base": ["Method Not Allowed"]}}
        else:
            assert body["error"]["code"] == "method_not_allowed"
