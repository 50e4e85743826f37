"""The labelling web app's API (``rlhf-lightning label DB``), through Starlette's test client: what it saves,
what it refuses and why, the token, and the headers that keep model text from running as code."""

import json
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rlhf_lightning.commands.label_app import STATIC, create_app, is_loopback
from rlhf_lightning.data.errors import OptionError
from rlhf_lightning.data.labels import LabelError, LabelStore, export_rows

XSS = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1">'
PROMPTS = [
    ("Name a colour.", None, "Name a colour.", ["red", "blue", "green", "pale\nyellow"]),
    ("Say hi.", None, "Say hi.", ["hi", "hello", XSS]),
]


@pytest.fixture
def database(tmp_path: Path) -> str:
    path = tmp_path / "labels.sqlite"
    LabelStore(path, create=True).add_candidates(run="r", round=1, policy="sft", settings={}, prompts=PROMPTS)
    return str(path)


@pytest.fixture
def client(database: str) -> TestClient:
    return TestClient(create_app(database), base_url="http://localhost")


def next_item(client: TestClient, annotator: str = "alice") -> dict:
    response = client.get("/api/next", params={"annotator": annotator})
    assert response.status_code == 200, response.text
    return response.json()


def text_of(item: dict) -> dict[str, str]:
    return {c["key"]: c["text"] for c in item["candidates"]}


def submit(client: TestClient, item: dict, ranking: list[list[str]], annotator: str = "alice", **extra):
    body = {"annotator": annotator, "item": item["item"], "version": item["version"], "ranking": ranking, **extra}
    return client.post("/api/submit", json=body)


def exported(database: str) -> dict[str, dict[str, int]]:
    """``{prompt: {response: rank}}`` of every exported ranking row."""
    rows, _ = export_rows(LabelStore(database))
    return {row["prompt"]: dict(zip(row["responses"], row["ranking"])) for row in rows}


def test_next_submit_progress(client, database):
    item = next_item(client)
    assert item["done"] is False and item["prompt"] == "Name a colour."
    assert sorted(text_of(item).values()) == sorted(PROMPTS[0][3])
    assert next_item(client)["item"] == item["item"]  # a reload shows the same item
    by_text = {t: k for k, t in text_of(item).items()}
    ranking = [[by_text["blue"]], [by_text["red"]], [by_text["green"]], [by_text["pale\nyellow"]]]
    response = submit(client, item, ranking, comment="fine")
    assert response.status_code == 200, response.text
    saved = response.json()["judgement"]
    assert saved["ranking"] == ranking and saved["comment"] == "fine" and not saved["skipped"]
    assert exported(database) == {"Name a colour.": {"blue": 1, "red": 2, "green": 3, "pale\nyellow": 4}}

    progress = client.get("/api/progress", params={"annotator": "alice"}).json()
    assert progress["items"] == 2 and progress["complete"] == 1 and progress["annotators_per_item"] == 1
    assert progress["you"]["done"] == 1 and progress["annotators"]["alice"]["ranked"] == 1
    assert next_item(client)["prompt"] == "Say hi."


def test_ties_and_none_acceptable_saved(client, database):
    item = next_item(client)
    by_text = {t: k for k, t in text_of(item).items()}
    ranking = [[by_text["green"]], [by_text["red"], by_text["blue"]], [by_text["pale\nyellow"]]]
    response = submit(client, item, ranking, none_acceptable=True)
    assert response.status_code == 200, response.text
    assert exported(database) == {"Name a colour.": {"green": 1, "red": 2, "blue": 2, "pale\nyellow": 3}}
    row = export_rows(LabelStore(database))[0][0]
    assert row["none_acceptable"] is True and row["annotator"] == "alice" and row["source"] == "human"


def test_unknown_item_404(client):
    item = next_item(client)
    response = submit(client, {**item, "item": 999}, [["A"], ["B"], ["C"], ["D"]])
    assert response.status_code == 404
    assert "no item 999" in response.json()["error"]


