"""The emulated ASAPP API: a real server on port 0, driven with a real httpx client."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from consumer.records import Entity
from consumer.sandbox.api import (
    DEFAULT_API_ID,
    REJECTION,
    EmulatedApi,
    Faults,
    FaultStep,
    Stall,
    parser,
    steps,
)

AUTH = {"asapp-api-id": "id-1", "asapp-api-secret": "secret-1"}
MANY_AGENT = "/metadata-ingestion/v1/many-agent-metadata"
SINGLE = "/metadata-ingestion/v1/single-{}-metadata"
MANY_CONVO = "/metadata-ingestion/v1/many-convo-metadata"
CONVO = {"items": [{"externalConversationId": "c1", "eventId": "c-1"}]}


@pytest.fixture
def api() -> Iterator[EmulatedApi]:
    with EmulatedApi(api_id="id-1", api_secret="secret-1", retry_after_s=2) as server:
        yield server


@pytest.fixture
def client(api: EmulatedApi) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, headers=AUTH, timeout=5) as c:
        yield c


def agents(*ids: str, **extra: Any) -> dict[str, Any]:
    return {"items": [{"externalAgentId": i, "eventId": f"evt-{i}", **extra} for i in ids]}


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body["error"]) == {"requestId", "message", "code"}
    code: str = body["error"]["code"]
    return code


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"asapp-api-id": "id-1"}, id="no-secret"),
        pytest.param({"asapp-api-id": "id-1", "asapp-api-secret": "wrong"}, id="wrong-secret"),
        pytest.param({"asapp-api-id": "other", "asapp-api-secret": "secret-1"}, id="wrong-id"),
    ],
)
def test_bad_credentials_get_401(api: EmulatedApi, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=api.url, headers=headers) as c:
        response = c.post(MANY_AGENT, json=agents("a1"))
    assert response.status_code == 401
    assert error_code(response) == "401-01"
    assert response.json()["error"]["message"] == "Unauthorized"
    assert api.items(Entity.AGENT) == []


def test_all_ok_batch(api: EmulatedApi, client: httpx.Client) -> None:
    response = client.post(MANY_AGENT, json=agents("a1", "a2", "a3"))
    assert response.status_code == 200
    assert response.json() == {
        "errorCount": 0,
        "results": [{"eventId": f"evt-a{n}", "error": ""} for n in (1, 2, 3)],
    }
    assert [i["externalAgentId"] for i in api.items(Entity.AGENT)] == ["a1", "a2", "a3"]
    assert response.headers["content-type"] == "application/json"


def test_partial_success_is_200_in_item_order(api: EmulatedApi, client: httpx.Client) -> None:
    body = {"items": [{"externalAgentId": "ok-1"}, {"externalAgentId": "bad id"}, {}]}
    response = client.post(MANY_AGENT, json=body)
    assert response.status_code == 200
    data = response.json()
    assert data["errorCount"] == 2
    errors = [r["error"] for r in data["results"]]
    assert errors[0] == ""
    assert errors[1] == r"FAIL_BAD_PARAMS: ERROR: externalAgentId: does not match [a-zA-Z0-9\-\_]+"
    assert errors[2] == "FAIL_BAD_PARAMS: ERROR: externalAgentId: is required"
    assert all(len(r["eventId"]) == 36 for r in data["results"])  # generated UUIDs
    assert api.items(Entity.AGENT) == [{"externalAgentId": "ok-1"}]


def test_all_bad_is_400_with_results(api: EmulatedApi, client: httpx.Client) -> None:
    response = client.post(MANY_AGENT, json=agents("a 1", "a 2"))
    assert response.status_code == 400
    data = response.json()
    assert data["errorCount"] == 2
    assert [r["eventId"] for r in data["results"]] == ["evt-a 1", "evt-a 2"]
    assert api.items(Entity.AGENT) == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"items": []}, id="empty"),
        pytest.param({"items": [{"externalAgentId": f"a{i}"} for i in range(1001)]}, id="1001"),
        pytest.param({"item": [{"externalAgentId": "a1"}]}, id="no-items-key"),
        pytest.param([{"externalAgentId": "a1"}], id="bare-list"),
    ],
)
def test_batch_shape_errors_are_generic_400(
    api: EmulatedApi, client: httpx.Client, body: Any
) -> None:
    response = client.post(MANY_AGENT, json=body)
    assert response.status_code == 400
    assert error_code(response) == "400-01"
    assert api.items(Entity.AGENT) == []


def test_exactly_1000_items_are_accepted(api: EmulatedApi, client: httpx.Client) -> None:
    response = client.post(MANY_AGENT, json=agents(*(f"a{i}" for i in range(1000))))
    assert response.status_code == 200
    assert api.accepted_count(Entity.AGENT) == 1000


def test_non_json_body_is_400(client: httpx.Client) -> None:
    response = client.post(MANY_AGENT, content=b"{not json", headers={"content-type": "x"})
    assert response.status_code == 400
    assert error_code(response) == "400-01"


@pytest.mark.parametrize(
    ("suffix", "entity", "item"),
    [
        pytest.param("agent", Entity.AGENT, {"externalAgentId": "a1"}, id="agent"),
        pytest.param("convo", Entity.CONVERSATION, {"externalConversationId": "c1"}, id="convo"),
        pytest.param(
            "customer",
            Entity.CUSTOMER,
            {"externalConversationId": "c1", "externalCustomerId": "jdoe@x.com"},
            id="customer",
        ),
    ],
)
def test_single_endpoints(
    api: EmulatedApi, client: httpx.Client, suffix: str, entity: Entity, item: dict[str, Any]
) -> None:
    ok = client.post(SINGLE.format(suffix), json={**item, "eventId": "e-1"})
    assert ok.status_code == 200
    assert ok.json() == {"result": {"eventId": "e-1", "error": ""}}
    bad = client.post(SINGLE.format(suffix), json={**item, "unknownField": 1})
    assert bad.status_code == 400
    assert bad.json()["result"]["error"] == "FAIL_BAD_PARAMS: ERROR: unknownField: unknown field"
    assert api.items(entity) == [{**item, "eventId": "e-1"}]


def test_many_endpoints_route_to_their_entity(api: EmulatedApi, client: httpx.Client) -> None:
    convo = {"items": [{"externalConversationId": "c1"}]}
    assert client.post("/metadata-ingestion/v1/many-convo-metadata", json=convo).status_code == 200
    # an agent item on the customer endpoint is not a customer item
    wrong = client.post("/metadata-ingestion/v1/many-customer-metadata", json=agents("a1"))
    assert wrong.status_code == 400
    assert api.items(Entity.CONVERSATION) == [{"externalConversationId": "c1"}]
    assert api.items(Entity.CUSTOMER) == []


def test_unknown_path_and_method(client: httpx.Client) -> None:
    assert client.post("/metadata-ingestion/v1/many-robot-metadata", json={}).status_code == 404
    response = client.get(MANY_AGENT)
    assert response.status_code == 405
    assert error_code(response) == "405-01"


def test_body_size_limit_413_keeps_the_connection() -> None:
    with (
        EmulatedApi(api_id="id-1", api_secret="secret-1", max_body_bytes=200) as api,
        httpx.Client(base_url=api.url, headers=AUTH) as c,
    ):
        big = c.post(MANY_AGENT, json=agents(*(f"agent-{i}" for i in range(20))))
        small = c.post(MANY_AGENT, json=agents("a1"))
    assert big.status_code == 413
    assert error_code(big) == "413-01"
    assert small.status_code == 200
    assert [r.status for r in api.requests()] == [413, 200]
    assert api.requests()[0].body_bytes > 200


def test_rate_limit_429_with_retry_after() -> None:
    now = [100.0]
    with (
        EmulatedApi(
            api_id="id-1",
            api_secret="secret-1",
            rate_limit_rps=2,
            retry_after_s=3,
            clock=lambda: now[0],
        ) as api,
        httpx.Client(base_url=api.url, headers=AUTH) as c,
    ):
        statuses = [c.post(MANY_AGENT, json=agents("a1")).status_code for _ in range(3)]
        limited = c.post(MANY_AGENT, json=agents("a1"))
        now[0] += 0.5  # one token refilled at 2 req/s
        after_wait = c.post(MANY_AGENT, json=agents("a1"))
    assert statuses == [200, 200, 429]
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"
    assert error_code(limited) == "429-01"
    assert after_wait.status_code == 200
    assert api.accepted_count(Entity.AGENT) == 3


def test_status_sequence_then_normal(api: EmulatedApi, client: httpx.Client) -> None:
    api.set_faults(Faults(sequence=steps(503, 503, 429, 500)))
    responses = [client.post(MANY_AGENT, json=agents("a1")) for _ in range(5)]
    assert [r.status_code for r in responses] == [503, 503, 429, 500, 200]
    assert [error_code(r) for r in responses[:4]] == ["503-01", "503-01", "429-01", "500-01"]
    assert responses[0].json()["error"]["message"] == "Service Unavailable"
    assert responses[2].headers["retry-after"] == "2"  # the server's retry_after_s
    assert [r.fault for r in api.requests()] == [
        "sequence:503",
        "sequence:503",
        "sequence:429",
        "sequence:500",
        None,
    ]
    assert [r.retry_after for r in api.requests()] == [None, None, "2", None, None]
    assert api.request_count() == 5
    assert api.items(Entity.AGENT) == [{"externalAgentId": "a1", "eventId": "evt-a1"}]


def test_fault_retry_after_overrides_and_fractions(api: EmulatedApi, client: httpx.Client) -> None:
    api.set_faults(Faults(sequence=steps(429), retry_after_s=0.25))
    response = client.post(MANY_AGENT, json=agents("a1"))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "0.25"
    assert [r.retry_after for r in api.requests()] == ["0.25"]  # as sent


def test_reset_closes_without_answer(api: EmulatedApi, client: httpx.Client) -> None:
    api.set_faults(Faults(sequence=steps("reset")))
    with pytest.raises(httpx.TransportError):
        client.post(MANY_AGENT, json=agents("a1"))
    assert client.post(MANY_AGENT, json=agents("a2")).status_code == 200  # new connection
    assert [(r.status, r.fault) for r in api.requests()] == [(0, "sequence:reset"), (200, None)]
    assert [i["externalAgentId"] for i in api.items(Entity.AGENT)] == ["a2"]


def test_malformed_is_200_with_non_json(api: EmulatedApi, client: httpx.Client) -> None:
    api.set_faults(Faults(sequence=steps("malformed")))
    response = client.post(MANY_AGENT, json=agents("a1"))
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert api.items(Entity.AGENT) == []  # nothing was ingested


def test_timeout_hangs_longer_than_the_client(api: EmulatedApi, client: httpx.Client) -> None:
    api.set_faults(Faults(sequence=steps("timeout"), hang_s=5))
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.post(MANY_AGENT, json=agents("a1"), timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2


def test_per_step_latency(api: EmulatedApi, client: httpx.Client) -> None:
    api.set_faults(Faults(sequence=(FaultStep("ok", latency_ms=300),)))
    started = time.monotonic()
    response = client.post(MANY_AGENT, json=agents("a1"))
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_added_latency(api: EmulatedApi, client: httpx.Client) -> None:
    api.set_faults(Faults(latency_ms=150))
    started = time.monotonic()
    client.post(MANY_AGENT, json=agents("a1"))
    client.post(MANY_AGENT, json=agents("a2"))
    assert time.monotonic() - started >= 0.3


def test_echo_event_ids_false(api: EmulatedApi, client: httpx.Client) -> None:
    api.set_faults(Faults(echo_event_ids=False))
    response = client.post(MANY_AGENT, json=agents("a1", "a2"))
    ids = [r["eventId"] for r in response.json()["results"]]
    assert response.status_code == 200
    assert "evt-a1" not in ids and "evt-a2" not in ids
    assert len(set(ids)) == 2 and all(len(i) == 36 for i in ids)


def test_injected_rejections(api: EmulatedApi, client: httpx.Client) -> None:
    api.set_faults(Faults(reject_rate=1.0))
    all_rejected = client.post(MANY_AGENT, json=agents("a1", "a2"))
    assert all_rejected.status_code == 400
    assert {r["error"] for r in all_rejected.json()["results"]} == {REJECTION}
    api.set_faults(Faults(reject_rate=0.5, seed=1))
    some = client.post(MANY_AGENT, json=agents(*(f"a{i}" for i in range(100))))
    data = some.json()
    assert some.status_code == 200
    assert 20 < data["errorCount"] < 80
    assert len(api.items(Entity.AGENT)) == 100 - data["errorCount"]


def test_random_errors_and_resets(api: EmulatedApi, client: httpx.Client) -> None:
    api.set_faults(Faults(error_rate=1.0, error_statuses=(502,)))
    assert client.post(MANY_AGENT, json=agents("a1")).status_code == 502
    api.set_faults(Faults(reset_rate=1.0))
    with pytest.raises(httpx.TransportError):
        client.post(MANY_AGENT, json=agents("a1"))
    assert api.stats()["faults_injected"] == 2


@pytest.mark.parametrize(
    ("faults", "status"),
    [
        pytest.param(Faults(reject_credentials=True), 401, id="reject-credentials"),
        pytest.param(Faults(forbidden=True), 403, id="forbidden"),
    ],
)
def test_credential_flags(
    api: EmulatedApi, client: httpx.Client, faults: Faults, status: int
) -> None:
    api.set_faults(faults)
    response = client.post(MANY_AGENT, json=agents("a1"))
    assert response.status_code == status
    assert error_code(response) == f"{status}-01"


def test_count_only_mode() -> None:
    with (
        EmulatedApi(api_id="id-1", api_secret="secret-1", record_items=False) as api,
        httpx.Client(base_url=api.url, headers=AUTH) as c,
    ):
        c.post(MANY_AGENT, json=agents("a1", "a2"))
        items = c.get("/_emulator/items", params={"entity": "agent"}).json()
    assert items == []
    assert api.accepted_count(Entity.AGENT) == 2


def test_control_endpoints(api: EmulatedApi, client: httpx.Client) -> None:
    bare = httpx.Client(base_url=api.url)  # no auth needed
    assert bare.get("/_emulator/health").json() == {"status": "ok"}
    config = {"sequence": [503, {"status": "ok", "latency_ms": 5}], "reject_rate": 0.0}
    posted = bare.post("/_emulator/faults", json=config)
    assert posted.status_code == 200
    assert bare.get("/_emulator/faults").json()["sequence"] == [
        503,
        {"status": "ok", "latency_ms": 5.0},
    ]
    assert bare.post("/_emulator/faults", json={"nope": 1}).status_code == 400
    # the rejected config did not replace the accepted one
    assert client.post(MANY_AGENT, json=agents("a1")).status_code == 503
    assert client.post(MANY_AGENT, json=agents("a1")).status_code == 200
    client.post("/metadata-ingestion/v1/many-convo-metadata", json={"items": [{"x": 1}]})

    assert bare.get("/_emulator/items", params={"entity": "agent"}).json() == [
        {"externalAgentId": "a1", "eventId": "evt-a1"}
    ]
    assert bare.get("/_emulator/items", params={"entity": "robot"}).status_code == 400
    requests = bare.get("/_emulator/requests").json()
    assert [(r["entity"], r["status"], r["item_count"]) for r in requests] == [
        ("agent", 503, 0),
        ("agent", 200, 1),
        ("conversation", 400, 1),
    ]
    assert requests[1]["body_bytes"] > 0
    assert requests[0]["t_monotonic"] <= requests[1]["t_monotonic"]
    stats = bare.get("/_emulator/stats").json()
    assert stats["requests"] == 3
    assert stats["statuses"] == {"200": 1, "400": 1, "503": 1}
    assert stats["entities"]["agent"]["items_accepted"] == 1
    assert stats["entities"]["conversation"]["items_rejected"] == 1

    bare.post("/_emulator/faults", json={"sequence": [500]})
    assert bare.post("/_emulator/reset").status_code == 200
    assert bare.get("/_emulator/items", params={"entity": "agent"}).json() == []
    assert bare.get("/_emulator/requests").json() == []
    assert bare.get("/_emulator/faults").json()["sequence"] == []  # faults cleared too
    assert client.post(MANY_AGENT, json=agents("a1")).status_code == 200
    bare.close()


def test_faults_from_dict_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="unknown fault keys"):
        Faults.from_dict({"error_rat": 0.1})
    with pytest.raises(ValueError, match="error_rate"):
        Faults.from_dict({"error_rate": 2})
    with pytest.raises(ValueError, match="fault step"):
        Faults.from_dict({"sequence": ["explode"]})
    round_trip = Faults.from_dict({"sequence": [429, "reset"], "retry_after_s": 1})
    assert Faults.from_dict(round_trip.to_dict()) == round_trip


def test_keep_alive_reuses_one_connection(api: EmulatedApi, client: httpx.Client) -> None:
    for n in range(5):
        assert client.post(MANY_AGENT, json=agents(f"a{n}")).status_code == 200
    clients = {r.client for r in api.requests()}
    assert len(clients) == 1 and clients != {""}
    with httpx.Client(base_url=api.url, headers=AUTH) as other:
        other.post(MANY_AGENT, json=agents("b1"))
    assert len({r.client for r in api.requests()}) == 2


def test_stop_ends_hanging_requests_and_connections() -> None:
    api = EmulatedApi(faults=Faults(sequence=steps("timeout"), hang_s=30)).start()
    client = httpx.Client(base_url=api.url, timeout=10)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.post(MANY_AGENT, json=agents("a1"))
        except httpx.HTTPError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.2)
    started = time.monotonic()
    api.stop()
    caller.join(timeout=5)
    assert time.monotonic() - started < 3
    assert len(errors) == 1
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{api.url}{MANY_AGENT}", json=agents("a1"), timeout=1)
    client.close()


def test_cli_prints_ready_line_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consumer.sandbox.api",
            "--port",
            "0",
            "--api-id",
            "X",
            "--api-secret",
            "Y",
            "--faults",
            '{"sequence": [503]}',
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("emulated ASAPP API listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        headers = {"asapp-api-id": "X", "asapp-api-secret": "Y"}
        assert httpx.post(url + MANY_AGENT, json=agents("a1"), headers=headers).status_code == 503
        assert httpx.post(url + MANY_AGENT, json=agents("a1"), headers=headers).status_code == 200
        proc.terminate()
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()


def test_non_object_items_and_blank_event_ids(api: EmulatedApi, client: httpx.Client) -> None:
    body = {"items": [7, {"externalAgentId": "a1", "eventId": ""}, {"externalAgentId": "a2"}]}
    response = client.post(MANY_AGENT, json=body)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["error"] for r in results] == [
        "FAIL_BAD_PARAMS: ERROR: item: must be object",
        r"FAIL_BAD_PARAMS: ERROR: eventId: does not match [a-zA-Z0-9\-\_]+",
        "",
    ]
    assert all(len(r["eventId"]) == 36 for r in results)  # none usable: all generated
    assert api.items(Entity.AGENT) == [{"externalAgentId": "a2"}]


# ---- modes for the Core v2 end-to-end cases -----------------------------------------------------

MIXED = {"items": [{"externalAgentId": "ok-1", "eventId": "e-1"},
                   {"externalAgentId": "bad id", "eventId": "e-2"},
                   {"externalAgentId": "ok-3", "eventId": "e-3"}]}  # fmt: skip


@pytest.mark.parametrize(
    ("faults", "echoed"),
    [
        pytest.param(Faults(), ["e-1", "e-2", "e-3"], id="none"),
        pytest.param(Faults(server_ids="rejected"), ["e-1", None, "e-3"], id="rejected"),
        pytest.param(Faults(server_ids="all"), [None, None, None], id="all"),
        pytest.param(Faults(echo_event_ids=False), [None, None, None], id="echo-off-means-all"),
    ],
)
def test_server_made_result_ids(
    api: EmulatedApi, client: httpx.Client, faults: Faults, echoed: list[str | None]
) -> None:
    api.set_faults(faults)
    results = client.post(MANY_AGENT, json=MIXED).json()["results"]
    assert [r["error"] == "" for r in results] == [True, False, True]  # still in item order
    for result, own in zip(results, echoed, strict=True):
        if own is None:
            assert len(result["eventId"]) == 36 and result["eventId"] not in {"e-1", "e-2", "e-3"}
        else:
            assert result["eventId"] == own


@pytest.mark.parametrize("count", [pytest.param(2, id="two"), pytest.param(50, id="fifty")])
def test_shuffled_results_are_never_in_item_order(
    api: EmulatedApi, client: httpx.Client, count: int
) -> None:
    api.set_faults(Faults(shuffle_results=True, seed=0))
    body = agents(*(f"a{n}" for n in range(count)))
    for _ in range(5):
        results = client.post(MANY_AGENT, json=body).json()["results"]
        ids = [r["eventId"] for r in results]
        assert ids != [f"evt-a{n}" for n in range(count)]
        assert sorted(ids) == sorted(f"evt-a{n}" for n in range(count))
    # the items themselves are ingested in request order
    assert [i["eventId"] for i in api.items(Entity.AGENT)][:count] == [
        f"evt-a{n}" for n in range(count)
    ]


def test_shuffled_results_with_server_ids_for_rejected(
    api: EmulatedApi, client: httpx.Client
) -> None:
    api.set_faults(Faults(shuffle_results=True, server_ids="rejected", seed=3))
    results = client.post(MANY_AGENT, json=MIXED).json()["results"]
    by_id = {r["eventId"]: r["error"] for r in results}
    assert by_id.pop("e-1") == "" and by_id.pop("e-3") == ""
    [(foreign, error)] = by_id.items()
    assert len(foreign) == 36 and error.startswith("FAIL_BAD_PARAMS")


def test_stall_holds_one_entity_then_answers_its_status_until_the_window_ends() -> None:
    now = [50.0]
    stall = Stall(Entity.CONVERSATION, hold_s=0.3, status=503, for_s=10)
    with (
        EmulatedApi(api_id="id-1", api_secret="secret-1", clock=lambda: now[0]) as api,
        httpx.Client(base_url=api.url, headers=AUTH, timeout=5) as c,
    ):
        api.set_faults(Faults(stall=stall))
        started = time.monotonic()
        held = c.post(MANY_CONVO, json=CONVO)
        held_for = time.monotonic() - started
        started = time.monotonic()
        other = c.post(MANY_AGENT, json=agents("a1"))
        other_for = time.monotonic() - started
        now[0] += 9.9
        still = c.post(MANY_CONVO, json=CONVO).status_code
        now[0] += 0.1  # the window is over
        after = c.post(MANY_CONVO, json=CONVO).status_code
    assert (held.status_code, error_code(held)) == (503, "503-01")
    assert held_for >= 0.3
    assert other.status_code == 200 and other_for < 0.3
    assert (still, after) == (503, 200)
    assert [r.fault for r in api.requests()] == ["stall:503", None, "stall:503", None]
    assert api.items(Entity.CONVERSATION) == CONVO["items"]  # only the one after the window


def test_stall_without_window_lasts_until_replaced(api: EmulatedApi, client: httpx.Client) -> None:
    api.set_faults(Faults(stall=Stall(Entity.AGENT, hold_s=0.0, status=500)))
    assert [client.post(MANY_AGENT, json=agents("a1")).status_code for _ in range(3)] == [500] * 3
    api.set_faults(Faults())
    assert client.post(MANY_AGENT, json=agents("a1")).status_code == 200


def test_stall_is_set_and_read_through_the_control_endpoint(
    api: EmulatedApi, client: httpx.Client
) -> None:
    config = {"stall": {"entity": "convo", "hold_s": 0, "for_s": 60}}
    posted = client.post("/_emulator/faults", json=config)
    assert posted.status_code == 200
    assert posted.json()["stall"] == {
        "entity": "conversation",
        "hold_s": 0.0,
        "status": 503,
        "for_s": 60.0,
    }
    assert api.faults.stall == Stall(Entity.CONVERSATION, hold_s=0.0, status=503, for_s=60.0)
    assert client.post(MANY_CONVO, json=CONVO).status_code == 503
    assert Faults.from_dict(api.faults.to_dict()) == api.faults


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param({"server_ids": "some"}, "server_ids", id="server-ids"),
        pytest.param({"shuffle_results": 1}, "shuffle_results", id="shuffle-not-bool"),
        pytest.param({"stall": {"entity": "robot", "hold_s": 1}}, "stall.entity", id="entity"),
        pytest.param({"stall": {"entity": "agent", "hold_s": -1}}, "hold_s", id="hold"),
        pytest.param({"stall": {"entity": "agent", "status": 200}}, "stall.status", id="status"),
        pytest.param({"stall": {"entity": "agent", "for_s": -2}}, "for_s", id="window"),
        pytest.param({"stall": {"entity": "agent", "hold": 1}}, "expected keys", id="key"),
    ],
)
def test_new_fault_keys_reject_bad_values(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Faults.from_dict(config)


def test_receipts_log_each_accepted_item_in_acceptance_order_with_wall_time() -> None:
    wall = [1_700_000_000.0]
    with (
        EmulatedApi(api_id="id-1", api_secret="secret-1", wall_clock=lambda: wall[0]) as api,
        httpx.Client(base_url=api.url, headers=AUTH, timeout=5) as c,
    ):
        c.post(MANY_AGENT, json=MIXED)
        wall[0] += 2.5
        c.post(MANY_CONVO, json=CONVO)
        c.post(MANY_AGENT, json={"items": [{"externalAgentId": "no-id"}]})
        served = c.get("/_emulator/receipts", params={"entity": "conversation"}).json()
        bad = c.get("/_emulator/receipts", params={"entity": "robot"}).status_code
    receipts = api.receipts()
    assert [(r.entity, r.event_id, r.t_wall) for r in receipts] == [
        (Entity.AGENT, "e-1", 1_700_000_000.0),
        (Entity.AGENT, "e-3", 1_700_000_000.0),
        (Entity.CONVERSATION, "c-1", 1_700_000_002.5),
        (Entity.AGENT, None, 1_700_000_002.5),
    ]
    assert receipts[1].item == {"externalAgentId": "ok-3", "eventId": "e-3"}
    assert [r.event_id for r in api.receipts(Entity.AGENT)] == ["e-1", "e-3", None]
    assert served == [receipts[2].to_dict()]
    assert bad == 400
    api.reset()
    assert api.receipts() == []


# ---- the account's quota: daily quota and spike arrest ------------------------------------------

#: 2026-12-01 23:59:00 UTC: one minute to midnight.
BEFORE_MIDNIGHT = 1_796_169_540.0


def quota_api(wall: list[float], mono: list[float], **kw: Any) -> EmulatedApi:
    return EmulatedApi(
        api_id="id-1",
        api_secret="secret-1",
        clock=lambda: mono[0],
        wall_clock=lambda: wall[0],
        **kw,
    )


def test_daily_quota_refuses_with_429_02_until_midnight_then_counts_again() -> None:
    wall, mono = [BEFORE_MIDNIGHT], [0.0]
    with (
        quota_api(wall, mono, daily_quota=3) as api,
        httpx.Client(base_url=api.url, headers=AUTH) as c,
    ):
        # every endpoint and every client draws on the same count
        first = [
            c.post(MANY_AGENT, json=agents("a1")).status_code,
            c.post(SINGLE.format("convo"), json=CONVO["items"][0]).status_code,
        ]
        with httpx.Client(base_url=api.url, headers=AUTH) as other:
            first.append(other.post(MANY_CONVO, json=CONVO).status_code)
        spent = c.post(MANY_AGENT, json=agents("a2"))
        wall[0] += 30.0
        still = c.post(MANY_AGENT, json=agents("a2"))
        assert api.quota()["refused"] == {"429-02": 2}
        wall[0] += 31.0  # 00:00:01 the next day
        next_day = c.post(MANY_AGENT, json=agents("a3"))
        used_next_day = api.quota_used()
    assert first == [200, 200, 200]
    assert (spent.status_code, error_code(spent)) == (429, "429-02")
    assert spent.headers["retry-after"] == "60"
    assert still.headers["retry-after"] == "30"
    assert next_day.status_code == 200
    assert used_next_day == 1
    assert api.accepted_count(Entity.AGENT) == 2  # refused requests ingest nothing


def test_spike_arrest_refuses_above_n_within_any_second_with_429_01() -> None:
    wall, mono = [BEFORE_MIDNIGHT - 3600], [10.0]
    with (
        quota_api(wall, mono, spike_rps=3) as api,
        httpx.Client(base_url=api.url, headers=AUTH) as c,
    ):
        burst = []
        for dt in (0.0, 0.3, 0.6, 0.9):
            mono[0] = 10.0 + dt
            burst.append(c.post(MANY_AGENT, json=agents("a1")))
        mono[0] = 11.0  # the request at 10.0 left the window; 10.3 and 10.6 are still in it
        after_one = c.post(MANY_AGENT, json=agents("a1"))
        mono[0] = 11.05
        crowded = c.post(MANY_AGENT, json=agents("a1"))
        mono[0] = 12.0
        later = c.post(MANY_AGENT, json=agents("a1"))
    assert [r.status_code for r in burst] == [200, 200, 200, 429]
    assert error_code(burst[3]) == "429-01"
    assert burst[3].headers["retry-after"] == "1"
    assert (after_one.status_code, crowded.status_code, later.status_code) == (200, 429, 200)
    assert api.quota()["refused"] == {"429-01": 2}
    assert api.quota_used() == 5


@pytest.mark.parametrize(
    ("used", "statuses"),
    [
        pytest.param(0, [200, 200], id="fresh"),
        pytest.param(9, [200, 429], id="one-left"),
        pytest.param(10, [429, 429], id="already-spent"),
        pytest.param(25, [429, 429], id="overspent-by-others"),
    ],
)
def test_set_quota_used_says_what_was_already_spent(used: int, statuses: list[int]) -> None:
    wall, mono = [BEFORE_MIDNIGHT - 7200], [0.0]
    with (
        quota_api(wall, mono, daily_quota=10) as api,
        httpx.Client(base_url=api.url, headers=AUTH) as c,
    ):
        api.set_quota(used=used)
        got = [c.post(MANY_AGENT, json=agents("a1")).status_code for _ in range(2)]
    assert got == statuses
    assert api.quota_used() == max(used, min(used + 2, 10))


def test_quota_control_endpoint_sets_reads_and_reset_clears_the_count() -> None:
    wall, mono = [BEFORE_MIDNIGHT], [0.0]
    with quota_api(wall, mono) as api, httpx.Client(base_url=api.url, headers=AUTH) as c:
        unlimited = c.get("/_emulator/quota").json()
        set_answer = c.post("/_emulator/quota", json={"daily_quota": 5, "used": 5, "spike_rps": 50})
        refused = c.post(MANY_AGENT, json=agents("a1"))
        off = c.post("/_emulator/quota", json={"daily_quota": None})  # spike_rps stays
        allowed = c.post(MANY_AGENT, json=agents("a1"))
        bad = [
            c.post("/_emulator/quota", json={"daily_quota": -1}),
            c.post("/_emulator/quota", json={"spike_rps": 0}),
            c.post("/_emulator/quota", json={"used": "many"}),
            c.post("/_emulator/quota", json={"limit": 3}),
            c.post("/_emulator/quota", content=b"[1]"),
        ]
        after_bad = api.quota()
        c.post("/_emulator/reset")
        after_reset = api.quota()
    assert unlimited == {
        "daily_quota": None,
        "spike_rps": None,
        "used": 0,
        "day": "2026-12-01",
        "refused": {},
    }
    assert set_answer.status_code == 200
    assert set_answer.json()["daily_quota"] == 5 and set_answer.json()["used"] == 5
    assert (refused.status_code, error_code(refused)) == (429, "429-02")
    assert off.json()["daily_quota"] is None and off.json()["spike_rps"] == 50.0
    assert allowed.status_code == 200
    assert [r.status_code for r in bad] == [400] * 5
    assert after_bad["used"] == 6 and after_bad["spike_rps"] == 50.0  # bad calls changed nothing
    assert after_reset["used"] == 0 and after_reset["refused"] == {}
    assert after_reset["spike_rps"] == 50.0  # reset keeps the limits


def test_quota_counts_only_admitted_authenticated_requests(api: EmulatedApi) -> None:
    api.set_quota(daily_quota=100)
    with httpx.Client(base_url=api.url) as anonymous:
        assert anonymous.post(MANY_AGENT, json=agents("a1")).status_code == 401
    api.set_faults(Faults(sequence=steps(503)))
    with httpx.Client(base_url=api.url, headers=AUTH) as c:
        assert c.post(MANY_AGENT, json=agents("a1")).status_code == 503
        assert c.post(MANY_AGENT, json=agents("a1")).status_code == 200
    assert api.quota_used() == 1
    assert len(api.requests()) == 3  # the request log still has every request


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"daily_quota": -1}, id="negative-quota"),
        pytest.param({"spike_rps": 0}, id="zero-spike"),
        pytest.param({"spike_rps": -5.0}, id="negative-spike"),
    ],
)
def test_bad_quota_limits_are_refused_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"daily_quota|spike_rps"):
        EmulatedApi(**kwargs)


@pytest.mark.parametrize(
    "shown",
    [
        pytest.param("(default: 8080)", id="port"),
        pytest.param(f"(default: {DEFAULT_API_ID})", id="api-id"),
        pytest.param("metadata-consumer emulate-api --port 8080", id="example"),
        pytest.param("exit codes:", id="exit-codes"),
    ],
)
def test_the_command_line_help_shows_defaults_an_example_and_exit_codes(shown: str) -> None:
    assert shown in parser().format_help()


def test_the_command_line_defaults_are_the_documented_ones() -> None:
    args = parser().parse_args([])
    assert (args.host, args.port, args.api_id) == ("127.0.0.1", 8080, DEFAULT_API_ID)