def test_stale_version_409(client, database):
    item = next_item(client)
    response = submit(client, {**item, "version": "0123456789ab"}, [[c["key"]] for c in item["candidates"]])
    assert response.status_code == 409
    body = response.json()
    assert "changed" in body["error"] and "judgement" not in body
    assert LabelStore(database).counts()["judgements"] == 0


@pytest.mark.parametrize(
    "ranking, words",
    [
        ([["A"], ["B"], ["C"]], ["missing", "D"]),
        ([["A"], ["B"], ["C"], ["D"], ["A"]], ["repeated", "A"]),
        ([["A"], ["B"], ["C"], ["D"], ["E"]], ["unknown", "E"]),
        ([["A", "B"], [], ["C", "D"]], ["non-empty groups"]),
    ],
)
def test_not_a_permutation_422(client, database, ranking, words):
    response = submit(client, next_item(client), ranking)
    assert response.status_code == 422
    assert all(w in response.json()["error"] for w in words), response.json()
    assert LabelStore(database).counts()["judgements"] == 0


def test_repeat_submission_409_changes_nothing(client, database):
    item = next_item(client)
    ranking = [[c["key"]] for c in item["candidates"]]
    first = submit(client, item, ranking, comment="first").json()["judgement"]
    before = exported(database)
    again = submit(client, item, ranking[::-1], comment="second")
    assert again.status_code == 409
    body = again.json()
    assert "already ranked" in body["error"] and body["judgement"] == first  # the page moves on with this
    assert exported(database) == before
    assert [r["comment"] for r in export_rows(LabelStore(database))[0]] == ["first"]


def test_skip(client, database):
    item = next_item(client)
    response = client.post("/api/skip", json={"annotator": "alice", "item": item["item"], "comment": "no idea"})
    assert response.status_code == 200, response.text
    assert response.json()["judgement"]["skipped"] is True
    assert next_item(client)["prompt"] == "Say hi."  # the skipped item is not shown again
    assert exported(database) == {}  # a skip is no ranking
    you = client.get("/api/progress", params={"annotator": "alice"}).json()["you"]
    assert you["skipped"] == 1 and you["ranked"] == 0 and you["done"] == 1
    assert client.post("/api/skip", json={"annotator": "alice", "item": item["item"]}).status_code == 409


def test_nothing_left(client):
    for _ in range(2):
        item = next_item(client)
        assert submit(client, item, [[c["key"]] for c in item["candidates"]]).status_code == 200
    assert next_item(client) == {"done": True}


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, ["not valid JSON"]),
        (b"[1, 2]", 400, ["JSON object"]),
        (b'{"annotator": "alice", "version": "v", "ranking": []}', 422, ["'item'", "missing"]),
        (b'{"annotator": "alice", "item": "1", "version": "v", "ranking": []}', 422, ["'item'", "integer"]),
        (b'{"annotator": "alice", "item": true, "version": "v", "ranking": []}', 422, ["'item'"]),
        (b'{"annotator": 5, "item": 1, "version": "v", "ranking": []}', 422, ["'annotator'"]),
        (b'{"annotator": "alice", "item": 1, "version": "v", "ranking": "A>B"}', 422, ["'ranking'"]),
        (b'{"annotator": "alice", "item": 1, "version": "v", "ranking": [["A", 2]]}', 422, ["ranking"]),
        (b'{"annotator": "a", "item": 1, "version": "v", "ranking": [], "none_acceptable": "yes"}', 422, ["none_acc"]),
        (b'{"annotator": "alice", "item": 1, "version": "v", "ranking": [], "comment": 3}', 422, ["'comment'"]),
        (b'{"annotator": " ", "item": 1, "version": "v", "ranking": [["A"]]}', 400, ["annotator"]),
    ],
)
def test_malformed_requests(client, database, body, status, words):
    response = client.post("/api/submit", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert all(w in response.json()["error"] for w in words), response.json()
    assert LabelStore(database).counts()["judgements"] == 0


def test_other_bad_requests(client):
    assert client.get("/api/next").status_code == 422  # no annotator
    assert "annotator" in client.get("/api/next").json()["error"]
    for name in ("x" * 201, "judge:me", "tab\there"):  # too long, a judge's name, not printable
        response = client.get("/api/next", params={"annotator": name})
        assert response.status_code == 400 and "annotator" in response.json()["error"], name
    # not JSON: refused before anything is read (a cross-site form cannot post as application/json)
    response = client.post("/api/submit", content=b'{"item": 1}', headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert client.get("/api/submit").status_code == 405


def test_token(database):
    client = TestClient(create_app(database, token="s3cret"), base_url="http://labels.example.org")
    for path in ("/", "/static/label.js", "/api/next?annotator=alice"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert "token" in response.json()["error"]
    assert client.get("/api/next?annotator=alice", headers={"X-Token": "wrong"}).status_code == 401
    assert client.get("/api/next?annotator=alice", headers={"X-Token": "s3cret"}).status_code == 200
    assert client.get("/api/next?annotator=alice&token=s3cret").status_code == 200
    page = client.get("/?token=s3cret")  # the page's address: it sets a cookie for the script and style sheet
    assert page.status_code == 200 and "httponly" in page.headers["set-cookie"].lower()
    assert client.get("/static/label.js").status_code == 200  # the cookie now carries the token
    assert client.post("/api/skip", json={"annotator": "alice", "item": 1}).status_code == 200


def test_loopback_only_without_token(database):
    assert TestClient(create_app(database), base_url="http://127.0.0.1:8765").get("/").status_code == 200
    assert TestClient(create_app(database), base_url="http://[::1]:8765").get("/").status_code == 200
    refused = TestClient(create_app(database), base_url="http://evil.example.com").get("/api/next?annotator=a")
    assert refused.status_code == 403 and "localhost" in refused.json()["error"]
    assert is_loopback("localhost") and is_loopback("127.0.0.1") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")


def test_security_headers(client):
    for path in ("/", "/static/label.js", "/static/label.css", "/api/next?annotator=alice", "/api/progress?x=1"):
        response = client.get(path)
        headers = response.headers
        assert headers["content-security-policy"] == "default-src 'self'; script-src 'self'; style-src 'self'"
        assert headers["x-content-type-options"] == "nosniff"
        if path.startswith("/api"):
            assert headers["cache-control"] == "no-store"
    assert client.get("/static/label.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/").headers["content-type"].startswith("text/html")


def test_model_text_is_plain_json_text(client):
    submit(client, first := next_item(client), [[c["key"]] for c in first["candidates"]])
    response = client.get("/api/next", params={"annotator": "alice"})
    assert response.headers["content-type"] == "application/json"
    assert XSS in text_of(response.json()).values()  # returned as a JSON string, unchanged
    assert json.loads(response.text) == response.json()


def test_page_inserts_text_safely():
    script = (STATIC / "label.js").read_text()
    assert "innerHTML" not in script and "outerHTML" not in script and "insertAdjacentHTML" not in script
    assert "document.write" not in script and "eval(" not in script
    page = (STATIC / "index.html").read_text()
    assert not re.search(r"<script>|<style>|\sstyle=|\son[a-z]+=", page)  # nothing inline: the CSP forbids it
    assert 'src="static/label.js"' in page and 'href="static/label.css"' in page
    assert "pre-wrap" in (STATIC / "label.css").read_text()


def test_serve(database, monkeypatch, capsys):
    import contextlib

    import uvicorn

    from rlhf_lightning.commands import label_app
    from rlhf_lightning.commands.label_app import serve

    # the ports are not really opened: uvicorn.run is replaced, and so is serve's check that the port is free
    monkeypatch.setattr(label_app.socket, "create_server", lambda *a, **k: contextlib.nullcontext())
    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: runs.append((app, kwargs)))
    serve(database)  # loopback: no token
    printed = capsys.readouterr().out
    assert "open http://127.0.0.1:8765/\n" in printed and "Ctrl+C" in printed and "0 / 2 items complete" in printed
    assert runs[-1][1]["host"] == "127.0.0.1" and runs[-1][1]["port"] == 8765

    serve(database, host="0.0.0.0", port=9000, annotators_per_item=2)  # other machines: a token is generated
    printed = capsys.readouterr().out
    token = re.search(r":9000/\?token=(\S+)", printed).group(1)
    assert len(token) >= 16 and "each asked of 2 annotators" in printed
    assert LabelStore(database).annotators_per_item == 2
    client = TestClient(runs[-1][0], base_url="http://labels.example.org:9000")
    assert client.get("/api/progress?annotator=a").status_code == 401
    assert client.get(f"/api/progress?annotator=a&token={token}").json()["annotators_per_item"] == 2

    serve(database, host="0.0.0.0", token="mine-and-long")
    assert "?token=mine-and-long" in capsys.readouterr().out
    with pytest.raises(OptionError, match="at least 8"):
        serve(database, host="0.0.0.0", token="")
    with pytest.raises(LabelError, match="annotators_per_item"):
        serve(database, annotators_per_item=0)


def test_serve_names_a_port_it_cannot_listen_on_before_printing_an_address(database, capsys):
    import socket

    from rlhf_lightning.commands.label_app import serve
    from rlhf_lightning.data.errors import OptionError

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OptionError, match=f"--port {port}: cannot listen there"):
            serve(database, port=port)
    with pytest.raises(OptionError, match="1..65535"):
        serve(database, port=99999)
    assert "open http" not in capsys.readouterr().out


def test_favicon_is_not_an_error(client):
    assert client.get("/favicon.ico").status_code == 204


def test_a_skip_is_undone(client, database):
    item = next_item(client)
    assert client.post("/api/skip", json={"annotator": "alice", "item": item["item"], "comment": "later"}).is_success
    assert next_item(client)["prompt"] == "Say hi."
    response = client.post("/api/unskip", json={"annotator": "alice", "item": item["item"]})
    assert response.status_code == 200, response.text
    undone = response.json()["judgement"]
    assert undone["skipped"] is True and undone["comment"] == "later" and undone["item"] == item["item"]
    back = next_item(client)  # given back at once, under the same keys and in the same order
    assert back["item"] == item["item"] and back["candidates"] == item["candidates"]
    you = client.get("/api/progress", params={"annotator": "alice"}).json()["you"]
    assert you["skipped"] == 0 and you["done"] == 0

    again = client.post("/api/unskip", json={"annotator": "alice", "item": item["item"]})
    assert again.status_code == 400 and "no skip to undo" in again.json()["error"]
    bob = client.post("/api/skip", json={"annotator": "bob", "item": item["item"]})
    assert bob.status_code == 200
    assert client.post("/api/unskip", json={"annotator": "carol", "item": item["item"]}).status_code == 400
    assert submit(client, back, [[c["key"]] for c in back["candidates"]]).status_code == 200
    ranked = client.post("/api/unskip", json={"annotator": "alice", "item": item["item"]})
    assert ranked.status_code == 409 and "only a skip can be undone" in ranked.json()["error"]
    assert ranked.json()["judgement"]["skipped"] is False
    assert len(export_rows(LabelStore(database))[0]) == 1  # the ranking stays
    unknown = client.post("/api/unskip", json={"annotator": "alice", "item": 999})
    assert unknown.status_code == 404 and "no item 999" in unknown.json()["error"]
    missing = client.post("/api/unskip", json={"annotator": "alice"})
    assert missing.status_code == 422 and "'item'" in missing.json()["error"]
